"""Docker Swarm as the agent's engine (SPEC §17): plain values, no Docker calls.

The compose file runs as a stack (stack name = project name). A step of the RolloutPlan is one
`docker stack deploy` of a stack file that holds only that step's services: a stack deploy
leaves the services a file does not name alone (no --prune), so steps run one at a time in the
plan's order, and accessories that run are never in a file at all. Each release service gets:

    deploy.labels / labels      obsdeploy.release=TAG (service and containers: release identity)
                                and obsdeploy.role (status reads roles without the compose file)
    deploy.update_config        order = the plan's strategy, failure_action = pause (the agent
                                rolls back and reports it; Swarm's own rollback ends in exit 0),
                                monitor = the compose file's, else stabilize_seconds
    deploy.rollback_config      the same order

`judge_tasks` is the gate's verdict on a snapshot of the tasks; swarm_deploy.py runs it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .compose import RELEASE_LABEL, ComposeConfig
from .engine import ROLE_LABEL
from .plan import ServicePlan

STACK_FILE_VERSION = "3.8"  # what `docker stack deploy` of Docker 20.10+ reads
STACK_LABEL = "com.docker.stack.namespace"
# Compose-only keys a stack file refuses or Swarm ignores (the stack deploy warns about them).
COMPOSE_ONLY_KEYS = ("container_name", "depends_on", "restart", "pull_policy", "profiles")
FAILED_STATES = ("failed", "rejected")


def service_name(stack: str, service: str) -> str:
    return f"{stack}_{service}"


def _clean(value: Any) -> Any:
    """Drop the nulls `compose config` writes (command: null, networks: {default: null}...),
    which the stack file's schema refuses."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _service_document(svc: dict[str, Any]) -> dict[str, Any]:
    out = _clean({k: v for k, v in svc.items() if k not in COMPOSE_ONLY_KEYS})
    nets = svc.get("networks")
    if isinstance(nets, dict):  # {default: null} -> [default]; keep the ones with options
        out["networks"] = (sorted(nets) if all(v is None for v in nets.values())
                           else {k: _clean(v) or {} for k, v in nets.items()})
    for port in out.get("ports", []):
        if isinstance(port, dict) and "published" in port:
            port["published"] = int(port["published"])
    for vol in out.get("volumes", []):
        if isinstance(vol, dict):
            for key in ("bind", "volume"):
                opts = vol.get(key)
                if isinstance(opts, dict):
                    opts.pop("create_host_path", None)  # compose-spec only
                    if not opts:
                        del vol[key]
    deploy = out.get("deploy") or {}
    for key in ("resources", "placement"):
        if deploy.get(key) == {}:
            del deploy[key]
    if deploy:
        out["deploy"] = deploy
    return out


def stack_document(config: ComposeConfig, services: Iterable[str], *, tag: str | None,
                   release: dict[str, ServicePlan], monitor_s: float) -> dict[str, Any]:
    """The stack file for deploying `services` of `config`: the release services among them
    labelled with `tag` and given the plan's update order; accessories as they are written."""
    raw = copy.deepcopy(config.raw)
    doc: dict[str, Any] = {"version": STACK_FILE_VERSION, "services": {}}
    for key in ("networks", "volumes", "configs", "secrets"):
        if raw.get(key):
            doc[key] = {k: _clean(v) or {} for k, v in raw[key].items()}
    for name in services:
        svc = _service_document(raw["services"][name])
        deploy = svc.setdefault("deploy", {})
        plan = release.get(name)
        role = "release" if plan is not None else "accessory"
        deploy["labels"] = {**_labels(deploy.get("labels")), ROLE_LABEL: role}
        if plan is not None:
            assert tag is not None
            deploy["labels"][RELEASE_LABEL] = tag
            svc["labels"] = {**_labels(svc.get("labels")), RELEASE_LABEL: tag, ROLE_LABEL: role}
            update = dict(deploy.get("update_config") or {})
            update.update(order=plan.strategy, failure_action="pause")
            update.setdefault("monitor", f"{max(monitor_s, 0.5):g}s")
            deploy["update_config"] = update
            deploy["rollback_config"] = {**(deploy.get("rollback_config") or {}),
                                         "order": plan.strategy, "failure_action": "pause"}
        doc["services"][name] = svc
    return doc


