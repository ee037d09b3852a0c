"""SwarmBackend: a release as the services of a Docker Swarm stack, deployed through a manager.

    preflight    this node is a manager; the plan's accessories are the stack's services (a
                 missing one is deployed first; a running one is never in a stack file)
    images       every release image resolves in its registry through the manager (exit 11)
    switch       one `docker stack deploy` of the step's services; the backup is captured just
                 before the step that carries the contract is deployed (Swarm replaces the old
                 tasks one by one, out of the agent's hands)
    observe      every task of the step's services on every node (TaskObserver, for the gate)
    walk back    switched services go back with `docker service rollback` (Swarm's previous
                 spec: exactly what ran before this attempt); services new in it are removed
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import IO, TYPE_CHECKING, Any

from ..common.errors import ImageError, UsageError
from ..common.redact import REDACTOR
from ..common.runner import run
from ..engine import ROLE_LABEL, Engine, EngineHTTPError, EngineUnreachable, ExecResult
from ..gate.loop import Look, Observer, Unit, Verdict
from ..gate.probe import url_port
from ..plan import PreflightReport, RolloutPlan, ServicePlan, Step
from ..swarm import (
    RELEASE_LABEL,
    STACK_LABEL,
    NodeInfo,
    TaskInfo,
    job_document,
    judge_tasks,
    node_urls,
    service_force_argv,
    service_logs_argv,
    service_logs_since_argv,
    service_resume_argv,
    service_rm_argv,
    service_rollback_argv,
    stack_deploy_argv,
    stack_document,
    stuck_tasks,
)
from .base import Capture, PreSwitchFailure, Release, Switched, WalkedBack

if TYPE_CHECKING:
    from ..root import AgentRoot

log = logging.getLogger("obs.swarm")

POLL_S = 0.25
RESUME_LIMIT = 3  # paused or stuck updates freed per service and gate (see TaskObserver._unstick)
STUCK_S = 3.0  # how long a task that cannot report its shutdown may hold an update up
LOG_TAIL_LINES = 50


class Swarm:
    """What the agent reads from and does to the swarm, through the manager's engine."""

    def __init__(self, engine: Engine, stack: str) -> None:
        self.engine = engine
        self.stack = stack

    @property
    def api(self) -> Any:
        return self.engine.client.api

    def is_manager(self) -> bool:
        return bool((self.api.info().get("Swarm") or {}).get("ControlAvailable"))

    def nodes(self) -> dict[str, NodeInfo]:
        return {n["ID"]: NodeInfo.from_api(n) for n in self.api.nodes()}

    def services(self) -> dict[str, dict[str, Any]]:
        """The stack's services by compose name."""
        prefix = f"{self.stack}_"
        return {s["Spec"]["Name"][len(prefix):]: s
                for s in self.api.services(filters={"label": f"{STACK_LABEL}={self.stack}"})
                if s["Spec"]["Name"].startswith(prefix)}

    def spec(self, service: str) -> dict[str, Any] | None:
        """The service's spec (None: no such service). Not its version index: Swarm bumps that
        for its own bookkeeping too (an update's or rollback's status), not only for a new spec."""
        svc = self.services().get(service)
        return None if svc is None else dict(svc["Spec"])

    def tasks(self, services: Collection[str]) -> list[TaskInfo]:
        by_id = {s["ID"]: name for name, s in self.services().items() if name in services}
        if not by_id:
            return []
        raw = self.api.tasks(filters={"label": f"{STACK_LABEL}={self.stack}"})
        return [TaskInfo.from_api(t, by_id[t["ServiceID"]]) for t in raw if t.get("ServiceID") in by_id]

    def resolves(self, image: str) -> str | None:
        """None when the registry knows `image` (asked through the manager, with its login
        and registry settings); else why not."""
        try:
            self.api.inspect_distribution(image)
            return None
        except Exception as exc:  # the registry's or the engine's refusal, as the operator sees it
            return f"{type(exc).__name__}: {REDACTOR(str(exc))[:300]}"

    def deploy(self, root: AgentRoot, doc: dict[str, Any], tag: str) -> None:
        # The stack file goes through stdin: it holds the environment's values, secrets
        # included, which must not land on disk.
        run(stack_deploy_argv(self.stack, "-"), env=root.compose_env(tag), cwd=root.path,
            input=json.dumps(doc))

    def paused(self, services: Collection[str]) -> dict[str, str]:
        """The services whose update Swarm paused, with Swarm's message."""
        return {name: str((s.get("UpdateStatus") or {}).get("Message", ""))
                for name, s in self.services().items()
                if name in services and (s.get("UpdateStatus") or {}).get("State") == "paused"}

    def force_update(self, service: str) -> None:
        run(service_force_argv(self.stack, service))

    def resume(self, service: str) -> None:
        run(service_resume_argv(self.stack, service))

    def rollback(self, service: str) -> None:
        run(service_rollback_argv(self.stack, service))

    def logs_tail(self, service: str, lines: int) -> str:
        # Swarm's log broker may not have the task's stream yet ("incomplete log stream"):
        # a few tries.
        text = ""
        for _ in range(5):
            res = run(service_logs_argv(self.stack, service, lines), check=False, timeout=30)
            text = res.stdout + res.stderr
            if "incomplete log stream" not in text:
                break
            time.sleep(1)
        return REDACTOR("\n".join(text.splitlines()[-lines:]))

    def logs_since(self, service: str, since: float) -> str:
        res = run(service_logs_since_argv(self.stack, service, since), check=False, timeout=30)
        return res.stdout + res.stderr

    def remove(self, services: list[str]) -> None:
        if services:
            run(service_rm_argv(self.stack, services), check=False)


