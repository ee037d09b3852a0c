"""Issue 12, backups against the real agent, engine and compose: a capture that fails after the
old release stopped, pruning after failed attempts, the deploy lock, and restore under a
running release."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import parts
from tests.faults import wait_for
from tests.parts import VENV_BIN, AgentRootDir, Registry, history

pytestmark = pytest.mark.integration


@pytest.fixture
def keep_two(tmp_path: Path, images: dict[str, str], registry: Registry) -> Iterator[AgentRootDir]:
    root = parts.make_agent_root(tmp_path / "observer", registry.address,
                                 f"obs-{uuid.uuid4().hex[:8]}", backup_keep=2)
    yield root
    root.down()
    assert not root.secret_leaks()


def test_an_unreadable_directory_fails_the_backup_and_the_old_release_comes_back(
        agent_root: AgentRootDir) -> None:
    """The agent without CAP_DAC_OVERRIDE (as a non-root agent would be) meets a directory
    under backup_paths it cannot read. The backup is captured after the old release stopped:
    the capture fails, the new release never starts, the old one runs again (exit 20), and
    the reason names the directory instead of an archive silently missing it."""
    assert agent_root.agent("deploy", "v1.0.0").returncode == 0
    private = agent_root.path / "logs" / "private"
    private.mkdir()
    (private / "secret.log").write_text("x\n")
    private.chmod(0)
    try:
        res = subprocess.run(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
             str(VENV_BIN / "obs-agent"), "deploy", "v1.1.0"],
            env=agent_root.env(), capture_output=True, text=True, timeout=180)
        parts.OUTPUTS.append(res.stdout + res.stderr)
    finally:
        private.chmod(0o755)
    assert res.returncode == 20, res.stdout + res.stderr
    rec = history(agent_root)[0]
    assert rec["result"] == "rolled_back"
    assert "backup failed: cannot read" in rec["failure"]["reason"], rec["failure"]
    assert str(private) in rec["failure"]["reason"]
    assert agent_root.health()["version"] == "v1.0.0"
    assert agent_root.last_good() == "v1.0.0"
    assert rec["rollback_gate"]["healthy"] is True


def test_failed_attempts_prune_backups_too(keep_two: AgentRootDir) -> None:
    root = keep_two
    assert root.agent("deploy", "v1.0.0").returncode == 0
    for _ in range(3):
        res = root.agent("deploy", "v2.0.0-error")
        assert res.returncode == 20, res.stdout + res.stderr
    archives = sorted((root.path / "backups").glob("backup-*.tar"))
    assert len(archives) == 2, archives
    newest = history(root)[0]["backup"]
    assert newest in {a.name for a in archives}


def test_backup_create_and_restore_take_the_deploy_lock(agent_root: AgentRootDir) -> None:
    from server_agent.state import ReleaseState

    assert agent_root.agent("deploy", "v1.0.0").returncode == 0
    name = agent_root.agent("backup", "create").stdout.strip()
    state = ReleaseState(agent_root.path / "state")
    with state.lock.hold("deploy", "v9.9.9"):
        for args in (("backup", "create"), ("backup", "restore", name, "--stop")):
            res = agent_root.agent(*args)
            assert res.returncode == 12, f"{args}: {res.returncode}\n{res.stdout}{res.stderr}"
            assert f"pid {os.getpid()} (deploy v9.9.9)" in res.stderr, res.stderr
    assert agent_root.agent("backup", "create").returncode == 0


def test_restore_under_a_running_release_is_refused_or_done_with_stop(
        agent_root: AgentRootDir) -> None:
    """Restoring over the live JSONL while the release appends to it would truncate it under
    the writer: refused (exit 2) unless --stop, which stops the writer, restores and starts
    it again."""
    assert agent_root.agent("deploy", "v1.0.0").returncode == 0
    jsonl = agent_root.path / "config" / "observer" / "observer.jsonl"
    wait_for(lambda: jsonl.exists() and jsonl.stat().st_size > 0, 10, "the archive to grow")
    res = agent_root.agent("backup", "create")
    assert res.returncode == 0, res.stderr
    name = res.stdout.strip()
    time.sleep(0.5)  # the writer appends every 0.2 s
    before = jsonl.read_bytes()
    archives = sorted(p.name for p in (agent_root.path / "backups").iterdir())
    res = agent_root.agent("backup", "restore", name)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "refusing to restore" in res.stderr and "--stop" in res.stderr
    assert jsonl.read_bytes().startswith(before)  # untouched: it only kept growing
    assert sorted(p.name for p in (agent_root.path / "backups").iterdir()) == archives  # no pre-restore

    res = agent_root.agent("backup", "restore", name, "--stop")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "stopping" in res.stderr and "started" in res.stderr and "again" in res.stderr
    assert f"restored {name}" in res.stdout
    wait_for(lambda: (agent_root.health() or {}).get("version") == "v1.0.0", 20,
             "v1.0.0 to answer again", interval=0.1)
