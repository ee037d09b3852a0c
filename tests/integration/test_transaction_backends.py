"""One set of transaction tests, run over both backends: compose on the host engine, and a
stack on the two-node swarm lab. The same commands, the same exit codes, the same history;
what differs is only how each backend runs the release."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import parts
from tests.parts import AgentRootDir, no_traceback


# The swarm side gets the lab at run time (getfixturevalue), which the conftest's grouping
# by fixture name cannot see: its group is named here.
@pytest.fixture(params=["compose", pytest.param("swarm", marks=pytest.mark.xdist_group("swarm-lab"))])
def backend_root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AgentRootDir]:
    if request.param == "compose":
        root: AgentRootDir = request.getfixturevalue("agent_root")
        yield root
        return
    from tests.parts_swarm import make_swarm_root

    swarm = make_swarm_root(tmp_path / "observer", request.getfixturevalue("lab"))
    yield swarm
    swarm.down()
    leaks = swarm.secret_leaks()
    assert not leaks, f"secret values leaked into: {leaks}"


def deploy(root: AgentRootDir, tag: str, **env: str) -> subprocess.CompletedProcess[str]:
    res = root.agent("deploy", tag, env=root.env(**env))
    no_traceback(res)
    return res


def running(root: AgentRootDir) -> str | None:
    status = parts.status(root)
    assert status["healthy"] is True, status
    return status["current_tag"]  # type: ignore[no-any-return]


def last(root: AgentRootDir) -> dict[str, Any]:
    return parts.history(root)[0]


def test_a_failed_release_goes_back_and_the_next_good_one_commits(backend_root: AgentRootDir) -> None:
    root = backend_root
    assert deploy(root, "v1.0.0").returncode == 0
    plan = root.agent("plan", "v1.1.0", "--json", env=root.env())
    assert plan.returncode == 0, plan.stdout + plan.stderr
    shown = json.loads(plan.stdout)
    assert [s["name"] for step in shown["steps"] for s in step["services"]] == ["observer"], shown
    good = deploy(root, "v1.1.0")
    assert good.returncode == 0, good.stdout + good.stderr
    assert (running(root), root.last_good()) == ("v1.1.0", "v1.1.0")
    assert last(root)["from_tag"] == "v1.0.0" and last(root)["backup"]

    crash = deploy(root, "v2.0.0-crash")
    assert crash.returncode == 20, crash.stdout + crash.stderr
    assert (running(root), root.last_good()) == ("v1.1.0", "v1.1.0")
    record = last(root)
    assert record["result"] == "rolled_back" and "exit" in record["failure"]["reason"], record
    assert record["rollback_gate"]["healthy"] is True

    error = deploy(root, "v2.0.0-error")
    assert error.returncode == 20, error.stdout + error.stderr
    assert running(root) == "v1.1.0"
    assert "health_url answered a failure 3 times in a row" in last(root)["failure"]["reason"]

    back = root.agent("rollback", env=root.env())
    no_traceback(back)
    assert back.returncode == 0, back.stdout + back.stderr
    assert (running(root), root.last_good()) == ("v1.0.0", "v1.0.0")


def test_verify_log_pattern_and_the_watch_hold_on_either_engine(backend_root: AgentRootDir) -> None:
    root = backend_root
    assert deploy(root, "v1.0.0").returncode == 0
    printed = deploy(root, "v1.1.0", OBS_AGENT_VERIFY=json.dumps(
        {"paths": [], "log_pattern": "observer v1.1.0 ready"}))
    assert printed.returncode == 0, printed.stdout + printed.stderr

    # In the release's own configuration, not the agent's environment: the environment would
    # judge the rollback to v1.1.0 by the same pattern, and v1.1.0 never printed it either.
    config_file = root.path / "deployment_config.json"
    config = json.loads(config_file.read_text())
    released = json.loads(json.dumps(config))
    released["agent"].update(health_timeout=25, verify={"paths": [], "log_pattern": "never printed"})
    config_file.write_text(json.dumps(released))
    never = deploy(root, "v1.2.0")
    config_file.write_text(json.dumps(config))
    assert never.returncode == 20, never.stdout + never.stderr
    assert running(root) == "v1.1.0"
    assert "verify.log_pattern 'never printed'" in last(root)["failure"]["reason"]

    # The watch counts the release's own start line: over a limit of 0, so it walks back.
    watch = json.dumps({"seconds": 3, "interval": 1, "checks": [
        {"kind": "log", "pattern": "observer v1.2.0 starting", "max_per_minute": 0}]})
    watched = deploy(root, "v1.2.0", OBS_AGENT_WATCH=watch)
    assert watched.returncode == 20, watched.stdout + watched.stderr
    assert (running(root), root.last_good()) == ("v1.1.0", "v1.1.0")
    record = last(root)
    assert record["watch"]["rounds"] >= 1 and "watch: check" in record["failure"]["reason"], record


def test_a_kill_9_mid_switch_is_reported_and_the_next_deploy_works(backend_root: AgentRootDir) -> None:
    root = backend_root
    assert deploy(root, "v1.0.0").returncode == 0
    killed = root.agent("deploy", "v1.1.0", env=root.env(OBS_AGENT_DIE_AT="started"))
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert root.last_good() == "v1.0.0"
    assert parts.status(root)["last_action"]["result"] == "interrupted"
    again = deploy(root, "v1.2.0")
    assert again.returncode == 0, again.stdout + again.stderr
    assert (running(root), root.last_good()) == ("v1.2.0", "v1.2.0")
    assert [h["result"] for h in parts.history(root)[:2]] == ["success", "interrupted"]


def test_health_url_counts_without_the_path_contract(backend_root: AgentRootDir) -> None:
    """A project with no path contract (mounts {}): its release still answers health_url,
    and one answering errors is rolled back on either engine (SPEC §24)."""
    root = backend_root
    config = root.path / "deployment_config.json"
    doc = json.loads(config.read_text())
    doc["agent"].update(mounts={}, verify={"paths": []})
    config.write_text(json.dumps(doc, indent=2))
    first = deploy(root, "v1.0.0")
    assert first.returncode == 0, first.stdout + first.stderr
    error = deploy(root, "v2.0.0-error")
    assert error.returncode == 20, error.stdout + error.stderr
    assert running(root) == "v1.0.0"
    assert "health_url answered a failure" in last(root)["failure"]["reason"], last(root)