@dataclass
class SwarmSwitch(Switched):
    """A swarm step deployed: the services' specs before it, and the tasks that ran then."""

    before: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # task ids from before the step
    # The step's services health_url is asked of: those that publish its port (the routing
    # mesh answers it at every node) and the contract's. A service that publishes nothing is
    # reached only through the stack's overlay network, which the manager is not on.
    asked: set[str] = field(default_factory=set)

    @property
    def replicas(self) -> dict[str, int]:
        return {s.name: s.replicas for s in self.step.services}


class SwarmBackend:
    name = "swarm"

    def __init__(self, root: AgentRoot, engine: Engine) -> None:
        self.root = root
        self.engine = engine
        self.swarm = Swarm(engine, root.project)

    # --- before anything is touched --------------------------------------------------------
    def preflight(self, report: PreflightReport) -> None:
        """The engine is a manager; the plan's accessories are judged by the stack's services."""
        try:
            manager = self.swarm.is_manager()
            existing = self.swarm.services() if manager else {}
        except Exception as exc:
            report.add("swarm.unreachable", f"cannot ask the engine about its swarm ({type(exc).__name__}: "
                                            f"{REDACTOR(str(exc))[:200]})")
            return
        if not manager:
            report.add("swarm.not_manager", "agent.engine is swarm but this node's engine is not a swarm "
                                            "manager: run the agent on a manager (docker node ls shows "
                                            "them), or run docker swarm init")
        if self.root.settings.proxy is not None:
            report.add("swarm.proxy", "agent.proxy is not used on a swarm: Swarm itself replaces the "
                                      "tasks; give the service deploy.update_config.order: "
                                      "start-first behind the routing mesh, and remove agent.proxy")
        if report.plan is not None:
            report.plan = replace(report.plan, accessories=tuple(
                replace(a, action="leave" if a.name in existing else "start", definition_changed=False)
                for a in report.plan.accessories))

    def running_tag(self) -> str | None:
        tags = {(s["Spec"].get("Labels") or {}).get(RELEASE_LABEL)
                for s in self.swarm.services().values()
                if (s["Spec"].get("Labels") or {}).get(ROLE_LABEL) == "release"}
        return tags.pop() if len(tags) == 1 else None

    def recover(self, interrupted: dict[str, Any] | None) -> None:
        """Nothing is set aside on a swarm: Swarm keeps each service's previous spec itself."""

    def ensure_images(self, plan: RolloutPlan, release: Release, *, refresh: bool) -> None:
        """The nodes pull for themselves; the manager resolves every release image first."""
        released = set(plan.jobs) | {s.name for s in plan.release_services}
        for image in sorted({release.config.service(s).image for s in released}):
            why = self.swarm.resolves(image)
            if why is not None:
                raise ImageError(f"{image} does not resolve in its registry ({why})",
                                 hint="push the release first (obsdeploy release), and log the "
                                      "manager in to the registry (docker login)")

    def start_accessories(self, names: list[str], release: Release,
                          gate: Callable[[Observer], Verdict]) -> None:
        if not names:
            return
        log.info("deploying accessories: %s", ", ".join(names))
        seen = {t.id for t in self.swarm.tasks(names)}
        self.swarm.deploy(release.root, stack_document(release.config, names, tag=None, release={},
                                                       monitor_s=self.root.settings.stabilize_seconds),
                          release.tag)
        replicas = {n: release.config.service(n).replicas for n in names}
        verdict = gate(TaskObserver(self.swarm, replicas, None, seen, contract=set(), since=time.time()))
        if not verdict.healthy:
            raise PreSwitchFailure(f"accessory {', '.join(names)} did not start: {verdict.reason}",
                                   {"accessories": names})

    def run_job(self, job: str, release: Release) -> None:
        """The job once, with the new tag, as a one-shot service of the stack (so it reaches
        the stack's networks); its one task must complete with exit 0 within job_timeout.
        The job's service is removed afterwards, whatever happened."""
        deadline = time.monotonic() + self.root.settings.job_timeout
        self.swarm.remove([job])  # a killed run's leftover
        self.swarm.deploy(release.root, job_document(release.config, job, release.tag), release.tag)
        try:
            failure = self._job_outcome(job, deadline)
            tail = self.swarm.logs_tail(job, LOG_TAIL_LINES) if failure else ""
        finally:
            self.swarm.remove([job])
        if failure is not None:
            message, code = failure
            raise PreSwitchFailure(f"job {job} {message}", {"job": {
                "name": job, "exit_code": code, "log_tail": tail}})

    def _job_outcome(self, job: str, deadline: float) -> tuple[str, int | None] | None:
        """None when the job's task completed; else (what happened, its exit code)."""
        while True:
            for task in self.swarm.tasks([job]):
                if task.state == "complete":
                    return None
                if task.state in ("failed", "rejected", "orphaned"):
                    return (f"exited with code {task.exit_code}" if task.exit_code is not None
                            else f"{task.state}: {task.error}"), task.exit_code
            if time.monotonic() > deadline:
                return f"did not finish within job_timeout={self.root.settings.job_timeout:g}s", None
            time.sleep(POLL_S)

    def _running_here(self, name: str) -> str | None:
        """The container of a running task of service `name` on this node (the manager), or
        None: docker exec reaches only this engine's containers."""
        for task in self.swarm.tasks([name]):
            if task.state != "running" or not task.container_id:
                continue
            try:
                self.engine.inspect(task.container_id)
            except EngineHTTPError:  # a task of another node
                continue
            return task.container_id
        return None

    def run_in_accessory(self, name: str, argv: tuple[str, ...], *, timeout: float,
                         stdout_fd: int | None = None, stdin: IO[bytes] | None = None) -> ExecResult:
        """In the accessory's running task on this node (the manager): docker exec reaches
        only this engine's containers."""
        container = self._running_here(name)
        if container is not None:
            return self.engine.exec_streams(container, argv, timeout=timeout,
                                            stdout_fd=stdout_fd, stdin=stdin)
        raise UsageError(f"accessory {name} has no running task on this node",
                         hint=f"place {name} on the manager the agent runs on (deploy.placement."
                              "constraints: [node.role == manager]) so its data can be dumped")

    def run_in_service(self, name: str, argv: tuple[str, ...], *, timeout: float,
                       env: dict[str, str]) -> ExecResult:
        """In the service's running task on this node: docker exec reaches only this engine."""
        container = self._running_here(name)
        if container is not None:
            return self.engine.exec_streams(container, argv, timeout=timeout, env=env)
        raise UsageError(f"service {name} has no running task on this node",
                         hint=f"place {name} on the manager the agent runs on for its exec hook "
                              "(deploy.placement.constraints: [node.role == manager])")

    # --- the switch ------------------------------------------------------------------------
    def switch(self, step: Step, release: Release, *, reuse: bool, capture: Capture | None) -> SwarmSwitch:
        """One `docker stack deploy` of the step's services (`reuse` needs nothing here: the
        nodes keep their images)."""
        before = {s: self.swarm.spec(s) for s in step.names}
        seen = {t.id for t in self.swarm.tasks(step.names)}
        snapshot = capture() if capture is not None else None
        t = time.monotonic()
        started_ns = time.time_ns()
        doc = stack_document(release.config, step.names, tag=release.tag,
                             release={s.name: s for s in step.services},
                             monitor_s=self.root.settings.stabilize_seconds)
        self.swarm.deploy(release.root, doc, release.tag)
        log.info("deployed %s of stack %s: %s", release.tag, self.root.project, ", ".join(step.names))
        return SwarmSwitch(step, release.tag, round(time.monotonic() - t, 3), None, snapshot,
                           started_ns, before=before, seen=seen, asked=self._asked(step, release))

    def _asked(self, step: Step, release: Release) -> set[str]:
        url = self.root.settings.health_url
        if url is None:
            return set(step.contract)
        port = str(url_port(url))
        return set(step.contract) | {n for n in step.names if any(
            p.rsplit(":", 1)[-1] == port for p in release.config.service(n).published_ports)}

    def observe(self, sw: SwarmSwitch) -> Observer:
        return TaskObserver(self.swarm, sw.replicas, sw.tag, sw.seen, contract=sw.step.contract,
                            since=sw.started_ns / 1e9, asked=sw.asked)

    def cut_over(self, sw: SwarmSwitch, weight: int = 100) -> None:
        """Swarm's routing mesh sends traffic to the tasks that run: nothing to change."""

    def split(self, switched: list[SwarmSwitch], weight: int) -> tuple[list[str], list[str]] | None:
        """No canary by weight on a swarm (preflight refuses agent.canary there)."""
        return None

    def settle(self, sw: SwarmSwitch, *, probation: bool) -> None:
        """Swarm stopped the old tasks as its update went."""

    def watched(self, switched: list[SwarmSwitch]) -> WatchedTasks:
        return WatchedTasks(self.swarm, {n: r for sw in switched for n, r in sw.replicas.items()},
                            switched[0].tag if switched else None, {t for sw in switched for t in sw.seen})

    # --- the way back ----------------------------------------------------------------------
    def walk_back(self, switched: list[SwarmSwitch], failed: SwarmSwitch | None,
                  previous: str | None) -> WalkedBack[SwarmSwitch]:
        back: list[ServicePlan] = []
        removed: list[str] = []
        seen: set[str] = set()
        for sw in reversed(switched):
            seen |= {t.id for t in self.swarm.tasks(sw.step.names)}
            for svc in sw.step.services:
                if sw.before[svc.name] is None:
                    removed.append(svc.name)
                elif self.swarm.spec(svc.name) != sw.before[svc.name]:
                    log.warning("rolling %s back to its previous spec", svc.name)
                    self.swarm.rollback(svc.name)
                    back.append(svc)
            self.swarm.remove([s for s in sw.step.names if sw.before[s] is None])
        if not back:
            return WalkedBack(None, tuple(removed))
        tags = {(sw.before[s.name] or {}).get("Labels", {}).get(RELEASE_LABEL)
                for sw in switched for s in sw.step.services if s in back}
        tag = tags.pop() if len(tags) == 1 else None
        # The rolled-back tasks are new tasks: none of those seen before counts as one of them.
        return WalkedBack(SwarmSwitch(Step(None, tuple(back)), tag, started_ns=time.time_ns(), seen=seen),
                          tuple(removed))

    def diagnostics(self, failed: list[SwarmSwitch], switched: list[SwarmSwitch],
                    verdict: Verdict) -> dict[str, Any]:
        """The failed tasks of the release, node by node: what an operator needs to see why."""
        services = [n for sw in switched for n in sw.step.names]
        tag = switched[0].tag if switched else None
        try:
            nodes = self.swarm.nodes()
            tasks = self.swarm.tasks(services)
        except Exception:
            tasks, nodes = [], {}
        return {"health_answers": list(verdict.answers), "tasks": [
            {"service": t.service, "task": t.id[:12], "state": t.state, "exit_code": t.exit_code,
             "error": REDACTOR(t.error),
             "node": nodes[t.node_id].hostname if t.node_id in nodes else t.node_id[:12]}
            for t in tasks if t.tag == tag and t.state in ("failed", "rejected")][:20]}

    def commit(self, switched: list[SwarmSwitch], keep_tag: str | None) -> None:
        """Swarm keeps each service's previous spec: that is the way back."""

    def walked_back(self) -> None:
        """Swarm removed the failed tasks itself."""

    def finish(self) -> None:
        """Nothing was set aside."""

    def status(self) -> dict[str, Any]:
        return swarm_status(self.root, self.swarm)


