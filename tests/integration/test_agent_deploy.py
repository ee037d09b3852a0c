"""obs-agent deploy / rollback against the real engine, registry and compose (SPEC §6-§8)."""

from __future__ import annotations

import json
import time

import pytest

from tests.parts import AgentRootDir, history, status

pytestmark = pytest.mark.integration


def deploy(root: AgentRootDir, tag: str):  # type: ignore[no-untyped-def]
    return root.agent("deploy", tag)


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
    # On trial the release ran without its restart policy; once it passed, compose's is back.
    assert restart_policies(agent_root) == {"running": ["unless-stopped"]}


def restart_policies(root: AgentRootDir) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for c in project_containers(root):
        out.setdefault(c.status, []).append(c.attrs["HostConfig"]["RestartPolicy"]["Name"])
    return out


def test_broken_release_is_rolled_back_to_the_last_good(agent_root: AgentRootDir) -> None:
    assert deploy(agent_root, "v1.0.0").returncode == 0
    assert deploy(agent_root, "v1.1.0").returncode == 0
    res = deploy(agent_root, "v2.0.0-error")
    assert res.returncode == 20, res.stdout + res.stderr
    assert "rolled back to v1.1.0" in res.stdout
    assert agent_root.health()["version"] == "v1.1.0"
    assert agent_root.last_good() == "v1.1.0"
    st = status(agent_root)
    assert st["current_tag"] == "v1.1.0" and st["healthy"] is True
    rec = history(agent_root)[0]
    assert rec["result"] == "rolled_back" and rec["tag"] == "v2.0.0-error"
    assert rec["from_tag"] == "v1.1.0"
    assert "health_url answered a failure 3 times" in rec["failure"]["reason"]
    tails = "".join(rec["failure"]["log_tail"].values())
    assert "observer v2.0.0-error starting" in tails


def test_crash_at_start_fails_fast(agent_root: AgentRootDir) -> None:
    assert deploy(agent_root, "v1.0.0").returncode == 0
    t = time.monotonic()
    res = agent_root.agent("deploy", "--json", "v2.0.0-crash")
    took = time.monotonic() - t
    assert res.returncode == 20, res.stdout + res.stderr
    # --json: the outcome alone on stdout, what obsdeploy reports from.
    outcome = json.loads(res.stdout)
    assert outcome["exit_code"] == 20 and outcome["result"] == "rolled_back"
    assert outcome["tag"] == "v2.0.0-crash" and outcome["from_tag"] == "v1.0.0"
    assert outcome["current_tag"] == "v1.0.0"
    assert "rolled back to v1.0.0" in outcome["message"]
    rec = history(agent_root)[0]
    assert "exited with code 3" in rec["failure"]["reason"]
    assert "fixture crash" in "".join(rec["failure"]["log_tail"].values())
    # health_timeout is 20 s: failing fast means the gate did not wait it out.
    assert rec["steps"]["gate"] < 5, rec["steps"]
    assert took < 15
    assert agent_root.health()["version"] == "v1.0.0"


def project_containers(root: AgentRootDir) -> list:  # type: ignore[type-arg]
    import docker

    label = f"com.docker.compose.project={root.project}"
    return docker.from_env().containers.list(all=True, filters={"label": label})  # type: ignore[no-any-return]


