"""The GitHub Action's steps (action.yml at the repository root): resolve, run, summary.

Run as `python -m deploy_tool.action STEP` with PYTHONPATH set to the action's own files, by
the runner's Python: `resolve` and `summary` import only the standard library and
`server_agent.common` (no dependency), so the summary is written even when installing
obsdeploy failed. Every input arrives in an environment variable (`INPUT_*`), never pasted
into a script, and is shown only escaped: an input cannot start a workflow command.

- `resolve`: what to do, from the inputs and the event: a pushed prerelease tag deploys
  nothing (`skip`); inputs obsdeploy would refuse are refused here already (exit 2), before
  anything is installed.
- `run`: writes the SSH key and known_hosts (mode 0600, in a 0700 directory, removed after),
  runs `obsdeploy deploy|rollback --json`, keeps its report and exit code for `summary`.
- `summary`: the job summary (host, from, to, result, seconds, fleet rollback) and the fleet's
  outcome, its heading taken from the inputs themselves, so it is right even when the job
  failed before `resolve`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from server_agent.common.errors import ExitCode, UsageError
from server_agent.common.versions import validate_version

# The values `on-failure` takes (deploy_tool.fleet.ON_FAILURE, kept here so that `resolve`
# needs no dependency; a unit test keeps them equal).
ON_FAILURE = ("rollback-fleet", "stop")
REPORT = "obsdeploy-report.json"
EXIT_CODE = "obsdeploy-exit-code"
SSH_DIR = "obsdeploy-ssh"
VENV = "obsdeploy-venv"  # under RUNNER_TEMP: action.yml's install step makes it
PREVIOUS = "(previous good release)"


def shown(value: str) -> str:
    """An input as it may appear in a log line or a summary: one line, escaped."""
    return json.dumps(value)[1:-1].replace("|", "\\|").replace("`", "\\`")


@dataclass(frozen=True)
class Request:
    """What the inputs and the event ask for, before any validation."""

    action: str
    version: str
    pushed_tag: bool

    @classmethod
    def of(cls, env: Mapping[str, str]) -> Request:
        pushed_tag = env.get("GITHUB_EVENT_NAME") == "push" and env.get("GITHUB_REF_TYPE") == "tag"
        version = env.get("INPUT_VERSION", "").strip()
        if not version and pushed_tag:
            version = env.get("GITHUB_REF_NAME", "")
        return cls(env.get("INPUT_ACTION", "").strip() or "deploy", version, pushed_tag)

    @property
    def skipped(self) -> bool:
        """A pushed prerelease tag (v1.2.3-rc.1) never deploys: a dispatch deploys one."""
        return self.pushed_tag and "-" in self.version

    def heading(self) -> str:
        return f"obsdeploy {shown(self.action)} {shown(self.version) or PREVIOUS}"


def resolve(env: Mapping[str, str]) -> dict[str, str]:
    """The step outputs (`action`, `version`); UsageError (exit 2) for what cannot run."""
    req = Request.of(env)
    if req.action not in ("deploy", "rollback"):
        raise UsageError(f"action must be deploy or rollback, not {shown(req.action)!r}")
    canary = env.get("INPUT_CANARY_HOSTS", "").strip()
    if canary and not (canary.isascii() and canary.isdigit()):
        raise UsageError(f"input `canary-hosts` must be a number of hosts (0 or more), not "
                         f"{shown(canary)!r}")
    on_failure = env.get("INPUT_ON_FAILURE", "").strip()
    if on_failure and on_failure not in ON_FAILURE:
        raise UsageError(f"input `on-failure` must be {' or '.join(ON_FAILURE)}, not "
                         f"{shown(on_failure)!r}")

    if req.skipped:
        return {"action": "skip", "version": req.version}
    if req.action == "deploy" and not req.version:
        raise UsageError("deploy needs a version (input `version`, or a pushed tag)")
    if req.version:
        validate_version(req.version)
    return {"action": req.action, "version": req.version}


def _split(text: str) -> list[str]:
    """A list input: items separated by commas, spaces or newlines."""
    return [item for item in re.split(r"[,\s]+", text) if item]


def obsdeploy_argv(env: Mapping[str, str], ssh_dir: Path) -> list[str]:
    hosts = _split(env.get("INPUT_HOSTS", ""))
    if not hosts:
        raise UsageError("input `hosts` is empty", hint="pass the VMs, e.g. secrets.DEPLOY_HOSTS")
    argv = [str(Path(env["RUNNER_TEMP"]) / VENV / "bin" / "obsdeploy"), env["RESOLVED_ACTION"]]
    if env.get("RESOLVED_VERSION"):
        argv.append(env["RESOLVED_VERSION"])
    for host in hosts:
        argv += ["--host", host]
    for name in _split(env.get("INPUT_SECRETS", "")):
        argv += ["--secret", name]
    for option, var in (("--user", "INPUT_USER"), ("--batch", "INPUT_BATCH"),
                        ("--canary-hosts", "INPUT_CANARY_HOSTS"),
                        ("--on-failure", "INPUT_ON_FAILURE"),
                        ("--agent-root", "INPUT_AGENT_ROOT"),
                        ("--agent-command", "INPUT_AGENT_COMMAND")):
        # A rollback run undoes nothing: on-failure (often a repository variable, shared by
        # both actions) is for deploy only.
        if option == "--on-failure" and env["RESOLVED_ACTION"] != "deploy":
            continue
        if env.get(var, "").strip():
            argv += [option, env[var].strip()]
    return [*argv, "--identity", str(ssh_dir / "id_deploy"),
            "--known-hosts", str(ssh_dir / "known_hosts"), "--json"]


def _write_private(path: Path, text: str) -> None:
    # A key pasted from Windows may carry CRs, which OpenSSH refuses.
    data = text.replace("\r", "").rstrip("\n") + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)


def run(env: Mapping[str, str]) -> int:
    temp = Path(env["RUNNER_TEMP"])
    for name in ("INPUT_SSH_KEY", "INPUT_KNOWN_HOSTS"):
        if not env.get(name, "").strip():
            input_name = name[len("INPUT_"):].lower().replace("_", "-")
            raise UsageError(f"input `{input_name}` is empty",
                             hint="set the secret it comes from (Settings > Environments)")
    ssh_dir = temp / SSH_DIR
    shutil.rmtree(ssh_dir, ignore_errors=True)
    ssh_dir.mkdir(mode=0o700)
    try:
        _write_private(ssh_dir / "id_deploy", env["INPUT_SSH_KEY"])
        _write_private(ssh_dir / "known_hosts", env["INPUT_KNOWN_HOSTS"])
        argv = obsdeploy_argv(env, ssh_dir)
        # stdout is the JSON report; the agents' output, prefixed by host, streams on stderr.
        with (temp / REPORT).open("w") as report:
            code = subprocess.run(argv, stdout=report, check=False).returncode
    finally:
        shutil.rmtree(ssh_dir, ignore_errors=True)
    print(f"obsdeploy {env['RESOLVED_ACTION']} exited {code}")
    return code


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ") or "-"


FLEET_MEANINGS = {
    "success": "every host succeeded",
    "rolled_back": "a host failed; every host this run switched is back on the release it ran "
                   "before",
    "failed": "a host could not be brought back: the fleet runs two releases",
    "stopped": "a host failed; the hosts already switched were left on the new release "
               "(on-failure stop)",
}


def _fleet_cell(back: object) -> str | None:
    if not isinstance(back, dict):
        return None
    code = back.get("exit_code")
    return f"-> {back.get('to') or '?'} {back.get('result')}" + (
        f" (exit {code})" if code not in (None, 0) else "")


def summary(env: Mapping[str, str]) -> str:
    req = Request.of(env)
    if req.skipped:
        return (f"## {shown(req.version)}: prerelease, not deployed\n\n"
                "Prerelease tags are not deployed on push; run the workflow by hand (action "
                "deploy) to deploy one.\n")
    temp = Path(env["RUNNER_TEMP"])
    code_file = temp / EXIT_CODE
    code = code_file.read_text().strip() if code_file.exists() else ""
    try:
        meaning = ExitCode(int(code)).meaning
    except ValueError:
        meaning = "see the log"
    lines = [f"## {req.heading()}", "",
             f"Exit code **{code}** ({meaning})" if code else "Exit code **not run**", ""]
    try:
        report = json.loads((temp / REPORT).read_text())
    except (OSError, ValueError):
        report = None
    hosts = report.get("hosts") if isinstance(report, dict) else None
    if not hosts:
        lines.append("No per-host report (obsdeploy did not get that far); see the log.")
        return "\n".join(lines) + "\n"
    # The fleet rollback column only when a host had one, as in obsdeploy's own table.
    fleet = any(isinstance(h.get("fleet_rollback"), dict) for h in hosts)
    columns = ["host", "from", "to", "result", "seconds", *(["fleet rollback"] if fleet else [])]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for h in hosts:
        seconds = h.get("seconds")
        result = h.get("result")
        if h.get("exit_code") not in (None, 0):
            result = f"{result} (exit {h['exit_code']})"
        cells = [h.get("host"), h.get("from_tag"), h.get("to_tag"), result,
                 f"{seconds:.1f}" if isinstance(seconds, int | float) else seconds]
        if fleet:
            cells.append(_fleet_cell(h.get("fleet_rollback")))
        lines.append("| " + " | ".join(_cell(v) for v in cells) + " |")
    outcome = report.get("fleet_result")
    if isinstance(outcome, str):
        note = report.get("fleet_message")
        lines += ["", f"Fleet: **{_cell(outcome)}** ({FLEET_MEANINGS.get(outcome, 'see the log')})"
                  + (f": {_cell(note)}" if note else "")]
    # Why a host failed (e.g. which watch check rolled the release back): the agent's
    # message, first line, below the table.
    why = [f"- **{_cell(h.get('host'))}**: {_cell(str(h['message']).splitlines()[0][:500])}"
           for h in hosts if h.get("exit_code") not in (None, 0) and h.get("message")]
    if why:
        lines += ["", "Why:", *why]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    env = os.environ
    step = argv[0] if argv else ""
    try:
        if step == "resolve":
            outputs = resolve(env)
            with open(env["GITHUB_OUTPUT"], "a", encoding="utf-8") as out:
                out.writelines(f"{k}={v}\n" for k, v in outputs.items())  # validated: one line
            if outputs["action"] == "skip":
                print(f"::notice::{shown(outputs['version'])} is a prerelease tag: not deployed "
                      "on push; run the workflow by hand (action deploy) to deploy it")
            else:
                print(f"{outputs['action']} {outputs['version'] or PREVIOUS}")
            return 0
        if step == "run":
            code = run(env)
        elif step == "summary":
            text = summary(env)
            with open(env["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as out:
                out.write(text)
            print(text)
            return 0
        else:
            raise UsageError(f"unknown step {step!r}", hint="resolve, run or summary")
    except UsageError as exc:
        print(f"::error::{shown(exc.message)}" + (f" ({shown(exc.hint)})" if exc.hint else ""))
        code = int(ExitCode.USAGE)
    if step == "run":
        Path(env["RUNNER_TEMP"], EXIT_CODE).write_text(f"{code}\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
