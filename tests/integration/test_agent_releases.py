"""A release is its image and its configuration (SPEC §14): a good release keeps the compose
file and deployment_config.json it passed with; a rollback judges it by them and re-creates it
from them, with today's .env."""

from __future__ import annotations

import json

import docker
import pytest

from tests.parts import SECRETS, AgentRootDir, history

pytestmark = pytest.mark.integration


def _edit_agent(root: AgentRootDir, **agent: object) -> None:
    path = root.path / "deployment_config.json"
    config = json.loads(path.read_text())
    config["agent"].update(agent)
    path.write_text(json.dumps(config, indent=2))


def _running(root: AgentRootDir) -> list[docker.models.containers.Container]:
    client = docker.from_env()
    return client.containers.list(filters={"label": f"com.docker.compose.project={root.project}"})


def test_a_rollback_judges_the_previous_release_by_the_criteria_it_passed_with(
        agent_root: AgentRootDir) -> None:
    _edit_agent(agent_root, verify={"paths": ["config/observer"], "log_pattern": "observer v1.0.0 ready"})
    assert agent_root.agent("deploy", "v1.0.0").returncode == 0
    kept = agent_root.path / "state" / "releases" / "v1.0.0"
    assert (kept / "compose.yml").read_text() == (agent_root.path / "docker-compose.server.yml").read_text()
    assert json.loads((kept / "deployment_config.json").read_text())["agent"]["verify"]["log_pattern"] \
        == "observer v1.0.0 ready"
    # A new criterion that v1.1.0 does not meet: the deploy fails, and v1.0.0 is judged by the
    # criterion it passed with (with today's, the rollback would fail too: exit 21).
    _edit_agent(agent_root, verify={"paths": ["config/observer"], "log_pattern": "never printed"},
                health_timeout=3)
    res = agent_root.agent("deploy", "v1.1.0")
    assert res.returncode == 20, res.stdout + res.stderr
    assert agent_root.health()["version"] == "v1.0.0"
    rec = history(agent_root)[0]
    assert "never printed" in rec["failure"]["reason"] and rec["rollback_gate"]["healthy"] is True


def test_rollback_recreates_a_release_from_its_kept_compose_file(agent_root: AgentRootDir) -> None:
    assert agent_root.agent("deploy", "v1.0.0").returncode == 0
    compose = agent_root.path / "docker-compose.server.yml"
    compose.write_text(compose.read_text().replace(
        "      PYTHONPATH: ${PYTHONPATH}\n", "      PYTHONPATH: ${PYTHONPATH}\n      ADDED_IN_V11: 'yes'\n"))
    assert agent_root.agent("deploy", "v1.1.0").returncode == 0
    [c] = _running(agent_root)
    assert "ADDED_IN_V11=yes" in c.attrs["Config"]["Env"]
    # The containers are gone (an operator's `docker compose down`), and a secret was rotated.
    for c in docker.from_env().containers.list(
            all=True, filters={"label": f"com.docker.compose.project={agent_root.project}"}):
        c.remove(force=True)
    rotated = "kis-key-ROTATED-5b1c"
    (agent_root.path / ".env").write_text(
        f"KIS_API_KEY={rotated}\nKIS_API_SECRET={SECRETS['KIS_API_SECRET']}\n")
    res = agent_root.agent("rollback", "v1.0.0")
    assert res.returncode == 0, res.stdout + res.stderr
    assert rotated not in res.stdout + res.stderr
    [c] = _running(agent_root)
    env = c.attrs["Config"]["Env"]
    assert c.labels["obsdeploy.release"] == "v1.0.0"
    assert not any(e.startswith("ADDED_IN_V11=") for e in env), "re-created from v1.0.0's compose file"
    assert f"KIS_API_KEY={rotated}" in env, "with today's .env"
    assert agent_root.health()["version"] == "v1.0.0"
