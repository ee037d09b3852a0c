"""Issue 5, case 3: the Docker engine unreachable at the start of a deploy, and restarted in
the middle of one.

The restart runs against a private dockerd (tests/faults.py `PrivateEngine`: its own data
root, exec root, socket and bridge), not the machine's engine: restarting the shared engine
would kill the containers of every other test running at the same time, and of other sessions
using the machine. The agent is pointed at it with DOCKER_HOST, as an operator would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import parts
from tests.faults import (
    DataSnapshot,
    EngineRoot,
    PrivateEngine,
    assert_next_deploy_works,
    assert_state_whole,
    close_root,
    collect,
    new_project,
    running_tags,
    serving,
    spawn,
    wait_for,
)
from tests.parts import AgentRootDir, Registry, history, no_traceback, status

pytestmark = pytest.mark.integration


def test_docker_unreachable_with_a_release_running_exits_10(agent_root: AgentRootDir) -> None:
    assert agent_root.agent("deploy", "v1.0.0").returncode == 0
    history_before = (agent_root.path / "state" / "history.jsonl").read_bytes()
    snap = DataSnapshot.take(agent_root)
    down = agent_root.env(DOCKER_HOST="unix:///nonexistent/docker.sock")
    for args in (("deploy", "v1.1.0"), ("rollback", "v1.0.0")):
        res = agent_root.agent(*args, env=down)
        no_traceback(res)
        assert res.returncode == 10, f"{args}: {res.returncode}\n{res.stderr}"
        assert "docker.unreachable" in res.stderr and "nothing was changed" in res.stderr
    res = agent_root.agent("status", env=down)  # read-only: a clear error, no traceback
    no_traceback(res)
    assert res.returncode != 0 and "cannot reach the Docker engine" in res.stderr
    assert serving(agent_root) == "v1.0.0" and agent_root.last_good() == "v1.0.0"
    assert (agent_root.path / "state" / "history.jsonl").read_bytes() == history_before
    assert not (agent_root.path / "state" / "attempt.json").exists()
    snap.assert_intact(agent_root)
    assert_next_deploy_works(agent_root, "v1.1.0")


@pytest.fixture
def private_engine() -> Iterator[PrivateEngine]:
    import shutil

    if not shutil.which("dockerd"):
        from tests.conftest import missing

        missing("dockerd")
    engine = PrivateEngine()
    try:  # a start that fails half way leaves a bridge and a directory to remove too
        yield engine.start()
    finally:
        engine.destroy()


@pytest.fixture
def engine_root(tmp_path: Path, images: dict[str, str], registry: Registry,
                private_engine: PrivateEngine) -> Iterator[EngineRoot]:
    base = parts.make_agent_root(tmp_path / "observer", registry.address, new_project())
    root = EngineRoot(base.path, base.port, base.registry, base.project,
                      docker_host=private_engine.host)
    try:
        yield root
    finally:
        close_root(root)


def test_engine_restarted_during_the_health_gate(engine_root: EngineRoot,
                                                 private_engine: PrivateEngine) -> None:
    """dockerd stops (killing the containers) and comes back while the agent gates a new
    release. Acceptable outcomes: the agent waits for the engine and then either passes the
    gate (exit 0) or rolls back to the last good release (exit 20). Either way the release that
    serves is the one last_good_tag names, and nothing is left for an operator to clean."""
    root = engine_root
    res = root.agent("deploy", "v1.0.0")
    assert res.returncode == 0, res.stdout + res.stderr
    snap = DataSnapshot.take(root)
    proc = spawn(root, "deploy", "v2.0.0-slow")  # answers "initializing" for 3 s
    try:
        wait_for(lambda: running_tags(root) == ["v2.0.0-slow"], 60, "v2.0.0-slow to start")
        private_engine.restart()
    finally:
        res = collect(proc, timeout=300)
    no_traceback(res)
    assert res.returncode in (0, 20), f"exit {res.returncode}:\n{res.stdout}{res.stderr}"
    assert_state_whole(root)
    good = root.last_good()
    assert good == ("v2.0.0-slow" if res.returncode == 0 else "v1.0.0")
    wait_for(lambda: serving(root) == good, 30, f"{good} to serve")
    assert running_tags(root) == [good]
    st = status(root)
    assert st["last_action"]["result"] == ("success" if res.returncode == 0 else "rolled_back")
    assert json.dumps(history(root)[0])  # whole record
    snap.assert_intact(root)
    assert_next_deploy_works(root, "v1.1.0")


def test_a_reboot_after_kill_9_during_the_gate_brings_the_last_good_release_back(
        engine_root: EngineRoot, private_engine: PrivateEngine) -> None:
    """Issue 12: the agent is killed (-9) while it gates a new release, then the machine
    reboots (dockerd stops its containers and starts again) before anyone runs the agent.
    The last good release must come back by itself: the new release's restart policy is set
    aside while it is on trial, and the stopped old release must not stay down with it."""
    root = engine_root
    res = root.agent("deploy", "v1.0.0")
    assert res.returncode == 0, res.stdout + res.stderr
    proc = spawn(root, "deploy", "v2.0.0-slow")  # answers "initializing" for 3 s
    try:
        wait_for(lambda: running_tags(root) == ["v2.0.0-slow"], 60, "v2.0.0-slow to start")
    finally:
        proc.kill()
        collect(proc, timeout=60)
    private_engine.restart()
    wait_for(lambda: serving(root) == "v1.0.0", 60, "v1.0.0 to serve again after the reboot",
             interval=0.2)
    assert running_tags(root) == ["v1.0.0"]
    assert root.last_good() == "v1.0.0"
    assert status(root)["last_action"]["result"] == "interrupted"
    assert_next_deploy_works(root, "v1.1.0")
    # Once a release has passed its gate, every container has its compose restart policy
    # again: the stopped old one stays stopped at the next reboot, the new one comes back.
    policies = {c["Id"]: (c["State"]["Running"], c["HostConfig"]["RestartPolicy"]["Name"])
                for c in _inspect_project(private_engine, root.project)}
    assert sorted(policies.values()) == sorted(
        [(True, "unless-stopped")] + [(False, "unless-stopped")] * (len(policies) - 1)), policies
    private_engine.restart()
    wait_for(lambda: serving(root) == "v1.1.0", 60, "v1.1.0 to serve after a second reboot",
             interval=0.2)
    assert running_tags(root) == ["v1.1.0"]


def _inspect_project(engine: PrivateEngine, project: str) -> list[dict]:  # type: ignore[type-arg]
    ids = engine.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"
                        ).stdout.split()
    return json.loads(engine.docker("inspect", *ids).stdout) if ids else []
