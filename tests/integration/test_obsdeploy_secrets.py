"""Secrets from CI: `obsdeploy deploy --secret NAME` over a real sshd to the real agent, and the
agent's own secret stores (`agent.secret_sources`: Debian's `age`, a command)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import parts
from tests.conftest import missing
from tests.integration.obsdeploy_fixtures import (  # noqa: F401 (fixtures)
    Server,
    clean_env,
    make_server,
    obsdeploy,
)
from tests.parts_ssh import AGENT

pytestmark = pytest.mark.integration

ROTATED = "kis-key-ROTATED-9c2e51"  # noqa: S105 (a test secret, checked never to leak)


def container_env(root: parts.AgentRootDir) -> dict[str, str]:
    ids = subprocess.run(["docker", "ps", "-q", "--filter",
                          f"label=com.docker.compose.project={root.project}"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert len(ids) == 1, ids
    inspect = json.loads(subprocess.run(["docker", "inspect", ids[0]], capture_output=True,
                                        text=True, check=True).stdout)
    return dict(e.split("=", 1) for e in inspect[0]["Config"]["Env"])


def recording_agent(path: Path, record: Path) -> Path:
    """The agent command on the 'VM', wrapped: it records its argv and its environment (one
    JSON object per call) before running the real agent with the same argv and stdin."""
    path.write_text(
        "#!/bin/sh\n"
        f"{parts.VENV_BIN / 'python'} -c 'import json, os, sys; "
        f"open(sys.argv[1], \"a\").write(json.dumps({{\"argv\": sys.argv[2:], "
        f"\"env\": dict(os.environ)}}) + \"\\n\")' {record} \"$@\"\n"
        f'exec {AGENT} "$@"\n')
    path.chmod(0o755)
    return path


def files_holding(root: Path, value: str) -> list[str]:
    return [str(p) for p in root.rglob("*")
            if p.is_file() and p.name != ".env" and value.encode() in p.read_bytes()]


def test_a_rotated_secret_reaches_the_new_container_and_nothing_else(
    tmp_path: Path, make_server: Callable[[str], Server]  # noqa: F811
) -> None:
    server = make_server("vm1")
    record = tmp_path / "agent-calls.jsonl"
    wrapper = recording_agent(tmp_path / "obs-agent-recording", record)
    env_file = server.root.path / ".env"
    env_file.write_text(f"# the observer's secrets\nKIS_API_KEY={parts.SECRETS['KIS_API_KEY']}\n"
                        f"KIS_API_SECRET={parts.SECRETS['KIS_API_SECRET']}\nEXTRA=kept\n")
    args = [*server.ssh_args(), "--agent-command", str(wrapper)]
    assert obsdeploy("deploy", "v1.0.0", *args).returncode == 0
    assert container_env(server.root)["KIS_API_KEY"] == parts.SECRETS["KIS_API_KEY"]

    # Rotation: change the secret in CI, redeploy (the next release) with --secret.
    res = obsdeploy("deploy", "v1.1.0", *args, "--secret", "KIS_API_KEY", "--json",
                    env=clean_env(KIS_API_KEY=ROTATED))
    assert res.returncode == 0, res.stdout + res.stderr
    assert container_env(server.root)["KIS_API_KEY"] == ROTATED
    # .env: the one line replaced where it stood, every other kept, mode 0600.
    assert env_file.read_text() == (
        f"# the observer's secrets\nKIS_API_KEY={ROTATED}\n"
        f"KIS_API_SECRET={parts.SECRETS['KIS_API_SECRET']}\nEXTRA=kept\n")
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600

    # ... and nowhere else: not in obsdeploy's output, not in the remote command's argv or
    # environment, not in history, state, logs or backups.
    assert ROTATED not in res.stdout + res.stderr
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    deploys = [c for c in calls if "deploy" in c["argv"]]
    assert [c["argv"][-1] for c in deploys] == ["v1.0.0", "v1.1.0"]
    assert "--secrets-stdin" in deploys[1]["argv"] and "--secrets-stdin" not in deploys[0]["argv"]
    for call in calls:
        assert ROTATED not in json.dumps(call), call["argv"]
    assert files_holding(server.root.path, ROTATED) == []
    back = obsdeploy("rollback", *args, "--secret", "KIS_API_KEY",
                     env=clean_env(KIS_API_KEY=ROTATED))
    assert back.returncode == 0, back.stdout + back.stderr
    assert ROTATED not in back.stdout + back.stderr
    # A rollback keeps today's values: v1.0.0's stopped container held the old key, so it
    # is re-created, with the rotated one.
    assert container_env(server.root)["KIS_API_KEY"] == ROTATED
    assert files_holding(server.root.path, ROTATED) == []


def test_a_missing_secret_is_refused_before_any_host_is_touched(
    tmp_path: Path, make_server: Callable[[str], Server]  # noqa: F811
) -> None:
    server = make_server("vm1")
    record = tmp_path / "agent-calls.jsonl"
    wrapper = recording_agent(tmp_path / "obs-agent-recording", record)
    for env in (clean_env(), clean_env(KIS_API_KEY="")):
        res = obsdeploy("deploy", "v1.0.0", *server.ssh_args(), "--agent-command", str(wrapper),
                        "--secret", "KIS_API_KEY", env=env)
        assert res.returncode == 2, res.stdout + res.stderr
        assert "KIS_API_KEY not set or empty" in res.stderr
    # The same through OBSDEPLOY_SECRETS.
    res = obsdeploy("deploy", "v1.0.0", *server.ssh_args(), "--agent-command", str(wrapper),
                    env=clean_env(OBSDEPLOY_SECRETS="KIS_API_KEY,KIS_API_SECRET",
                                  KIS_API_SECRET="x" * 8))
    assert res.returncode == 2 and "KIS_API_KEY not set" in res.stderr, res.stderr
    assert not record.exists()  # no agent ran anywhere
    assert server.root.last_good() is None


def test_a_preflight_failure_leaves_the_env_file_byte_for_byte(
    make_server: Callable[[str], Server]  # noqa: F811
) -> None:
    server = make_server("vm1")
    config = server.root.path / "deployment_config.json"
    data = json.loads(config.read_text())
    data["environment"].pop("PYTHONPATH")  # a required variable: preflight fails
    config.write_text(json.dumps(data))
    env_file = server.root.path / ".env"
    env_file.write_bytes(b"KIS_API_KEY=old-key-value\r\n# note\nKIS_API_SECRET='s e c'\n")
    env_file.chmod(0o600)
    before = env_file.read_bytes()
    res = obsdeploy("deploy", "v1.0.0", *server.ssh_args(), "--secret", "KIS_API_KEY",
                    env=clean_env(KIS_API_KEY=ROTATED))
    assert res.returncode == 10, res.stdout + res.stderr
    assert "PYTHONPATH" in res.stdout + res.stderr
    assert env_file.read_bytes() == before
    assert ROTATED not in res.stdout + res.stderr


# --- agent.secret_sources ------------------------------------------------------------------------
@pytest.fixture
def bare_root(tmp_path: Path, images: dict[str, str], registry: parts.Registry):  # type: ignore[no-untyped-def]
    """An agent root whose .env holds no KIS_ secret: only a source can give them."""
    root = parts.make_agent_root(tmp_path / "observer", registry.address,
                                 f"obs-src-{uuid.uuid4().hex[:8]}")
    (root.path / ".env").unlink()
    yield root
    root.down()


def _with_sources(root: parts.AgentRootDir, sources: list[dict[str, object]]) -> None:
    config = root.path / "deployment_config.json"
    data = json.loads(config.read_text())
    data["agent"]["secret_sources"] = sources
    config.write_text(json.dumps(data))


def test_an_age_source_gives_the_secrets(tmp_path: Path, bare_root: parts.AgentRootDir) -> None:
    if not (shutil.which("age") and shutil.which("age-keygen")):
        missing("age (Debian package age)")
    identity = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True,
                               capture_output=True, text=True).stdout.strip()
    plain = "".join(f"{k}={v}\n" for k, v in parts.SECRETS.items())
    subprocess.run(["age", "-r", recipient, "-o", str(bare_root.path / ".env.age")],
                   input=plain, text=True, check=True, capture_output=True)
    _with_sources(bare_root, [{"kind": "age", "file": ".env.age", "identity": str(identity)}])

    identity.chmod(0o644)
    loose = bare_root.agent("deploy", "v1.0.0")
    assert loose.returncode == 10, loose.stdout + loose.stderr
    assert f"age source .env.age: identity {identity} has mode 0644" in loose.stderr

    identity.chmod(0o600)
    res = bare_root.agent("deploy", "v1.0.0")
    assert res.returncode == 0, res.stdout + res.stderr
    assert container_env(bare_root)["KIS_API_KEY"] == parts.SECRETS["KIS_API_KEY"]
    assert not (bare_root.path / ".env").exists()  # read each time, never copied
    assert files_holding(bare_root.path, parts.SECRETS["KIS_API_KEY"]) == []


def test_a_command_source_gives_the_secrets_and_its_failure_is_a_preflight_problem(
    tmp_path: Path, bare_root: parts.AgentRootDir
) -> None:
    script = tmp_path / "secret-manager"
    script.write_text("#!/bin/sh\n"
                      f"echo KIS_API_KEY={parts.SECRETS['KIS_API_KEY']}\n"
                      f"echo KIS_API_SECRET={parts.SECRETS['KIS_API_SECRET']}\n"
                      f"[ \"$1\" = fail ] && {{ echo \"vault said no to "
                      f"{parts.SECRETS['KIS_API_SECRET']}\" >&2; exit 3; }}\n"
                      "exit 0\n")
    script.chmod(0o755)
    _with_sources(bare_root, [{"kind": "command", "argv": [str(script), "fail"]}])
    bad = bare_root.agent("deploy", "v1.0.0")
    assert bad.returncode == 10, bad.stdout + bad.stderr
    assert f"command source {script}: exit 3: vault said no to ***" in bad.stderr
    assert parts.SECRETS["KIS_API_SECRET"] not in bad.stdout + bad.stderr

    _with_sources(bare_root, [{"kind": "command", "argv": [str(script)]}])
    res = bare_root.agent("deploy", "v1.0.0")
    assert res.returncode == 0, res.stdout + res.stderr
    got = container_env(bare_root)
    assert (got["KIS_API_KEY"], got["KIS_API_SECRET"]) == (parts.SECRETS["KIS_API_KEY"],
                                                           parts.SECRETS["KIS_API_SECRET"])
    # .env still wins over a source (JSON environment < sources < .env < the agent's env).
    (bare_root.path / ".env").write_text("KIS_API_KEY=from-the-env-file\n")
    (bare_root.path / ".env").chmod(0o600)
    assert bare_root.agent("deploy", "v1.1.0").returncode == 0
    assert container_env(bare_root)["KIS_API_KEY"] == "from-the-env-file"
    assert files_holding(bare_root.path, parts.SECRETS["KIS_API_SECRET"]) == []