class TaskObserver:
    """The gate's view of every task of the given services, on every node. It also frees
    updates Swarm paused or that wait on a task which can never report (lost nodes): that
    bookkeeping is this observer's own, one gate long."""

    def __init__(self, swarm: Swarm, replicas: dict[str, int], tag: str | None, seen_before: set[str],
                 *, contract: Collection[str], since: float, asked: Collection[str] = ()) -> None:
        self.swarm = swarm
        self.replicas = replicas
        self.tag = tag
        self.seen_before = seen_before
        self.contract = set(contract)
        self.asked = set(asked) | self.contract  # whose tasks health_url is asked of
        self.since = since
        self.resumed: dict[str, int] = {}
        self.stuck_since: dict[str, float] = {}
        self.mine: list[TaskInfo] = []  # the running tasks of the step's services, last look
        self.nodes: dict[str, NodeInfo] = {}

    def look(self) -> Look:
        try:
            # The pauses before the tasks: a pause read after them could be one a task of the
            # release caused after the read (it crashed in between), resumed as a lost node's.
            # Read first, its cause is among the tasks, and judge_tasks fails the gate on it.
            paused = self.swarm.paused(self.replicas)
            self.nodes = self.swarm.nodes()
            tasks = self.swarm.tasks(list(self.replicas))
        except EngineUnreachable:
            return Look(unreachable=True)
        judged = judge_tasks(tasks, self.replicas, self.tag, self.nodes, self.seen_before)
        if judged.kind == "fail":
            return Look(failure=judged.reason)
        stuck = self._resume_paused(paused, self.resumed)
        if stuck is None and judged.kind == "wait":
            stuck = self._unstick(tasks, self.nodes, self.stuck_since, self.resumed)
        if stuck is not None:
            return Look(failure=stuck)
        # Probe as soon as a task's container runs ("starting": Swarm waits for Docker's
        # first healthcheck before it says "running"), so an error-answering release is
        # caught before Swarm's update moves on to the next task.
        # health_url is asked of the tasks of the services it reaches (see SwarmSwitch.asked),
        # contract or not: it is how the release says it works; verify and the environment
        # only of the contract's.
        self.mine = [t for t in tasks if t.desired == "running" and t.state in ("starting", "running")
                     and (self.tag is None or t.tag == self.tag) and t.service in self.asked]
        return Look(waiting=None if judged.kind == "pass" else judged.reason, probing=bool(self.mine),
                    units=tuple(Unit(f"{t.service}.{t.slot or t.id[:12]}", t.service in self.contract,
                                     t.env_names) for t in self.mine))

    def health_urls(self, url: str) -> list[str]:
        """health_url at each node that runs a task it is asked of (the published port)."""
        return node_urls(url, [self.nodes[t.node_id].address for t in self.mine if t.node_id in self.nodes])

    def logs_contain(self, pattern: re.Pattern[str]) -> bool:
        """Every contract service's log since its deploy has a matching line."""
        return all(any(pattern.search(line) for line in self.swarm.logs_since(s, self.since).splitlines())
                   for s in sorted(self.contract & set(self.replicas)))

    def pause(self, seconds: float) -> None:
        time.sleep(max(seconds, POLL_S))

    def close(self) -> None:
        pass

    def _resume_paused(self, paused: dict[str, str], resumed: dict[str, int]) -> str | None:
        """Swarm pauses an update (failure_action: pause) when a task ends early, which a
        node going down also causes. A failed task of the release has already failed the gate
        (judge_tasks); any other pause (`paused`, read before the tasks) is a lost node's, not
        the release's: the update is resumed, up to RESUME_LIMIT times. Returns the reason to
        fail when it keeps pausing."""
        for name, message in paused.items():
            if resumed.get(name, 0) >= RESUME_LIMIT:
                return f"Swarm paused the update of {name} {RESUME_LIMIT + 1} times: {message}"
            log.warning("Swarm paused the update of %s (%s) though no task of the release failed "
                        "(a node went down?): resuming it", name, message)
            self.swarm.resume(name)
            resumed[name] = resumed.get(name, 0) + 1
        return None


    def _unstick(self, tasks: list[TaskInfo], nodes: dict[str, NodeInfo],
                 stuck_since: dict[str, float], freed: dict[str, int]) -> str | None:
        """An update or rollback that waits for a task which can never report its shutdown
        (swarm.stuck_tasks) for STUCK_S is freed with a fresh update of the service's current
        spec (`service update --force`), up to RESUME_LIMIT times per service."""
        now = time.monotonic()
        # A task that stays on a down node keeps looking stuck after the forced update has gone
        # past it: each task frees its service once (stuck_since keeps a -1 for it).
        stuck = [t for t in stuck_tasks(tasks, nodes) if stuck_since.get(t.id) != -1]
        for key in [k for k, v in stuck_since.items() if v != -1] :
            if key not in {t.id for t in stuck}:
                del stuck_since[key]
        for t in stuck:
            since = stuck_since.setdefault(t.id, now)
            if now - since < STUCK_S:
                continue
            if freed.get(t.service, 0) >= RESUME_LIMIT:
                return (f"the update of {t.service} stays stuck on task {t.id[:12]} ({t.state}, "
                        f"{'on a node that is down' if t.node_id else 'never placed'})")
            log.warning("the update of %s waits for task %s (%s, %s), which cannot report its "
                        "shutdown: forcing a fresh update of the service", t.service, t.id[:12],
                        t.state, "on a node that is down" if t.node_id else "never placed on a node")
            self.swarm.force_update(t.service)
            freed[t.service] = freed.get(t.service, 0) + 1
            stuck_since.update({other.id: -1 for other in stuck})
            break
        return None


