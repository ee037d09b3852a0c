"""Issue 5, case 1: `kill -9` of the agent at every step of SPEC §7.

The test hook `OBS_AGENT_DIE_AT=<step>` (server_agent/rollout.py `checkpoint`) SIGKILLs the agent
at a named point; "during pull" and "during the backup write" are killed with a signal at a
measured point instead. test_agent_state.py already covers a healthy deploy killed at
journaled/stopped/started/committed/finishing; this module covers the rest of the matrix:
the other steps of a deploy, every step of the automatic rollback of a failed release, a
manual `rollback`, and a first deploy.

Every case asserts: the agent died (-9); `last_good_tag` is whole and names a release that
passed the gate; history is whole; the next `status` reports the interrupted attempt; the
data under config/ and data/ is intact; and the next deploy (or rollback) works without
manual cleanup. Which release serves right after the kill is asserted per step: up to the
switch it is the last good one; after the switch the agent died with the new containers
started and nobody left to gate them (documented in docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

import pytest

from tests.faults import (
    DataSnapshot,
    assert_next_deploy_works,
    assert_state_whole,
    collect,
    proxied_root,
    running_tags,
    serving,
    spawn,
    wait_for,
)
from tests.parts import AgentRootDir, Registry, history, no_traceback, status

pytestmark = pytest.mark.integration


def die_at(root: AgentRootDir, step: str, *args: str) -> None:
    res = root.agent(*args, env=root.env(OBS_AGENT_DIE_AT=step))
    assert res.returncode == -9, f"did not die at {step}: {res.returncode}\n{res.stdout}{res.stderr}"


def assert_interrupted(root: AgentRootDir, action: str, tag: str) -> None:
    st = status(root)
    assert st["last_action"] is not None and st["last_action"]["result"] == "interrupted", (
        f"status does not report the interrupted {action} of {tag}: {st['last_action']}")
    assert (st["last_action"]["action"], st["last_action"]["tag"]) == (action, tag)


def deployed(root: AgentRootDir, *tags: str) -> DataSnapshot:
    for tag in tags:
        res = root.agent("deploy", tag)
        assert res.returncode == 0, res.stdout + res.stderr
    return DataSnapshot.take(root)


# --- a healthy deploy, at the steps test_agent_state.py does not cover -----------------------
# step -> what serves right after the kill
DEPLOY_STEPS = {
    "locked": "v1.0.0",     # lock taken, nothing else done
    "pulled": "v1.0.0",     # image pulled, nothing journaled yet
    "backed_up": "v1.1.0",  # new release started, archive written while the gate runs
    "gated": "v1.1.0",      # gate passed, last_good_tag not yet written
}


@pytest.mark.parametrize("step", list(DEPLOY_STEPS))
def test_kill_9_during_a_deploy(agent_root: AgentRootDir, step: str) -> None:
    snap = deployed(agent_root, "v1.0.0")
    die_at(agent_root, step, "deploy", "v1.1.0")
    assert_state_whole(agent_root, good={"v1.0.0"})
    assert serving(agent_root) == DEPLOY_STEPS[step]
    assert running_tags(agent_root) == [DEPLOY_STEPS[step]]
    snap.assert_intact(agent_root)
    assert_interrupted(agent_root, "deploy", "v1.1.0")
    assert_next_deploy_works(agent_root, "v1.2.0")
    assert [r["result"] for r in history(agent_root)[:2]] == ["success", "interrupted"]
    snap.assert_intact(agent_root)


# --- a failed release, killed while the agent rolls it back -------------------------------
# step -> what serves right after the kill
ROLLBACK_STEPS = {
    "gated": "v2.0.0-error",      # the gate failed; the broken release still runs
    "failed_stopped": None,       # broken release killed, the old one not started yet
    "rolled_back": "v1.0.0",      # old release started, not yet gated again
    "finishing": "v1.0.0",        # old release healthy again, history not yet written
}


@pytest.mark.parametrize("step", list(ROLLBACK_STEPS))
def test_kill_9_during_the_automatic_rollback(agent_root: AgentRootDir, step: str) -> None:
    snap = deployed(agent_root, "v1.0.0")
    die_at(agent_root, step, "deploy", "v2.0.0-error")
    assert_state_whole(agent_root, good={"v1.0.0"})
    expected = ROLLBACK_STEPS[step]
    assert serving(agent_root) == expected
    assert running_tags(agent_root) == ([expected] if expected else [])
    snap.assert_intact(agent_root)
    assert_interrupted(agent_root, "deploy", "v2.0.0-error")
    rec = history(agent_root)[0]
    if step != "gated":  # the diagnostics were journaled before the kill: they are not lost
        assert "health_url answered a failure" in rec["failure"]["reason"], rec
    assert_next_deploy_works(agent_root, "v1.1.0")
    snap.assert_intact(agent_root)


def test_rollback_after_a_crash_that_left_nothing_running_restores_the_last_good(
        agent_root: AgentRootDir) -> None:
    """Killed after the broken release was removed and before the old one was started: the
    service is down. The operator's obvious next step, `obs-agent rollback`, must bring back
    the last good release (v1.1.0), not skip it for the one before (v1.0.0)."""
    snap = deployed(agent_root, "v1.0.0", "v1.1.0")
    die_at(agent_root, "failed_stopped", "deploy", "v2.0.0-error")
    assert serving(agent_root) is None
    res = agent_root.agent("rollback")
    no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
    assert serving(agent_root) == "v1.1.0", (
        f"rollback after the crash went to {serving(agent_root)}, not the last good v1.1.0")
    assert agent_root.last_good() == "v1.1.0"
    snap.assert_intact(agent_root)


# --- a manual rollback -----------------------------------------------------------------------
def test_kill_9_during_a_manual_rollback_after_stopping_the_current(agent_root: AgentRootDir) -> None:
    snap = deployed(agent_root, "v1.0.0", "v1.1.0")
    die_at(agent_root, "stopped", "rollback")
    assert_state_whole(agent_root, good={"v1.1.0"})
    assert running_tags(agent_root) == []  # v1.1.0 stopped, v1.0.0 not started yet
    assert_interrupted(agent_root, "rollback", "v1.0.0")
    res = agent_root.agent("rollback")  # the same command again, no cleanup
    assert res.returncode == 0, res.stdout + res.stderr
    assert serving(agent_root) == "v1.0.0" and agent_root.last_good() == "v1.0.0"
    assert [r["result"] for r in history(agent_root)[:2]] == ["success", "interrupted"]
    assert_state_whole(agent_root)
    snap.assert_intact(agent_root)


def test_kill_9_during_a_manual_rollback_after_commit(agent_root: AgentRootDir) -> None:
    snap = deployed(agent_root, "v1.0.0", "v1.1.0")
    die_at(agent_root, "committed", "rollback", "v1.0.0")
    # The gate passed and last_good_tag was written: v1.0.0 is both serving and good.
    assert_state_whole(agent_root, good={"v1.0.0"})
    assert serving(agent_root) == "v1.0.0"
    assert_interrupted(agent_root, "rollback", "v1.0.0")
    assert_next_deploy_works(agent_root, "v1.2.0")
    snap.assert_intact(agent_root)


# --- a first deploy --------------------------------------------------------------------------
def test_kill_9_during_a_first_deploy(agent_root: AgentRootDir) -> None:
    die_at(agent_root, "started", "deploy", "v1.0.0")
    assert_state_whole(agent_root, good={None})
    assert_interrupted(agent_root, "deploy", "v1.0.0")
    st = status(agent_root)
    assert st["last_good_tag"] is None
    assert_next_deploy_works(agent_root, "v1.1.0")


# --- signals at measured points ---------------------------------------------------------------
def test_kill_9_during_the_pull(tmp_path: Path, images: dict[str, str], registry: Registry) -> None:
    """SIGKILL while the engine pulls through a slow registry: nothing changed, the next
    deploy (registry healthy again) works."""
    with proxied_root(tmp_path / "observer", registry.address) as (root, proxy):
        snap = deployed(root, "v1.0.0")
        proxy.set("slow", delay=1.0)
        before = proxy.connections
        proc = spawn(root, "deploy", "v1.1.0")
        try:
            wait_for(lambda: proxy.connections > before, 30, "the pull to reach the registry")
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            res = collect(proc)
        assert res.returncode == -9
        proxy.set("forward")
        assert_state_whole(root, good={"v1.0.0"})
        assert serving(root) == "v1.0.0" and running_tags(root) == ["v1.0.0"]
        snap.assert_intact(root)
        assert_interrupted(root, "deploy", "v1.1.0")
        assert_next_deploy_works(root, "v1.1.0")


def test_kill_9_while_the_backup_archive_is_written(agent_root: AgentRootDir) -> None:
    """SIGKILL with DIR/backups/*.partial half written: the partial file is never listed as a
    backup, is cleaned up without help, and the next deploy works."""
    snap = deployed(agent_root, "v1.0.0")
    big = agent_root.path / "logs" / f"big-{uuid.uuid4().hex[:6]}.log"
    with open(big, "wb") as f:  # large enough that writing the archive takes a while
        f.write(os.urandom(1 << 20) * 160)
    try:
        proc = spawn(agent_root, "deploy", "v1.1.0")
        backups = agent_root.path / "backups"
        try:
            wait_for(lambda: any(backups.glob("*.partial")), 60, "the archive to be written")
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            res = collect(proc)
        assert res.returncode == -9
        assert_state_whole(agent_root, good={"v1.0.0"})
        snap.assert_intact(agent_root)
        assert_interrupted(agent_root, "deploy", "v1.1.0")
        big.unlink()
        assert_next_deploy_works(agent_root, "v1.2.0")
        assert not list(backups.glob("*.partial"))
    finally:
        big.unlink(missing_ok=True)
        for b in (agent_root.path / "backups").glob("*"):
            b.unlink()  # 160 MB archives: don't keep them in pytest's retained tmp dirs


# --- the watch window after the gate (SPEC §16) ------------------------------------------------
@pytest.mark.parametrize("then", ["deploy", "rollback"])
def test_kill_9_during_the_watch(agent_root: AgentRootDir, then: str) -> None:
    """Killed on probation, after a round of checks: the gate passed but the watch did not
    end, so v1.1.0 is not good; it runs with nobody watching it. The interrupted record keeps
    the measurements so far; the next deploy, or a rollback, works without manual steps."""
    snap = deployed(agent_root, "v1.0.0")
    watch = {"seconds": 30, "interval": 0.3, "checks": [
        {"kind": "http", "url": f"http://127.0.0.1:{agent_root.port}/health", "json": {"version": "{tag}"}}]}
    res = agent_root.agent("deploy", "v1.1.0", env=agent_root.env(OBS_AGENT_DIE_AT="watching",
                                                                  OBS_AGENT_WATCH=json.dumps(watch)))
    assert res.returncode == -9, res.stdout + res.stderr
    assert_state_whole(agent_root, good={"v1.0.0"})
    assert serving(agent_root) == "v1.1.0" and running_tags(agent_root) == ["v1.1.0"]
    snap.assert_intact(agent_root)
    assert_interrupted(agent_root, "deploy", "v1.1.0")
    rec = history(agent_root)[0]
    assert rec["watch"]["result"] == "watching" and rec["watch"]["rounds"] == 1
    assert rec["watch"]["last"][0]["verdict"] == "pass"
    if then == "deploy":
        assert_next_deploy_works(agent_root, "v1.2.0")
    else:
        # The operator's way back: the last good release, the one the watch did not replace.
        res = agent_root.agent("rollback")
        no_traceback(res)
        assert res.returncode == 0, res.stdout + res.stderr
        assert serving(agent_root) == "v1.0.0" and agent_root.last_good() == "v1.0.0"
        assert_state_whole(agent_root)
    # The restart policy set aside for the trial was put back by the next run.
    import docker

    for c in docker.from_env().containers.list(filters={"label": f"com.docker.compose.project={agent_root.project}"}):
        assert c.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped", c.name
    snap.assert_intact(agent_root)
