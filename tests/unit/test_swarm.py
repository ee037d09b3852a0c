"""server_agent/swarm.py: the stack file, the commands and the gate's verdict, as values."""

from __future__ import annotations

from typing import Any

from server_agent.compose import ComposeConfig
from server_agent.plan import ServicePlan
from server_agent.settings import AgentSettings
from server_agent.swarm import (
    NodeInfo,
    TaskInfo,
    judge_tasks,
    node_urls,
    service_rollback_argv,
    stack_deploy_argv,
    stack_document,
)

RAW: dict[str, Any] = {
    "name": "obs",
    "networks": {"default": {"name": "obs_default", "ipam": {}}},
    "services": {
        "observer": {
            "image": "reg:5000/obs/observer:v1.1.0", "command": None, "restart": "unless-stopped",
            "container_name": "qts-observer", "depends_on": {"db": {"condition": "service_started"}},
            "networks": {"default": None},
            "ports": [{"mode": "host", "target": 8000, "published": "18000", "protocol": "tcp"}],
            "volumes": [{"type": "bind", "source": "/srv/obs/data", "target": "/app/data/observer",
                         "bind": {"create_host_path": True}}],
            "labels": {"team": "md"},
            "deploy": {"replicas": 2, "resources": {}, "update_config": {"parallelism": 2, "monitor": "9s"}},
        },
        "db": {"image": "postgres:16", "networks": {"default": None}},
    },
}
PLAN = {"observer": ServicePlan("observer", "start-first", 2, None, True)}


def test_stack_document_labels_the_release_and_maps_the_strategy() -> None:
    doc = stack_document(ComposeConfig(RAW), ["observer"], tag="v1.1.0", release=PLAN, monitor_s=2)
    assert doc["version"] == "3.8" and "name" not in doc
    assert list(doc["services"]) == ["observer"]  # a step's file names only its services
    svc = doc["services"]["observer"]
    for key in ("container_name", "depends_on", "restart", "command"):
        assert key not in svc
    assert svc["networks"] == ["default"]
    assert svc["ports"][0]["published"] == 18000
    assert "bind" not in svc["volumes"][0]
    assert svc["labels"] == {"team": "md", "obsdeploy.release": "v1.1.0", "obsdeploy.role": "release"}
    deploy = svc["deploy"]
    assert deploy["labels"] == {"obsdeploy.role": "release", "obsdeploy.release": "v1.1.0"}
    assert "resources" not in deploy
    # The plan's order, the agent's own rollback (never Swarm's), the file's own monitor kept.
    assert deploy["update_config"] == {"parallelism": 2, "monitor": "9s", "order": "start-first",
                                       "failure_action": "pause"}
    assert deploy["rollback_config"]["order"] == "start-first"
    assert RAW["services"]["observer"]["deploy"]["update_config"] == {"parallelism": 2, "monitor": "9s"}


def test_stack_document_leaves_an_accessory_unlabelled_by_release_and_defaults_monitor() -> None:
    doc = stack_document(ComposeConfig(RAW), ["db"], tag=None, release={}, monitor_s=0.2)
    assert doc["services"]["db"]["deploy"] == {"labels": {"obsdeploy.role": "accessory"}}
    raw = {**RAW, "services": {"observer": {**RAW["services"]["observer"], "deploy": {}}}}
    doc = stack_document(ComposeConfig(raw), ["observer"], tag="v1", release=PLAN, monitor_s=3)
    assert doc["services"]["observer"]["deploy"]["update_config"]["monitor"] == "3s"


def test_commands_are_lists_with_registry_auth_and_digest_pinning() -> None:
    assert stack_deploy_argv("obs", "-") == ["docker", "stack", "deploy", "--compose-file", "-",
                                             "--with-registry-auth", "--resolve-image", "always", "obs"]
    assert service_rollback_argv("obs", "observer")[-1] == "obs_observer"


NODES = {"n1": NodeInfo("n1", "vm1", "10.0.0.2", "ready", "active"),
         "n2": NodeInfo("n2", "vm2", "10.0.0.3", "ready", "active")}


def task(tid: str, node: str, tag: str, state: str = "running", desired: str = "running",
         error: str = "", code: int | None = None) -> TaskInfo:
    return TaskInfo(tid, "observer", 1, node, state, desired, tag, error, code, None, frozenset())


def test_judge_tasks_passes_only_with_every_replica_of_the_tag_running_on_a_ready_node() -> None:
    both = [task("a", "n1", "v2"), task("b", "n2", "v2")]
    assert judge_tasks(both, {"observer": 2}, "v2", NODES, set()).kind == "pass"
    half = [task("a", "n1", "v2"), task("b", "n2", "v1")]
    assert judge_tasks(half, {"observer": 2}, "v2", NODES, set()).kind == "wait"
    down = {**NODES, "n2": NodeInfo("n2", "vm2", "10.0.0.3", "down", "active")}
    verdict = judge_tasks(both, {"observer": 2}, "v2", down, set())
    assert verdict.kind == "wait" and "1/2" in verdict.reason


def test_judge_tasks_fails_fast_on_a_failed_task_of_this_attempt_only() -> None:
    tasks = [task("a", "n1", "v2"), task("b", "n2", "v2", "failed", "shutdown", "task: non-zero exit (3)", 3)]
    verdict = judge_tasks(tasks, {"observer": 2}, "v2", NODES, set())
    assert verdict.kind == "fail"
    assert "vm2" in verdict.reason and "exit code 3" in verdict.reason
    # A failure from before the attempt (or of another release) is old news.
    assert judge_tasks(tasks, {"observer": 2}, "v2", NODES, {"b"}).kind == "wait"