def job_document(config: ComposeConfig, job: str, tag: str) -> dict[str, Any]:
    """A job (SPEC §14) as a one-shot service of the stack: one task, never restarted, on a
    manager, on the stack's networks with the stack's environment. Swarm of Docker 20.10 has
    no job mode."""
    doc = stack_document(config, [job], tag=None, release={}, monitor_s=0)
    svc = doc["services"][job]
    svc["labels"] = {**_labels(svc.get("labels")), RELEASE_LABEL: tag, ROLE_LABEL: "job"}
    deploy = svc["deploy"]
    deploy["labels"].update({RELEASE_LABEL: tag, ROLE_LABEL: "job"})
    deploy.update(mode="replicated", replicas=1, restart_policy={"condition": "none"})
    # On the manager: the agent reads its log there, and checks the bind mounts there.
    placement = deploy.setdefault("placement", {})
    placement["constraints"] = [*placement.get("constraints", []), "node.role == manager"]
    svc.pop("healthcheck", None)
    return doc


def _labels(labels: Any) -> dict[str, str]:
    if isinstance(labels, list):  # ["a=b", ...]
        return {str(x).partition("=")[0]: str(x).partition("=")[2] for x in labels}
    return {str(k): str(v) for k, v in (labels or {}).items()}


# --- commands (run by backends/swarm.py through runner.run) -----------------------------------
def stack_deploy_argv(stack: str, stack_file: str) -> list[str]:
    # --resolve-image always: the manager pins the image's digest in the service, so every
    # node runs the same bytes; --with-registry-auth: the nodes pull with the manager's login.
    return ["docker", "stack", "deploy", "--compose-file", stack_file, "--with-registry-auth",
            "--resolve-image", "always", stack]


def service_rollback_argv(stack: str, service: str) -> list[str]:
    """Swarm's previous spec of the service: exactly what ran before this attempt's update."""
    return ["docker", "service", "rollback", "--detach", "--quiet", service_name(stack, service)]


def service_resume_argv(stack: str, service: str) -> list[str]:
    """Resume an update Swarm paused (Docker's documented way: update the service again)."""
    return ["docker", "service", "update", "--detach", "--quiet", service_name(stack, service)]


def service_force_argv(stack: str, service: str) -> list[str]:
    """A new update of the service with its current spec: every task re-created. It frees an
    update or rollback that waits for a task that will never report (see stuck_tasks)."""
    return ["docker", "service", "update", "--force", "--detach", "--quiet", service_name(stack, service)]


def service_logs_argv(stack: str, service: str, lines: int) -> list[str]:
    return ["docker", "service", "logs", "--raw", "--no-task-ids", "--tail", str(lines),
            service_name(stack, service)]


def service_logs_since_argv(stack: str, service: str, since: float) -> list[str]:
    """The service's log from Unix time `since` (whole seconds, rounded down)."""
    import datetime

    at = datetime.datetime.fromtimestamp(int(since), datetime.timezone.utc)
    return ["docker", "service", "logs", "--raw", "--no-task-ids", "--since",
            at.strftime("%Y-%m-%dT%H:%M:%SZ"), service_name(stack, service)]


def service_rm_argv(stack: str, services: Iterable[str]) -> list[str]:
    return ["docker", "service", "rm", *(service_name(stack, s) for s in services)]


# --- tasks and the gate's verdict -----------------------------------------------------------
@dataclass(frozen=True)
class NodeInfo:
    id: str
    hostname: str
    address: str
    state: str  # ready | down | unknown | disconnected
    availability: str  # active | pause | drain

    @classmethod
    def from_api(cls, n: dict[str, Any]) -> NodeInfo:
        status = n.get("Status") or {}
        return cls(id=n["ID"], hostname=str((n.get("Description") or {}).get("Hostname", "")),
                   address=str(status.get("Addr", "")), state=str(status.get("State", "unknown")),
                   availability=str((n.get("Spec") or {}).get("Availability", "active")))


