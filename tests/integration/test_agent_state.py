"""The lock, crash safety and backups (SPEC §7 crash safety, §7.4, §8) on the real engine."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.parts import VENV_BIN, AgentRootDir, history

pytestmark = pytest.mark.integration


def test_second_deploy_while_one_runs_exits_12_naming_the_holder(agent_root: AgentRootDir) -> None:
    assert agent_root.agent("deploy", "v1.0.0").returncode == 0
    first = subprocess.Popen([str(VENV_BIN / "obs-agent"), "deploy", "v2.0.0-slow"],
                             env=agent_root.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not (agent_root.path / "state" / "attempt.json").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        res = agent_root.agent("rollback", "v1.0.0")
        assert res.returncode == 12, res.stderr
        assert f"pid {first.pid}" in res.stderr and "deploy v2.0.0-slow" in res.stderr
        st = json.loads(agent_root.agent("status", "--json").stdout)
        assert st["last_action"] == {"action": "deploy", "tag": "v2.0.0-slow",
                                     "result": "running", "finished_at": None}
    finally:
        first.kill()  # kill -9 mid-gate
        first.wait()
    st = json.loads(agent_root.agent("status", "--json").stdout)
    assert st["last_action"]["result"] == "interrupted"
    assert agent_root.last_good() == "v1.0.0"
    res = agent_root.agent("deploy", "v1.1.0")
    assert res.returncode == 0, res.stderr
    recs = history(agent_root)
    assert [r["result"] for r in recs[:2]] == ["success", "interrupted"]
    assert recs[1]["tag"] == "v2.0.0-slow"


@pytest.mark.parametrize("step", ["journaled", "stopped", "started", "committed", "finishing"])
def test_kill_9_at_a_step_leaves_state_whole(agent_root: AgentRootDir, step: str) -> None:
    assert agent_root.agent("deploy", "v1.0.0").returncode == 0
    res = agent_root.agent("deploy", "v1.1.0", env=agent_root.env(OBS_AGENT_DIE_AT=step))
    assert res.returncode == -9
    # From `committed` on, v1.1.0 passed its gate and last_good_tag says so; before, it never moved.
    assert agent_root.last_good() == ("v1.1.0" if step in ("committed", "finishing") else "v1.0.0")
    st = json.loads(agent_root.agent("status", "--json").stdout)
    assert st["last_action"]["result"] == "interrupted" and st["last_action"]["tag"] == "v1.1.0"
    res = agent_root.agent("deploy", "v1.2.0")
    assert res.returncode == 0, res.stdout + res.stderr
    assert agent_root.health()["version"] == "v1.2.0"
    assert [r["result"] for r in history(agent_root)[:2]] == ["success", "interrupted"]
    assert not list((agent_root.path / "backups").glob("*.partial"))


def test_backup_archive_contents_mode_and_retention(agent_root: AgentRootDir) -> None:
    cfg_path = agent_root.path / "deployment_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["agent"]["backup_keep"] = 2
    cfg_path.write_text(json.dumps(cfg))
    for tag in ("v1.0.0", "v1.1.0", "v1.2.0"):
        assert agent_root.agent("deploy", tag).returncode == 0
    listed = json.loads(agent_root.agent("backup", "list", "--json").stdout)
    assert len(listed) == 2
    newest = agent_root.path / "backups" / listed[0]["name"]
    assert newest.stat().st_mode & 0o777 == 0o600
    with tarfile.open(newest) as tar:
        names = set(tar.getnames())
        archive = tar.extractfile("config/observer/observer.jsonl")
        assert archive is not None
        lines = archive.read().decode().splitlines()
    assert {"docker-compose.server.yml", "deployment_config.json", "state/last_good_tag",
            "config/observer/observer.jsonl"} <= names
    assert ".env" not in names and "state/deploy.lock" not in names
    # Captured while v1.1.0 was stopped: the archive ends with v1.1.0's lines, all whole.
    assert all(json.loads(line) for line in lines)
    assert json.loads(lines[-1])["version"] == "v1.1.0"


def test_backup_restore_round_trip(agent_root: AgentRootDir) -> None:
    cfg_dir = agent_root.path / "config"
    cfg_dir.mkdir()
    (cfg_dir / "app.yaml").write_text("mode: A\n")
    (cfg_dir / "keep.txt").write_text("keep\n")
    res = agent_root.agent("backup", "create")
    assert res.returncode == 0, res.stderr
    name = res.stdout.strip()
    (cfg_dir / "app.yaml").write_text("mode: B\n")
    (cfg_dir / "keep.txt").unlink()
    res = agent_root.agent("backup", "restore", name)
    assert res.returncode == 0, res.stderr
    assert (cfg_dir / "app.yaml").read_text() == "mode: A\n"
    assert (cfg_dir / "keep.txt").read_text() == "keep\n"
    # The state it replaced was kept too: nothing is lost by a restore.
    names = [b["name"] for b in json.loads(agent_root.agent("backup", "list", "--json").stdout)]
    assert any("pre-restore" in n for n in names)


def _crafted(path: Path, kind: str) -> None:
    with tarfile.open(path, "w") as tar:
        ok = tarfile.TarInfo("config/fine.txt")
        ok.size = 2
        tar.addfile(ok, fileobj=__import__("io").BytesIO(b"ok"))
        bad = tarfile.TarInfo({"dotdot": "../escaped.txt", "absolute": "/tmp/obs-escaped.txt",
                               "symlink": "config/link", "hardlink": "config/hard"}[kind])
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            bad.type, bad.linkname = tarfile.LNKTYPE, "../../etc/passwd"
        else:
            bad.size = 4
        tar.addfile(bad, fileobj=__import__("io").BytesIO(b"evil") if bad.size else None)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink"])
def test_restore_refuses_members_landing_outside(agent_root: AgentRootDir, kind: str) -> None:
    backups = agent_root.path / "backups"
    backups.mkdir()
    _crafted(backups / "backup-crafted.tar", kind)
    res = agent_root.agent("backup", "restore", "backup-crafted.tar")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "refusing backup-crafted.tar" in res.stderr
    assert not (agent_root.path / "config" / "fine.txt").exists()  # nothing was written
    assert not (agent_root.path.parent / "escaped.txt").exists()
    assert not os.path.exists("/tmp/obs-escaped.txt")


def test_restart_policy_held_during_the_gate_is_restored_after_a_kill(agent_root: AgentRootDir) -> None:
    from tests.integration.test_agent_deploy import restart_policies

    assert agent_root.agent("deploy", "v1.0.0").returncode == 0
    res = agent_root.agent("deploy", "v1.1.0", env=agent_root.env(OBS_AGENT_DIE_AT="gated"))
    assert res.returncode == -9
    # Killed on trial: the new release runs without a restart policy; the old one is kept,
    # with `always`, so a reboot before the next run starts it and not the one on trial.
    assert restart_policies(agent_root) == {"running": ["no"], "exited": ["always"]}
    assert agent_root.agent("deploy", "v1.2.0").returncode == 0
    assert restart_policies(agent_root) == {"running": ["unless-stopped"], "exited": ["unless-stopped"]}
