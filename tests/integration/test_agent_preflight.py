"""Preflight (SPEC §5, §7.2): every problem listed together, exit 10, nothing changed."""

from __future__ import annotations

import json
import os

import pytest

from tests.parts import AgentRootDir

pytestmark = pytest.mark.integration


def check(root: AgentRootDir, **env: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    res = root.agent("check", "--json", env=root.env(**env))
    return res.returncode, json.loads(res.stdout)


def test_clean_root_passes_check_creates_nothing_deploy_creates_the_host_dirs(agent_root: AgentRootDir) -> None:
    res = agent_root.agent("check")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "a deploy will create the missing host directory" in res.stdout
    for d in ("data", "logs", "config", "state"):
        assert not (agent_root.path / d).exists()
    assert agent_root.agent("deploy", "v1.0.0").returncode == 0
    for d in ("data", "logs", "config"):
        assert (agent_root.path / d).is_dir()
    code, doc = check(agent_root)
    assert (code, doc) == (0, {"ok": True, "problems": [], "notes": []})


def test_all_problems_reported_together_and_running_release_untouched(agent_root: AgentRootDir) -> None:
    assert agent_root.agent("deploy", "v1.0.0").returncode == 0
    history_before = (agent_root.path / "state" / "history.jsonl").read_bytes()
    cfg_path = agent_root.path / "deployment_config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["environment"]["PYTHONPATH"]  # missing required env
    cfg["environment"]["OBSERVER_STANDALONE"] = "1"  # a non-standard alias
    cfg_path.write_text(json.dumps(cfg))
    (agent_root.path / ".env").chmod(0o644)  # secrets readable by all
    compose = agent_root.path / "docker-compose.server.yml"
    compose.write_text(compose.read_text().replace("./logs:/app/logs", "./logs:/app/log"))

    code, doc = check(agent_root)
    assert code == 10 and doc["ok"] is False
    codes = sorted(p["code"] for p in doc["problems"])
    assert codes == ["env.alias", "env.missing", "env_file.mode", "mounts.mismatch"], doc
    messages = " | ".join(p["message"] for p in doc["problems"])
    assert "PYTHONPATH" in messages and "rename it to QTS_OBSERVER_STANDALONE" in messages
    assert "chmod 600" in messages and "/app/logs" in messages

    res = agent_root.agent("deploy", "v1.1.0")
    assert res.returncode == 10, res.stdout + res.stderr
    assert "4 problem(s)" in res.stderr and "nothing was changed" in res.stderr
    assert agent_root.health()["version"] == "v1.0.0"
    assert agent_root.last_good() == "v1.0.0"
    assert (agent_root.path / "state" / "history.jsonl").read_bytes() == history_before


def test_missing_secret_and_bad_compose(agent_root: AgentRootDir) -> None:
    (agent_root.path / ".env").write_text("KIS_API_KEY=only-the-key-1234\n")
    (agent_root.path / "docker-compose.server.yml").write_text("services: [not, a, mapping\n")
    code, doc = check(agent_root)
    assert code == 10
    codes = sorted(p["code"] for p in doc["problems"])
    assert codes == ["compose.invalid", "compose.no_image_tag", "env.secret_missing"], doc
    assert "KIS_API_SECRET" in json.dumps(doc)


def test_bad_configuration_names_the_field(agent_root: AgentRootDir) -> None:
    cfg_path = agent_root.path / "deployment_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["agent"]["health_timeout"] = "soon"
    cfg["agent"]["backup_kept"] = 3
    cfg_path.write_text(json.dumps(cfg))
    code, doc = check(agent_root)
    assert code == 10
    msg = doc["problems"][0]["message"]
    assert "agent.health_timeout" in msg and "agent.backup_kept: unknown key" in msg
    res = agent_root.agent("deploy", "v1.0.0")
    assert res.returncode == 10
    # status and history do not validate the settings: they still answer (README).
    st = agent_root.agent("status", "--json")
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["current_tag"] is None
    assert agent_root.agent("history", "--json").returncode == 0
    # An env override wins over the file and is named as the culprit when bad.
    cfg["agent"] = {k: v for k, v in cfg["agent"].items() if k not in ("health_timeout", "backup_kept")}
    cfg_path.write_text(json.dumps(cfg))
    code, doc = check(agent_root, OBS_AGENT_HEALTH_TIMEOUT="-1")
    assert code == 10 and "env OBS_AGENT_HEALTH_TIMEOUT" in doc["problems"][0]["message"]
    code, doc = check(agent_root, OBS_AGENT_HEALTH_TIMEOUT="30")
    assert code == 0, doc


def test_config_that_is_not_json(agent_root: AgentRootDir) -> None:
    (agent_root.path / "deployment_config.json").write_text("{ not json")
    res = agent_root.agent("deploy", "v1.0.0")
    assert res.returncode == 10
    assert "is not valid JSON" in res.stderr and "Traceback" not in res.stderr


def test_free_disk_threshold(agent_root: AgentRootDir) -> None:
    code, doc = check(agent_root, OBS_AGENT_MIN_FREE_MB=str(10**9))
    assert code == 10
    assert {p["code"] for p in doc["problems"]} >= {"disk.root"}


def test_docker_unreachable_is_a_preflight_problem(agent_root: AgentRootDir) -> None:
    env = agent_root.env(DOCKER_HOST="unix:///nonexistent/docker.sock")
    res = agent_root.agent("deploy", "v1.0.0", env=env)
    assert res.returncode == 10, res.stderr
    assert "docker.unreachable" in res.stderr
    assert os.path.exists(agent_root.path / "state") and agent_root.last_good() is None
    # The agent works on its own server's engine; an ssh:// engine is refused, and says why.
    res = agent_root.agent("check", env=agent_root.env(DOCKER_HOST="ssh://root@elsewhere"))
    assert res.returncode == 10 and "DOCKER_HOST is an ssh:// URL" in res.stdout + res.stderr