@dataclass(frozen=True)
class TaskInfo:
    id: str
    service: str  # the compose service name (without the stack prefix)
    slot: int | None
    node_id: str
    state: str  # new ... running, complete, failed, shutdown, rejected, orphaned
    desired: str  # running | shutdown | ...
    tag: str | None
    error: str
    exit_code: int | None
    container_id: str | None
    env_names: frozenset[str]

    @classmethod
    def from_api(cls, t: dict[str, Any], service: str) -> TaskInfo:
        status = t.get("Status") or {}
        cs = status.get("ContainerStatus") or {}
        spec = ((t.get("Spec") or {}).get("ContainerSpec")) or {}
        return cls(
            id=t["ID"], service=service, slot=t.get("Slot"), node_id=str(t.get("NodeID") or ""),
            state=str(status.get("State", "")), desired=str(t.get("DesiredState", "")),
            tag=(spec.get("Labels") or {}).get(RELEASE_LABEL), error=str(status.get("Err") or ""),
            exit_code=cs.get("ExitCode"), container_id=cs.get("ContainerID"),
            env_names=frozenset(str(e).split("=", 1)[0] for e in spec.get("Env") or []),
        )


@dataclass(frozen=True)
class TasksJudged:
    kind: str  # pass | wait | fail
    reason: str


def judge_tasks(tasks: list[TaskInfo], replicas: dict[str, int], tag: str | None,
                nodes: dict[str, NodeInfo], seen_before: set[str]) -> TasksJudged:
    """Every release service runs `replicas` tasks of `tag` (None: of any release), each
    running on a ready node; a task of this attempt (not in `seen_before`) that failed or was
    rejected fails the release at once (SPEC §6 fail fast). A task on a node that went down
    is not a verdict on the release: Swarm reschedules it, and the gate waits for that."""
    for t in tasks:
        if t.id in seen_before or (tag is not None and t.tag != tag):
            continue
        if t.state in FAILED_STATES:
            node = nodes.get(t.node_id)
            where = f" on node {node.hostname or node.id[:12]} ({node.address})" if node else ""
            code = f" (exit code {t.exit_code})" if t.exit_code else ""
            return TasksJudged("fail", f"task {t.service}.{t.slot or t.id[:12]}{where} {t.state}"
                                   f"{code}: {t.error or 'no error given'}")
    waiting = []
    for service, want in sorted(replicas.items()):
        mine = [t for t in tasks if t.service == service and t.desired == "running"]
        good = [t for t in mine if t.state == "running" and (tag is None or t.tag == tag)
                and nodes.get(t.node_id, _GONE).state == "ready"]
        if len(good) != want or len(mine) != want:
            states = ", ".join(sorted(
                f"{t.tag or '?'} {t.state}@{nodes.get(t.node_id, _GONE).hostname or t.node_id[:12] or 'unassigned'}"
                for t in mine)) or "none"
            waiting.append(f"{service}: {len(good)}/{want} running {tag or ''} ({states})".replace("  ", " "))
    if waiting:
        return TasksJudged("wait", "; ".join(waiting))
    return TasksJudged("pass", "every task runs")


TERMINAL_STATES = ("complete", "failed", "shutdown", "rejected", "orphaned", "remove")


def stuck_tasks(tasks: list[TaskInfo], nodes: dict[str, NodeInfo]) -> list[TaskInfo]:
    """Tasks Swarm wants shut down that can never say they are: never placed on a node (still
    pending, e.g. for a host port) or on a node that is not ready (went down). A stop-first
    update or rollback waits for them before starting the slot's next task, for ever (Docker
    20.10): the gate forces a fresh update of the service when they stay (SwarmGate)."""
    return [t for t in tasks
            if t.desired in ("shutdown", "remove") and t.state not in TERMINAL_STATES
            and (not t.node_id or nodes.get(t.node_id, _GONE).state != "ready")]


_GONE = NodeInfo(id="", hostname="", address="", state="unknown", availability="")


def node_urls(health_url: str, addresses: Iterable[str]) -> list[str]:
    """health_url once per node that runs a task of the step: its host replaced by the node's
    address (the port is published on every node that runs a task, in host mode, or on all of
    them through the routing mesh); each node's task answers for itself."""
    parts = urlsplit(health_url)
    port = f":{parts.port}" if parts.port else ""
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return [urlunsplit(parts._replace(netloc=f"{userinfo}{addr}{port}"))
            for addr in sorted(set(addresses))]
