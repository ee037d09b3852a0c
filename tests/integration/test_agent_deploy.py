"""obs-agent deploy / rollback against the real engine, registry and compose (SPEC §6-§8)."""

from __future__ import annotations

import json
import time

import pytest

from tests.parts import AgentRootDir

pytestmark = pytest.mark.integration


def deploy(root: AgentRootDir, tag: str):  # type: ignore[no-untyped-def]
    return root.agent("deploy", tag)


def status(root: AgentRootDir) -> dict:  # type: ignore[type-arg]
    res = root.agent("status", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def history(root: AgentRootDir) -> list[dict]:  # type: ignore[type-arg]
    res = root.agent("history", "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def test_first_deploy_of_a_healthy_tag(agent_root: AgentRootDir) -> None:
    res = deploy(agent_root, "v1.0.0")
    assert res.returncode == 0, res.stderr
    assert agent_root.last_good() == "v1.0.0"
    st = status(agent_root)
    assert st["current_tag"] == "v1.0.0"
    assert st["healthy"] is True
    assert st["last_good_tag"] == "v1.0.0"
    assert st["last_action"]["result"] == "success"
    assert [s["state"] for s in st["services"]] == ["running"]
    assert agent_root.health()["version"] == "v1.0.0"
    h = history(agent_root)
    assert h[0]["action"] == "deploy" and h[0]["result"] == "success" and h[0]["from_tag"] is None
    assert h[0]["backup"] and (agent_root.path / "backups" / h[0]["backup"]).exists()