def test_node_urls_probe_each_node_at_the_published_port() -> None:
    assert node_urls("http://127.0.0.1:18000/health?x=1", ["10.0.0.3", "10.0.0.2", "10.0.0.2"]) == [
        "http://10.0.0.2:18000/health?x=1", "http://10.0.0.3:18000/health?x=1"]


def test_engine_setting_is_validated() -> None:
    assert AgentSettings().engine == "compose"
    assert AgentSettings(engine="swarm").engine == "swarm"
    try:
        AgentSettings(engine="kubernetes")
    except Exception as exc:
        assert "engine" in str(exc)
    else:
        raise AssertionError("engine=kubernetes was accepted")


class PausingSwarm:
    """A stand-in for backends.swarm.Swarm whose update of `observer` pauses again and again."""

    def __init__(self) -> None:
        self.resumed = 0

    def paused(self, services: object) -> dict[str, str]:
        return {"observer": "update paused due to failure or early termination of task x1"}

    def resume(self, service: str) -> None:
        self.resumed += 1


def test_a_paused_update_is_resumed_a_few_times_then_fails_the_gate(tmp_path: Any) -> None:
    from server_agent.backends.swarm import RESUME_LIMIT, TaskObserver

    swarm = PausingSwarm()
    gate = TaskObserver(swarm, {"observer": 1}, "v2", set(), contract=(), since=0)  # type: ignore[arg-type]
    resumed: dict[str, int] = {}
    for _ in range(RESUME_LIMIT):
        assert gate._resume_paused(swarm.paused(()), resumed) is None
    reason = gate._resume_paused(swarm.paused(()), resumed)
    assert swarm.resumed == RESUME_LIMIT
    assert reason is not None and "paused the update of observer" in reason and "x1" in reason


class CrashBetweenReads(PausingSwarm):
    """The release's task crashes (and Swarm pauses the update for it) right after the
    observer's first read of the tasks: the pause is there from then on."""

    def __init__(self) -> None:
        super().__init__()
        self.crashed = False

    def nodes(self) -> dict[str, NodeInfo]:
        return NODES

    def tasks(self, services: object) -> list[TaskInfo]:
        before, self.crashed = self.crashed, True
        return [task("a", "n1", "v2", "failed", "shutdown", "task: non-zero exit (1)", 1)] if before \
            else [task("a", "n1", "v2", "starting")]

    def paused(self, services: object) -> dict[str, str]:
        return super().paused(services) if self.crashed else {}


def test_a_pause_the_release_caused_between_two_reads_fails_the_gate_and_is_never_resumed() -> None:
    """The pause is read before the tasks: when it is there, so is the task that caused it
    (once the pause was read after them, a crash in between was resumed as a lost node's)."""
    from server_agent.backends.swarm import TaskObserver

    swarm = CrashBetweenReads()
    gate = TaskObserver(swarm, {"observer": 1}, "v2", set(), contract=(), since=0)  # type: ignore[arg-type]
    assert gate.look().failure is None
    failure = gate.look().failure
    assert failure is not None and "non-zero exit" in failure, failure
    assert swarm.resumed == 0


def test_stuck_tasks_are_those_that_can_never_report_their_shutdown() -> None:
    from server_agent.swarm import stuck_tasks

    down = {**NODES, "n2": NodeInfo("n2", "vm2", "10.0.0.3", "down", "active")}
    pending = task("p", "", "v2", "pending", "shutdown")
    on_dead_node = task("d", "n2", "v1", "running", "shutdown")
    stopping = task("s", "n1", "v1", "running", "shutdown")  # a ready node will report it
    done = task("x", "", "v2", "shutdown", "shutdown")
    wanted = task("w", "", "v2", "pending", "running")  # waits for a port: Swarm's own business
    assert stuck_tasks([pending, on_dead_node, stopping, done, wanted], down) == [pending, on_dead_node]


class StuckSwarm(PausingSwarm):
    def __init__(self) -> None:
        super().__init__()
        self.forced: list[str] = []

    def force_update(self, service: str) -> None:
        self.forced.append(service)


def test_a_stuck_update_is_forced_once_per_stuck_task(tmp_path: Any, monkeypatch: Any) -> None:
    from server_agent.backends import swarm as swarm_backend

    monkeypatch.setattr(swarm_backend, "STUCK_S", 0.0)
    swarm = StuckSwarm()
    gate = swarm_backend.TaskObserver(swarm, {"observer": 1}, "v2", set(), contract=(), since=0)  # type: ignore[arg-type]
    down = {**NODES, "n2": NodeInfo("n2", "vm2", "10.0.0.3", "down", "active")}
    tasks = [task("d", "n2", "v1", "running", "shutdown"), task("a", "n1", "v2")]
    since: dict[str, float] = {}
    freed: dict[str, int] = {}
    assert gate._unstick(tasks, down, since, freed) is None
    assert swarm.forced == ["observer"]
    # The task stays on the dead node: it does not force the service again.
    assert gate._unstick(tasks, down, since, freed) is None
    assert swarm.forced == ["observer"]


def test_a_job_is_a_one_shot_service_on_a_manager() -> None:
    from server_agent.swarm import job_document

    doc = job_document(ComposeConfig(RAW), "observer", "v3")
    deploy = doc["services"]["observer"]["deploy"]
    assert deploy["replicas"] == 1 and deploy["restart_policy"] == {"condition": "none"}
    assert deploy["placement"]["constraints"] == ["node.role == manager"]
    assert deploy["labels"]["obsdeploy.role"] == "job" and deploy["labels"]["obsdeploy.release"] == "v3"
    assert "healthcheck" not in doc["services"]["observer"]
