""".github/workflows (SPEC §11): GitHub's schema, the deploy workflow's guarantees, and its
`run:` steps executed as a runner would, against a real sshd host and the real agent."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
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
    assert [s.get("uses", "").split("@")[0] for s in job["steps"] if "uses" in s] == [
        "actions/checkout", "actions/setup-python"]  # never builds, never logs in anywhere
    checkout = job["steps"][0]
    assert checkout["with"]["persist-credentials"] is False


@pytest.mark.parametrize("path", [DEPLOY, CI], ids=lambda p: p.name)
def test_third_party_actions_are_pinned_by_commit_sha(path: Path) -> None:
    uses = [s["uses"] for s in all_steps(load(path)) if "uses" in s]
    assert uses
    for ref in uses:
        assert PINNED.match(ref), f"{ref} is not pinned by a full commit SHA"


@pytest.mark.parametrize("path", [DEPLOY, CI], ids=lambda p: p.name)
def test_no_expression_is_interpolated_into_a_script(path: Path) -> None:
    for step in all_steps(load(path)):
        assert "${{" not in step.get("run", ""), f"step {step.get('name')!r}: use env: instead"


def test_secrets_reach_the_steps_only_through_env() -> None:
    text = DEPLOY.read_text()
    wf = load(DEPLOY)
    for name in SECRET_NAMES:
        assert f"secrets.{name}" in text
    mapped = {v for s in steps(wf, "deploy") for v in (s.get("env") or {}).values()}
    for name in SECRET_NAMES:
        assert "${{ secrets." + name + " }}" in mapped


def test_key_files_are_written_private() -> None:
    (key_step,) = [s for s in steps(load(DEPLOY), "deploy") if "DEPLOY_SSH_KEY" in s.get("env", {})]
    script = key_step["run"]
    assert "umask 077" in script and "chmod 600" in script
    assert script.index("umask 077") < script.index("> \"$ssh_dir/id_deploy\"")


def test_ci_runs_the_suite_on_push_and_pull_request() -> None:
    wf = load(CI)
    assert {"push", "pull_request"} <= set(wf["on"])
    assert set(wf["permissions"].values()) <= {"read", "none"}
    runs = [s["run"] for s in all_steps(wf) if "run" in s]
    assert any(".ci/run" in r for r in runs)


# --- executing the deploy job's run: steps as a runner would ----------------------------------

EXPR = re.compile(r"^\$\{\{\s*(secrets|inputs|vars|github)\.([A-Za-z_]+)\s*\}\}$")


@dataclass
class StepResult:
    name: str
    ran: bool
    code: int | None = None
    output: str = ""
    skipped_reason: str = ""


@dataclass
class JobRun:
    steps: list[StepResult] = field(default_factory=list)
    summary: str = ""

    @property
    def ok(self) -> bool:
        return all(s.code in (None, 0) for s in self.steps)

    def step(self, prefix: str) -> StepResult:
        (hit,) = [s for s in self.steps if s.name.startswith(prefix)]
        return hit

    def log(self) -> str:
        return "\n".join(f"--- {s.name}: ran={s.ran} code={s.code} {s.skipped_reason}\n{s.output}"
                         for s in self.steps)


def _expression(value: Any, contexts: dict[str, dict[str, str]]) -> str:
    text = str(value)
    if "${{" not in text:
        return text
    m = EXPR.match(text.strip())
    assert m, f"the emulated runner only maps plain context lookups into env, not {text!r}"
    return contexts[m.group(1)].get(m.group(2), "")


def _read_env_file(path: Path) -> dict[str, str]:
    """$GITHUB_ENV: NAME=value lines and NAME<<DELIMITER blocks."""
    out: dict[str, str] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            j = lines.index(delim, i + 1)
            out[name] = "\n".join(lines[i + 1:j])
            i = j + 1
            continue
        if line.strip():
            name, _, value = line.partition("=")
            out[name] = value
        i += 1
    return out


RUNNER_PYTHON: list[Path] = []  # the emulated setup-python's interpreter, made once a session


def runner_python(base: Path) -> Path:
    """actions/setup-python, emulated: a Python 3.11 with nothing installed (a fresh venv of
    this machine's 3.11, made once per session; the install step then installs into it for
    real, and re-runs find everything already satisfied)."""
    if not RUNNER_PYTHON:
        import atexit
        import shutil

        venv = base / "setup-python"
        subprocess.run(["python3", "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        atexit.register(shutil.rmtree, base, ignore_errors=True)
        RUNNER_PYTHON.append(venv / "bin")
    return RUNNER_PYTHON[0]


def _checkout(step: dict[str, Any], workspace: Path, wf: dict[str, Any]) -> str:
    """actions/checkout, emulated: the pinned obsdeploy is this checkout (the one under test),
    copied into the workspace path the step names. The pin must name a commit of it."""
    with_ = step.get("with") or {}
    env = wf.get("env") or {}
    assert with_.get("repository") == "${{ env.DEPLOY_TOOL_REPOSITORY }}", with_
    assert with_.get("ref") == "${{ env.DEPLOY_TOOL_REF }}", with_
    ref = str(env["DEPLOY_TOOL_REF"])
    assert re.fullmatch(r"[0-9a-f]{40}", ref), f"DEPLOY_TOOL_REF must be a full commit SHA, not {ref!r}"
    known = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{ref}^{{commit}}"],
                           capture_output=True, timeout=60)
    assert known.returncode == 0, f"DEPLOY_TOOL_REF {ref} is not a commit of obsdeploy"
    dest = workspace / str(with_["path"])
    if not dest.exists():
        import shutil

        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", ".*_cache", "*.egg-info", "build", "dist"))
    return f"checked out {with_['path']} (this checkout, standing in for {ref[:12]})"


def run_deploy_job(
    tmp: Path, *, event: str, ref_name: str = "", inputs: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None, variables: dict[str, str] | None = None,
    after_step: Callable[[str, dict[str, str]], None] | None = None,
) -> JobRun:
    """Run the deploy job's `run:` steps in order with what a GitHub runner provides.

    `uses:` steps are emulated: actions/checkout of the pinned obsdeploy copies this checkout
    into the workspace, actions/setup-python puts a fresh Python 3.11 first on PATH (once a
    session). Every `run:` step runs for real, the install step included. `if:` is honoured
    for success()/always().
    """
    wf = load(DEPLOY)
    job = wf["jobs"]["deploy"]
    shell = (job.get("defaults") or {}).get("run", {}).get("shell", "bash")
    assert shell == "bash"
    temp = tmp / "runner-temp"
    temp.mkdir(parents=True, exist_ok=True)
    workspace = tmp / "workspace"  # the app's repository, which holds the workflow
    workspace.mkdir(exist_ok=True)
    python_bin = runner_python(Path(os.environ.get("TMPDIR", "/tmp")) / f"obs-runner-{os.getpid()}")
    summary = tmp / "step-summary.md"
    summary.write_text("")
    is_tag = event == "push"
    contexts = {
        "secrets": secrets or {},
        "inputs": inputs or {},
        "vars": variables or {},
        "github": {"event_name": event, "ref_name": ref_name},
    }
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("OBS_AGENT_", "OBSDEPLOY_", "GITHUB_", "RUNNER_"))}
    base.update({
        "CI": "true", "GITHUB_ACTIONS": "true",
        "GITHUB_EVENT_NAME": event,
        "GITHUB_REF_NAME": ref_name,
        "GITHUB_REF": (f"refs/tags/{ref_name}" if is_tag else f"refs/heads/{ref_name or 'main'}"),
        "GITHUB_REF_TYPE": "tag" if is_tag else "branch",
        "GITHUB_REPOSITORY": "tawbury/observer",
        "GITHUB_WORKFLOW": str(wf.get("name", "deploy")),
        "GITHUB_WORKSPACE": str(workspace),
        "GITHUB_STEP_SUMMARY": str(summary),
        "RUNNER_TEMP": str(temp),
        "RUNNER_OS": "Linux",
        # setup-python: its Python (and what the install step puts beside it) comes first.
        "PATH": f"{python_bin}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    for scope in (wf.get("env") or {}, job.get("env") or {}):
        base.update({k: _expression(v, contexts) for k, v in scope.items()})
    exported: dict[str, str] = {}
    run = JobRun()
    failed = False
    for i, step in enumerate(job["steps"]):
        name = str(step.get("name") or f"step {i}")
        cond = str(step.get("if", ""))
        wants = "always()" in cond or ("failure()" in cond and failed) or (
            not cond and not failed)
        if cond and not wants and "always()" not in cond and "failure()" not in cond:
            raise AssertionError(f"the emulated runner does not understand if: {cond!r}")
        if not wants:
            run.steps.append(StepResult(name, False, skipped_reason=f"if: {cond or 'success()'}"))
            continue
        if "uses" in step:
            action = str(step["uses"]).split("@")[0]
            if action == "actions/checkout":
                run.steps.append(StepResult(name, True, 0, _checkout(step, workspace, wf)))
            elif action == "actions/setup-python":
                assert str((step.get("with") or {}).get("python-version")) == "3.11", step
                run.steps.append(StepResult(name, True, 0, f"python at {python_bin}"))
            else:
                raise AssertionError(f"the emulated runner does not know {action}")
            continue
        script = str(step["run"])
        env_file, path_file = temp / f"env-{i}", temp / f"path-{i}"
        env = {**base, **exported,
               **{k: _expression(v, contexts) for k, v in (step.get("env") or {}).items()},
               "GITHUB_ENV": str(env_file), "GITHUB_PATH": str(path_file),
               "GITHUB_OUTPUT": str(temp / f"output-{i}")}
        script_file = temp / f"step-{i}.sh"
        script_file.write_text(script)
        # How the runner starts `shell: bash`.
        res = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script_file)],
                             env=env, cwd=workspace, capture_output=True, text=True, timeout=900)
        run.steps.append(StepResult(name, True, res.returncode, res.stdout + res.stderr))
        exported.update(_read_env_file(env_file))
        if path_file.exists():
            extra = [p for p in path_file.read_text().splitlines() if p]
            base["PATH"] = os.pathsep.join([*reversed(extra), base["PATH"]])
        if after_step:
            after_step(name, {**exported, "RUNNER_TEMP": str(temp)})
        failed = failed or res.returncode != 0
    run.summary = summary.read_text()
    return run


def summary_rows(summary: str) -> list[list[str]]:
    rows = [line for line in summary.splitlines() if line.startswith("|")]
    assert rows and rows[0].replace(" ", "") == "|host|from|to|result|seconds|", summary
    # Cells are split on unescaped pipes only ("\\|" is a pipe inside a cell).
    return [[c.strip() for c in re.split(r"(?<!\\)\|", r.strip()[1:-1])] for r in rows[2:]]


def test_an_invalid_dispatched_version_stops_before_any_host_is_touched(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    job = run_deploy_job(
        tmp_path, event="workflow_dispatch", ref_name="main",
        inputs={"action": "deploy",
                "version": f'v1.0.0"; touch {marker}; echo "$(touch {marker})\n::warning::injected'},
        secrets={"DEPLOY_HOSTS": "203.0.113.1", "DEPLOY_SSH_KEY": "k", "DEPLOY_KNOWN_HOSTS": "h"},
    )
    resolve = job.step("Resolve")
    assert resolve.code == 2, job.log()
    assert "expected vMAJOR.MINOR.PATCH" in resolve.output
    assert not marker.exists()  # the input was data, never code
    # ... and it cannot start a workflow command line of its own.
    assert not any(line.startswith("::warning::") for line in resolve.output.splitlines())
    assert not job.step("Run obsdeploy").ran
    assert job.step("Summary").code == 0 and "Exit code **not run**" in job.summary
    assert job.step("Remove the SSH key").code == 0


def test_missing_secrets_fail_with_their_names(tmp_path: Path) -> None:
    job = run_deploy_job(tmp_path, event="push", ref_name="v1.0.0",
                         secrets={"DEPLOY_HOSTS": "203.0.113.1"})
    key = job.step("Write the SSH key")
    assert key.code == 1 and "DEPLOY_SSH_KEY is not set" in key.output, job.log()
    assert not job.step("Run obsdeploy").ran
    assert "not run" in job.summary


def test_a_tag_that_is_not_a_version_is_refused(tmp_path: Path) -> None:
    job = run_deploy_job(tmp_path, event="push", ref_name="v1.2.3.4",
                         secrets=dict.fromkeys(SECRET_NAMES, "x"))
    assert job.step("Resolve").code == 2, job.log()
    assert not job.step("Run obsdeploy").ran


# --- against a real SSH host and the real agent -----------------------------------------------

@pytest.fixture
def ssh_host(tmp_path: Path):  # type: ignore[no-untyped-def]
    from tests.conftest import missing

    try:
        from tests.parts_ssh import Sshd  # written alongside deploy_tool
    except ImportError:
        missing("tests/parts_ssh.py (the sshd helper)")
    if not (REPO / "deploy_tool" / "cli.py").exists():
        missing("obsdeploy's deploy command (deploy_tool/cli.py)")
    sshd = _start_sshd(Sshd, tmp_path / "sshd")
    yield sshd
    sshd.stop()


def _start_sshd(cls, workdir: Path):  # type: ignore[no-untyped-def]
    sshd = cls(workdir)
    started = sshd.start()
    return started if started is not None else sshd


def _ssh_secrets(sshd) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        "DEPLOY_HOSTS": f"127.0.0.1:{sshd.port}",
        "DEPLOY_SSH_USER": sshd.user,
        "DEPLOY_SSH_KEY": Path(sshd.client_key).read_text(),
        "DEPLOY_KNOWN_HOSTS": sshd.known_hosts_line,
    }


def _agent_variables(agent_root: AgentRootDir) -> dict[str, str]:
    """The repository variables that point the job at the test's agent and agent root."""
    return {"OBSDEPLOY_AGENT_COMMAND": str(VENV_BIN / "obs-agent"),
            "OBSDEPLOY_AGENT_ROOT": str(agent_root.path)}