def test_failed_redeploy_of_the_same_tag_brings_back_the_kept_container(
        agent_root: AgentRootDir, docker_client, images: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """A tag pushed over in the registry (obsdeploy refuses that, another tool may not) and
    deployed again: the way back is the same tag, so the kept container must start again,
    never the failed one, though both carry that tag."""
    tag = "v3.0.0-repushed"  # this test's own tag in the session's registry
    repository = images["v1.0.0"].rsplit(":", 1)[0]

    def push(source: str) -> None:
        docker_client.images.get(source).tag(repository, tag)
        for line in docker_client.api.push(repository, tag=tag, stream=True, decode=True):
            assert "error" not in line, line

    push(images["v1.0.0"])
    assert deploy(agent_root, tag).returncode == 0
    (kept,) = project_containers(agent_root)
    push(images["v2.0.0-crash"])
    res = agent_root.agent("deploy", "--json", tag)
    assert res.returncode == 20, res.stdout + res.stderr
    outcome = json.loads(res.stdout)
    assert outcome["from_tag"] == tag and outcome["current_tag"] == tag
    # The container that runs is the one kept from before, with the good image's content.
    (running,) = project_containers(agent_root)
    assert running.id == kept.id and running.status == "running"
    assert agent_root.health()["version"] == "v1.0.0"  # the version baked into that image
    assert agent_root.last_good() == tag
    rec = history(agent_root)[0]
    assert rec["result"] == "rolled_back" and "exited with code 3" in rec["failure"]["reason"]
    assert restart_policies(agent_root) == {"running": ["unless-stopped"]}


def test_first_ever_deploy_of_a_broken_tag_leaves_nothing_running(agent_root: AgentRootDir) -> None:
    res = deploy(agent_root, "v2.0.0-error")
    assert res.returncode == 21, res.stdout + res.stderr
    assert agent_root.last_good() is None
    st = status(agent_root)
    assert st["current_tag"] is None and st["healthy"] is False
    assert st["services"] == []
    assert history(agent_root)[0]["result"] == "failed"


def test_slow_release_waits_for_initializing(agent_root: AgentRootDir) -> None:
    res = deploy(agent_root, "v2.0.0-slow")
    assert res.returncode == 0, res.stdout + res.stderr
    assert history(agent_root)[0]["steps"]["gate"] >= 3


def test_wrong_archive_path_fails_verify_paths(agent_root: AgentRootDir) -> None:
    # The gate waits for verify.paths until health_timeout: keep it short here.
    res = agent_root.agent("deploy", "v2.0.0-wrongpath", env=agent_root.env(OBS_AGENT_HEALTH_TIMEOUT="4"))
    assert res.returncode == 21, res.stdout + res.stderr
    assert "verify.paths config/observer" in history(agent_root)[0]["failure"]["reason"]


def test_missing_tag_in_registry_exits_11_and_keeps_the_release(agent_root: AgentRootDir) -> None:
    assert deploy(agent_root, "v1.0.0").returncode == 0
    res = deploy(agent_root, "v9.9.9")
    assert res.returncode == 11, res.stdout + res.stderr
    assert "cannot pull" in res.stderr and "v9.9.9" in res.stderr
    assert agent_root.health()["version"] == "v1.0.0"
    assert agent_root.last_good() == "v1.0.0"
    assert status(agent_root)["last_action"]["tag"] == "v1.0.0"


def test_manual_rollback_returns_to_the_previous_good_release(agent_root: AgentRootDir) -> None:
    assert deploy(agent_root, "v1.0.0").returncode == 0
    assert deploy(agent_root, "v1.1.0").returncode == 0
    res = agent_root.agent("rollback")
    assert res.returncode == 0, res.stdout + res.stderr
    assert agent_root.health()["version"] == "v1.0.0"
    assert agent_root.last_good() == "v1.0.0"
    rec = history(agent_root)[0]
    assert rec["action"] == "rollback" and rec["tag"] == "v1.0.0" and rec["from_tag"] == "v1.1.0"
    # And forward again to a named tag.
    res = agent_root.agent("rollback", "v1.1.0")
    assert res.returncode == 0, res.stderr
    assert agent_root.health()["version"] == "v1.1.0"


def test_rollback_without_an_earlier_release_is_refused(agent_root: AgentRootDir) -> None:
    assert deploy(agent_root, "v1.0.0").returncode == 0
    res = agent_root.agent("rollback")
    assert res.returncode == 2
    assert "no earlier good release" in res.stderr
    assert agent_root.health()["version"] == "v1.0.0"


def test_invalid_tag_is_refused_with_the_expected_form(agent_root: AgentRootDir) -> None:
    for bad in ("1.2.3", "v1.2", "v1.2.3;rm -rf /", "$(id)", "../v1", "v" + "1" * 10000):
        res = agent_root.agent("deploy", bad)
        assert res.returncode == 2, bad
        assert "vMAJOR.MINOR.PATCH" in res.stderr
    assert not (agent_root.path / "state" / "history.jsonl").exists()