class WatchedTasks:
    """The watch's view of a release's tasks."""

    def __init__(self, swarm: Swarm, replicas: dict[str, int], tag: str | None, seen: set[str]) -> None:
        self.swarm = swarm
        self.replicas = replicas
        self.tag = tag
        self.seen = seen

    def problem(self) -> str | None:
        """A task of the release that failed, or a service no longer at its replicas."""
        try:
            nodes = self.swarm.nodes()
            tasks = self.swarm.tasks(list(self.replicas))
        except EngineUnreachable:
            return None  # the manager restarting: not a verdict on the release
        judged = judge_tasks(tasks, self.replicas, self.tag, nodes, self.seen)
        return judged.reason if judged.kind == "fail" else None

    def logs_since(self, since: float) -> str:
        return "".join(self.swarm.logs_since(s, since) for s in sorted(self.replicas))



# --- status -----------------------------------------------------------------------------------
def swarm_status(root: AgentRoot, swarm: Swarm) -> dict[str, Any]:
    """`status --json` on a swarm: every task of the stack that should run, with its node."""
    services = swarm.services()
    nodes = swarm.nodes()
    tasks = [t for t in swarm.tasks(list(services)) if t.desired == "running"]
    entries = []
    for t in sorted(tasks, key=lambda t: (t.service, t.slot or 0, t.node_id)):
        spec = services[t.service]["Spec"]
        labels = spec.get("Labels") or {}
        node = nodes.get(t.node_id)
        entries.append({
            "name": t.service, "task": t.id[:12], "slot": t.slot,
            "node": node.hostname if node else None, "node_id": t.node_id[:12] or None,
            "node_address": node.address if node else None, "node_state": node.state if node else None,
            "image": re.sub(r"@sha256:[0-9a-f]+$", "",
                            spec["TaskTemplate"]["ContainerSpec"]["Image"]),
            "state": t.state, "health": None, "role": labels.get(ROLE_LABEL, "accessory"),
            "tag": t.tag,
        })
    want = {name: ((s["Spec"].get("Mode") or {}).get("Replicated") or {}).get("Replicas")
            for name, s in services.items()}
    healthy = bool(entries) and all(
        sum(1 for e in entries if e["name"] == name and e["state"] == "running"
            and e["node_state"] == "ready") == (n if n is not None else len([e for e in entries if e["name"] == name]))
        for name, n in want.items())
    release_tags = {e["tag"] for e in entries if e["role"] == "release" and e["state"] == "running"}
    return {
        "engine": "swarm",
        "current_tag": release_tags.pop() if len(release_tags) == 1 else None,
        "healthy": healthy,
        "services": entries,
        "nodes": [{"id": n.id[:12], "hostname": n.hostname, "address": n.address, "state": n.state,
                   "availability": n.availability} for n in nodes.values()],
    }