@pytest.mark.integration
def test_tag_push_deploys_and_dispatch_rolls_back_over_ssh(
    tmp_path: Path, ssh_host, agent_root  # type: ignore[no-untyped-def]
) -> None:
    secrets = _ssh_secrets(ssh_host)
    variables = _agent_variables(agent_root)
    modes: dict[str, int] = {}

    def watch_key_files(step: str, env: dict[str, str]) -> None:
        if step.startswith("Write the SSH key"):
            d = Path(env["DEPLOY_SSH_DIR"])
            for f in ("id_deploy", "known_hosts"):
                modes[f] = stat.S_IMODE((d / f).stat().st_mode)
            modes["dir"] = stat.S_IMODE(d.stat().st_mode)

    first = run_deploy_job(tmp_path / "run1", event="push", ref_name="v1.0.0",
                           secrets=secrets, variables=variables, after_step=watch_key_files)
    assert first.ok, first.log()
    # The install step ran, into the runner's Python: obsdeploy from the pinned checkout, not
    # this repository's editable install.
    install = first.step("Install obsdeploy")
    assert install.ran and install.code == 0, install.output
    where = subprocess.run([str(RUNNER_PYTHON[0] / "python"), "-c",
                            "import deploy_tool; print(deploy_tool.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "site-packages" in where.stdout and not Path(where.stdout.strip()).is_relative_to(REPO), where
    assert modes == {"id_deploy": 0o600, "known_hosts": 0o600, "dir": 0o700}
    assert not (tmp_path / "run1" / "runner-temp" / "obsdeploy-ssh").exists()  # removed
    assert agent_root.last_good() == "v1.0.0"
    (row,) = summary_rows(first.summary)
    # The host as DEPLOY_HOSTS named it, with DEPLOY_SSH_USER: the row says which VM it was.
    assert row[0] == f"{ssh_host.user}@127.0.0.1:{ssh_host.port}", row
    assert row[1] == "-" and row[2] == "v1.0.0" and row[3] == OK
    assert float(row[4]) > 0
    assert "Exit code **0**" in first.summary
    for secret in ("DEPLOY_SSH_KEY",):
        assert secrets[secret].strip().splitlines()[1] not in first.summary

    second = run_deploy_job(tmp_path / "run2", event="push", ref_name="v1.1.0",
                            secrets=secrets, variables=variables)
    assert second.ok, second.log()
    assert agent_root.last_good() == "v1.1.0"
    (row,) = summary_rows(second.summary)
    assert row[1:3] == ["v1.0.0", "v1.1.0"]

    back = run_deploy_job(tmp_path / "run3", event="workflow_dispatch", ref_name="main",
                          inputs={"action": "rollback", "version": ""},
                          secrets=secrets, variables=variables)
    assert back.ok, back.log()
    assert agent_root.last_good() == "v1.0.0"
    (row,) = summary_rows(back.summary)
    assert row[1:3] == ["v1.1.0", "v1.0.0"] and row[3] == OK
    assert "obsdeploy rollback" in back.summary


@pytest.mark.integration
def test_a_failed_release_fails_the_job_and_still_writes_the_summary(
    tmp_path: Path, ssh_host, agent_root  # type: ignore[no-untyped-def]
) -> None:
    secrets = _ssh_secrets(ssh_host)
    variables = _agent_variables(agent_root)
    good = run_deploy_job(tmp_path / "good", event="push", ref_name="v1.0.0",
                          secrets=secrets, variables=variables)
    assert good.ok, good.log()
    # A prerelease tag deploys only on dispatch (test_a_pushed_prerelease_tag_is_not_deployed).
    bad = run_deploy_job(tmp_path / "bad", event="workflow_dispatch", ref_name="main",
                         inputs={"action": "deploy", "version": "v2.0.0-error"},
                         secrets=secrets, variables=variables)
    assert bad.step("Run obsdeploy").code == 20, bad.log()
    assert not bad.ok
    assert bad.step("Summary").code == 0 and bad.step("Remove the SSH key").code == 0
    assert "Exit code **20**" in bad.summary
    (row,) = summary_rows(bad.summary)
    # "to" is where the host ended up: the release it was rolled back to (obsdeploy takes it
    # from the agent's answer, current_tag); the attempted version is in the heading.
    assert row[1] == "v1.0.0" and row[2] == "v1.0.0", row
    assert row[3] == "rolled_back (exit 20)", row
    assert "obsdeploy deploy v2.0.0-error" in bad.summary
    assert agent_root.last_good() == "v1.0.0"


def test_the_install_step_refuses_a_dependency_whose_hash_does_not_match(tmp_path: Path) -> None:
    """requirements/deploy.txt is enforced (pip --require-hashes): a pinned file that does not
    match fails the install, and the job stops before any host is touched."""
    import shutil

    pinned = tmp_path / "workspace" / "obsdeploy"
    shutil.copytree(REPO, pinned, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", ".*_cache", "*.egg-info", "build", "dist"))
    lock = pinned / "requirements" / "deploy.txt"
    text = lock.read_text()
    m = re.search(r"^tenacity==(\S+) \\", text, re.M)
    assert m, "tenacity is pinned in requirements/deploy.txt"
    # Another version of tenacity under the pinned version's hashes: not installed yet, so pip
    # downloads it and must refuse it.
    lock.write_text(text.replace(f"tenacity=={m.group(1)} ", "tenacity==8.2.3 ", 1))
    job = run_deploy_job(tmp_path, event="push", ref_name="v1.0.0",
                         secrets={"DEPLOY_HOSTS": "127.0.0.1:1"})
    install = job.step("Install obsdeploy")
    assert install.code not in (None, 0), install.output
    assert "do not match the hashes" in install.output.lower(), install.output
    assert not job.step("Run obsdeploy").ran


@pytest.mark.integration
def test_a_pushed_prerelease_tag_is_not_deployed_a_dispatched_one_is(
    tmp_path: Path, ssh_host, agent_root  # type: ignore[no-untyped-def]
) -> None:
    """Prerelease tags never reach production on push (the job runs in the `prerelease`
    environment and deploys nothing, saying so); a manual dispatch deploys one."""
    env_expr = load(DEPLOY)["jobs"]["deploy"]["environment"]
    assert "'prerelease'" in env_expr and "'production'" in env_expr
    secrets = _ssh_secrets(ssh_host)
    variables = _agent_variables(agent_root)
    assert run_deploy_job(tmp_path / "good", event="push", ref_name="v1.0.0",
                          secrets=secrets, variables=variables).ok
    history = (agent_root.path / "state" / "history.jsonl").read_text()
    pushed = run_deploy_job(tmp_path / "rc", event="push", ref_name="v1.1.0-rc.1",
                            secrets=secrets, variables=variables)
    assert pushed.ok, pushed.log()
    assert "is a prerelease tag: not deployed on push" in pushed.step("Resolve").output
    assert "nothing to deploy" in pushed.step("Run obsdeploy").output
    assert "prerelease, not deployed" in pushed.summary
    assert not (tmp_path / "rc" / "runner-temp" / "obsdeploy-ssh").exists()  # no key written
    assert (agent_root.path / "state" / "history.jsonl").read_text() == history
    assert agent_root.last_good() == "v1.0.0"

    dispatched = run_deploy_job(tmp_path / "dispatch", event="workflow_dispatch", ref_name="main",
                                inputs={"action": "deploy", "version": "v2.0.0-slow"},
                                secrets=secrets, variables=variables)
    assert dispatched.ok, dispatched.log()
    assert agent_root.last_good() == "v2.0.0-slow"
    (row,) = summary_rows(dispatched.summary)
    assert row[1:4] == ["v1.0.0", "v2.0.0-slow", OK]


@pytest.mark.integration
def test_several_hosts_from_the_secret_each_get_a_row(
    tmp_path: Path, ssh_host, agent_root, registry  # type: ignore[no-untyped-def]
) -> None:
    """DEPLOY_HOSTS with two VMs (comma and newline separated); each VM's sshd sets its own
    OBS_AGENT_ROOT, so no agent root is passed (the agent's own default applies)."""
    import uuid

    from tests.parts import make_agent_root
    from tests.parts_ssh import Sshd

    other_root = make_agent_root(tmp_path / "observer2", registry.address,
                                 f"obs-{uuid.uuid4().hex[:8]}")
    ssh_host.stop()
    first = Sshd(tmp_path / "sshd-a", env={"OBS_AGENT_ROOT": str(agent_root.path)}).start()
    second = Sshd(tmp_path / "sshd-b", env={"OBS_AGENT_ROOT": str(other_root.path)}).start()
    # One deploy key for both VMs (sshd reads authorized_keys at each login).
    (second.workdir / "authorized_keys").write_text(
        first.client_key.with_suffix(".pub").read_text())
    try:
        secrets = {
            "DEPLOY_HOSTS": f"127.0.0.1:{first.port},\n 127.0.0.1:{second.port}\n",
            "DEPLOY_SSH_USER": "root",
            "DEPLOY_SSH_KEY": first.client_key.read_text(),
            "DEPLOY_KNOWN_HOSTS": first.known_hosts_line + second.known_hosts_line,
        }
        job = run_deploy_job(tmp_path / "run", event="push", ref_name="v1.0.0", secrets=secrets,
                             variables={"OBSDEPLOY_AGENT_COMMAND": str(VENV_BIN / "obs-agent"),
                                        "OBSDEPLOY_BATCH": "2"})
        assert job.ok, job.log()
        rows = summary_rows(job.summary)
        assert [r[0].rsplit(":", 1)[1] for r in rows] == [str(first.port), str(second.port)]
        assert all(r[2] == "v1.0.0" and r[3] == OK for r in rows), rows
        assert agent_root.last_good() == other_root.last_good() == "v1.0.0"
    finally:
        first.stop()
        second.stop()
        other_root.down()


def test_the_summary_script_renders_a_report(tmp_path: Path) -> None:
    """The summary step alone, fed the report format obsdeploy --json prints."""
    (step,) = [s for s in steps(load(DEPLOY), "deploy") if s.get("name") == "Summary"]
    temp = tmp_path / "t"
    temp.mkdir()
    (temp / "obsdeploy-report.json").write_text(json.dumps({"hosts": [
        {"host": "vm1|x", "from_tag": None, "to_tag": "v1.0.0", "result": "success",
         "exit_code": 0, "seconds": 12.345},
        {"host": "vm2", "from_tag": "v0.9.0", "to_tag": "v1.0.0", "result": "rolled_back",
         "exit_code": 20, "seconds": 30,
         "message": "v1.0.0 failed (watch: check 'error rate' fail: 0.02 > max 0.01 (1 failed "
                    "measurement(s), failure_limit 1)); rolled back to v0.9.0\nmore"},
    ]}))
    (temp / "obsdeploy-exit-code").write_text("20\n")
    out = tmp_path / "summary.md"
    env = {**os.environ, "RUNNER_TEMP": str(temp), "GITHUB_STEP_SUMMARY": str(out),
           "DEPLOY_ACTION": "deploy", "DEPLOY_VERSION": "v1.0.0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run(["bash", "-eo", "pipefail", "-c", step["run"]], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    rows = summary_rows(out.read_text())
    assert rows == [["vm1\\|x", "-", "v1.0.0", "success", "12.3"],
                    ["vm2", "v0.9.0", "v1.0.0", "rolled_back (exit 20)", "30.0"]]
    assert "Exit code **20**" in out.read_text()
    # Why the release was rolled back (SPEC §16: which watch check), below the table.
    assert ("- **vm2**: v1.0.0 failed (watch: check 'error rate' fail: 0.02 > max 0.01 (1 failed "
            "measurement(s), failure_limit 1)); rolled back to v0.9.0") in out.read_text().splitlines()
