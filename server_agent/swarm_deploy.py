"""SwarmDeployer: the transaction of SPEC §7/§14 on a Docker Swarm manager (SPEC §17).

Deployer (deploy.py) keeps what is the same on both engines: the lock, the journal, the
recovery of a killed attempt, jobs, history, state, the backup's writing and the outcome.
This class replaces the engine-facing steps:

    prepare      preflight (+ this node is a manager, every release image resolves in its
                 registry through the manager: exit 11 when not) and the plan
    accessories  a missing accessory service is deployed before any step (a running one never is)
    roll out     per step: one `docker stack deploy` of that step's services, then the gate over
                 every task of them on every node; the backup is captured just before the step
                 that carries the contract is deployed
    recover      switched services go back with `docker service rollback` (Swarm's previous spec:
                 exactly what ran before this attempt), services new in this attempt are removed,
                 then what runs is gated: exit 20, or 21
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from .compose import RELEASE_LABEL, ComposeConfig
from .deploy import KEPT_RELEASES, Deployer, Outcome, PreSwitchFailure, _since
from .engine import ROLE_LABEL, Engine, EngineUnreachable
from .errors import ExitCode, ImageError, PreflightError
from .health import FAILS_IN_A_ROW, GateResult, ProbeRun
from .plan import RolloutPlan, ServicePlan, Step
from .preflight import PreflightReport, run_preflight
from .redact import REDACTOR
from .rollout import checkpoint
from .root import AgentRoot
from .runner import run
from .swarm import (
    STACK_LABEL,
    NodeInfo,
    TaskInfo,
    job_document,
    judge_tasks,
    node_urls,
    service_force_argv,
    service_logs_argv,
    service_resume_argv,
    service_rm_argv,
    service_rollback_argv,
    stack_deploy_argv,
    stack_document,
    stuck_tasks,
)

log = logging.getLogger("obs.swarm")

POLL_S = 0.25
RESUME_LIMIT = 3  # paused or stuck updates freed per service and gate (see SwarmGate._unstick)
STUCK_S = 3.0  # how long a task that cannot report its shutdown may hold an update up


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

    def remove(self, services: list[str]) -> None:
        if services:
            run(service_rm_argv(self.stack, services), check=False)


class SwarmGate:
    """The gate of SPEC §6 over every task of the given services, on every node."""

    def __init__(self, root: AgentRoot, swarm: Swarm) -> None:
        self.root = root
        self.swarm = swarm
        s = root.settings
        self.timeout = s.health_timeout
        self.stabilize = s.stabilize_seconds
        env = s.verify.container_env
        self.container_env = s.required_env if env is None else env

    def wait(self, replicas: dict[str, int], tag: str | None, seen_before: set[str], *,
             contract: Collection[str]) -> GateResult:
        started = time.monotonic()
        deadline = started + self.timeout
        healthy_since: float | None = None
        probes: dict[str, ProbeRun] = {}  # each node's URL on its own
        answers: list[str] = []
        resumed: dict[str, int] = {}
        stuck_since: dict[str, float] = {}
        waiting_on = "tasks"
        s = self.root.settings
        while True:
            now = time.monotonic()
            try:
                nodes = self.swarm.nodes()
                tasks = self.swarm.tasks(list(replicas))
            except EngineUnreachable:
                if now >= deadline:
                    return GateResult(False, "the manager's engine was unreachable until "
                                      f"health_timeout={self.timeout:g}s", _since(started))
                time.sleep(POLL_S * 4)
                continue
            verdict = judge_tasks(tasks, replicas, tag, nodes, seen_before)
            if verdict.kind == "fail":
                return GateResult(False, REDACTOR(verdict.reason), _since(started), answers[-5:])
            stuck = self._resume_paused(replicas, resumed)
            if stuck is None and verdict.kind == "wait":
                stuck = self._unstick(tasks, nodes, stuck_since, resumed)
            if stuck is not None:
                return GateResult(False, REDACTOR(stuck), _since(started), answers[-5:])
            ok = verdict.kind == "pass"
            if not ok:
                waiting_on = verdict.reason
            # Probe as soon as a task's container runs ("starting": Swarm waits for Docker's
            # first healthcheck before it says "running"), so an error-answering release is
            # caught before Swarm's update moves on to the next task.
            running = [t for t in tasks if t.desired == "running" and t.state in ("starting", "running")
                       and (tag is None or t.tag == tag)]
            mine = [t for t in running if t.service in contract]
            if ok and mine:
                unset = sorted({n for t in mine for n in self.container_env if n not in t.env_names})
                if unset:
                    return GateResult(False, "not set inside the release's tasks: " + ", ".join(unset),
                                      _since(started))
            if mine and s.health_url:
                addrs = [nodes[t.node_id].address for t in mine if t.node_id in nodes]
                for url in node_urls(s.health_url, addrs):
                    ans = probes.setdefault(url, ProbeRun(s.allow_degraded)).ask([url])
                    answers.append(f"{url}: {ans.detail}")
                    del answers[:-10]
                    if probes[url].failed:
                        return GateResult(False, REDACTOR(
                            f"health_url answered a failure {FAILS_IN_A_ROW} times in a row at "
                            f"{url}: {ans.detail}"), _since(started), answers[-5:])
                    if ans.kind != "pass":
                        ok = False
                        waiting_on = f"health_url {url} ({ans.detail})"
            if ok and mine:
                missing = [p for p in s.verify.paths if not (self.root.path / p).exists()]
                if missing:
                    ok = False
                    waiting_on = "verify.paths " + ", ".join(missing)
            if ok:
                healthy_since = healthy_since or now
                if now - healthy_since >= self.stabilize:
                    return GateResult(True, "healthy", _since(started))
            else:
                healthy_since = None
            if now >= deadline:
                return GateResult(False, REDACTOR(f"not healthy within health_timeout="
                                                  f"{self.timeout:g}s; waiting on {waiting_on}"),
                                  _since(started), answers[-5:])
            time.sleep(POLL_S)


    def _resume_paused(self, services: Collection[str], resumed: dict[str, int]) -> str | None:
        """Swarm pauses an update (failure_action: pause) when a task ends early, which a
        node going down also causes. A failed task of the release has already failed the gate
        (judge_tasks); any other pause is a lost node's, not the release's: the update is
        resumed, up to RESUME_LIMIT times. Returns the reason to fail when it keeps pausing."""
        try:
            paused = self.swarm.paused(services)
        except EngineUnreachable:
            return None
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


class SwarmDeployer(Deployer):
    def __init__(self, root: AgentRoot, engine: Engine) -> None:
        super().__init__(root, engine)
        self.swarm = Swarm(engine, root.project)

    def running_tag(self) -> str | None:
        tags = {(s["Spec"].get("Labels") or {}).get(RELEASE_LABEL)
                for s in self.swarm.services().values()
                if (s["Spec"].get("Labels") or {}).get(ROLE_LABEL) == "release"}
        return tags.pop() if len(tags) == 1 else None

    # --- before anything is touched ---------------------------------------------------------
    def _prepare(self, action: str, target: str, root: AgentRoot, steps: dict[str, float],
                 t0: float) -> tuple[RolloutPlan, ComposeConfig]:
        report = run_preflight(root, self.engine, target)  # swarm_preflight included
        for note in report.notes:
            log.info("preflight: %s", note)
        if not report.ok:
            raise PreflightError(report.problems)
        assert report.config is not None and report.plan is not None
        config, plan = report.config, report.plan
        steps["preflight"] = _since(t0)
        t = time.monotonic()
        released = set(plan.jobs) | {s.name for s in plan.release_services}
        for image in sorted({config.service(s).image for s in released}):
            why = self.swarm.resolves(image)
            if why is not None:
                raise ImageError(f"{image} does not resolve in its registry ({why})",
                                 hint="push the release first (obsdeploy release), and log the "
                                      "manager in to the registry (docker login)")
        steps["pull"] = _since(t)
        return plan, config

    def _start_accessories(self, plan: RolloutPlan, root: AgentRoot, tag: str) -> None:
        names = [a.name for a in plan.accessories if a.action == "start"]
        if not names:
            return
        config = root_config(root, tag)
        log.info("deploying accessories: %s", ", ".join(names))
        self.swarm.deploy(root, stack_document(config, names, tag=None, release={},
                                               monitor_s=root.settings.stabilize_seconds), tag)
        replicas = {n: config.service(n).replicas for n in names}
        gate = SwarmGate(root, self.swarm)
        gate.stabilize = 0
        verdict = gate.wait(replicas, None, set(), contract=())
        if not verdict.healthy:
            raise PreSwitchFailure(f"accessory {', '.join(names)} did not start: {verdict.reason}",
                                   {"accessories": names})

    def _run_jobs(self, plan: RolloutPlan, root: AgentRoot, tag: str, steps: dict[str, float]) -> None:
        """Each job once, with the new tag, as a one-shot service of the stack (so it reaches
        the stack's networks); its one task must complete with exit 0 within job_timeout.
        The job's service is removed afterwards, whatever happened."""
        config = root_config(root, tag)
        timeout = root.settings.job_timeout
        for job in plan.jobs:
            t = time.monotonic()
            self.swarm.remove([job])  # a killed run's leftover
            log.info("running job %s with %s", job, tag)
            self.swarm.deploy(root, job_document(config, job, tag), tag)
            try:
                failure = self._job_outcome(job, t + timeout)
                tail = self.swarm.logs_tail(job, 50) if failure else ""
            finally:
                self.swarm.remove([job])
            steps[f"job:{job}"] = _since(t)
            if failure is not None:
                message, code = failure
                raise PreSwitchFailure(f"job {job} {message}", {"job": {
                    "name": job, "exit_code": code, "log_tail": tail}})
            log.info("job %s done (%.2fs)", job, steps[f"job:{job}"])

    def _job_outcome(self, job: str, deadline: float) -> tuple[str, int | None] | None:
        """None when the job's task completed; else (what happened, its exit code)."""
        while True:
            tasks = self.swarm.tasks([job])
            for task in tasks:
                if task.state == "complete":
                    return None
                if task.state in ("failed", "rejected", "orphaned"):
                    return (f"exited with code {task.exit_code}" if task.exit_code is not None
                            else f"{task.state}: {task.error}"), task.exit_code
            if time.monotonic() > deadline:
                return f"did not finish within job_timeout={self.root.settings.job_timeout:g}s", None
            time.sleep(POLL_S)

    # --- the switch, step by step -----------------------------------------------------------
    def _roll_out(self, record: dict[str, Any], plan: RolloutPlan, root: AgentRoot,
                  config: ComposeConfig, steps: dict[str, float], t0: float) -> Outcome:
        tag = record["tag"]
        release = {s.name: s for s in plan.release_services}
        capture_at = next((st for st in plan.steps if st.contract), plan.steps[0])
        gate = SwarmGate(root, self.swarm)
        switched: list[tuple[Step, dict[str, dict[str, Any] | None]]] = []
        verdict = GateResult(True, "healthy", 0.0)
        for n, step in enumerate(plan.steps, 1):
            before = {s: self.swarm.spec(s) for s in step.names}
            seen = {t.id for t in self.swarm.tasks(step.names)}
            if step is capture_at:
                self._start_backup(record, tag)
            t = time.monotonic()
            doc = stack_document(config, step.names, tag=tag, release=release,
                                 monitor_s=root.settings.stabilize_seconds)
            try:
                self.swarm.deploy(root, doc, tag)
            except Exception as exc:
                if not switched:
                    self._finish(record, "failed", steps, t0, ExitCode.BUG, "")
                    raise
                verdict = GateResult(False, f"could not deploy {', '.join(step.names)}: "
                                     f"{REDACTOR(str(exc))[:300]}", 0.0)
                break
            switched.append((step, before))
            steps["swap"] = round(steps.get("swap", 0) + _since(t), 3)
            log.info("deployed %s of stack %s: %s", tag, root.project, ", ".join(step.names))
            checkpoint("started")
            verdict = gate.wait(_replicas(step.services), tag, seen, contract=step.contract)
            steps["gate"] = round(steps.get("gate", 0) + verdict.seconds, 3)
            if not verdict.healthy:
                if len(plan.steps) > 1:
                    verdict.reason = f"step {n} ({', '.join(step.names)}): {verdict.reason}"
                break
            checkpoint(f"step{n}_done")
        verdict = self._with_backup(record, verdict)
        checkpoint("gated")
        if not verdict.healthy:
            return self._swarm_recover(record, verdict, switched, plan, steps, t0)
        self.state.set_last_good_tag(tag)
        checkpoint("committed")
        root.keep_release(tag, keep=self.state.good_tags()[-KEPT_RELEASES:])
        self.backups.prune()
        return self._finish(record, "success", steps, t0, ExitCode.OK,
                            f"{tag} is healthy on every task (gate {steps.get('gate', 0):.2f}s)")

    def _start_backup(self, record: dict[str, Any], tag: str) -> None:
        """Captured the moment before the contract's step is deployed (Swarm replaces the old
        tasks one by one, out of the agent's hands), written while the gate watches."""
        snapshot = self.backups.capture(f"{record['from_tag'] or 'none'}-to-{tag}")
        pool = ThreadPoolExecutor(max_workers=1)
        self._writing = pool.submit(self._write_backup, snapshot)
        pool.shutdown(wait=False)

    def _swarm_recover(self, record: dict[str, Any], verdict: GateResult,
                       switched: list[tuple[Step, dict[str, dict[str, Any] | None]]], plan: RolloutPlan,
                       steps: dict[str, float], t0: float) -> Outcome:
        tag = record["tag"]
        t_fail = time.monotonic()
        log.error("%s failed: %s", tag, verdict.reason)
        record["failure"] = {"reason": verdict.reason, "health_answers": verdict.answers,
                             "tasks": self._failed_tasks([n for st, _ in switched for n in st.names], tag)}
        self.state.update(failure=record["failure"])
        previous = self.state.last_good_tag()
        back: list[ServicePlan] = []
        removed: list[str] = []
        try:
            for step, before in reversed(switched):
                for svc in step.services:
                    if before[svc.name] is None:
                        removed.append(svc.name)
                    elif self.swarm.spec(svc.name) != before[svc.name]:
                        log.warning("rolling %s back to its previous spec", svc.name)
                        self.swarm.rollback(svc.name)
                        back.append(svc)
                self.swarm.remove([s for s in step.names if before[s] is None])
            checkpoint("rolled_back")
        except Exception as exc:
            record["rollback_gate"] = {"healthy": False, "reason": REDACTOR(str(exc))[:300]}
            return self._finish(record, "failed", steps, t0, ExitCode.ROLLBACK_FAILED,
                                f"{tag} failed ({verdict.reason}); going back failed: "
                                f"{REDACTOR(str(exc))[:300]}")
        if previous is None or (not back and removed):
            return self._finish(record, "failed", steps, t0, ExitCode.ROLLBACK_FAILED,
                                f"{tag} failed ({verdict.reason}); there is no previous good release "
                                "to roll back to" + (f"; removed {', '.join(removed)}" if removed else ""))
        judge = self.root.as_released(record["from_tag"] or previous)
        back_tag = record["from_tag"] if record["from_tag"] else None
        again = SwarmGate(judge, self.swarm).wait(
            _replicas(back), back_tag, set(),
            contract={s.name for s in back if s.contract}) if back else GateResult(True, "nothing switched", 0)
        record["rollback_gate"] = {"healthy": again.healthy, "reason": again.reason}
        steps["restore"] = _since(t_fail)
        if again.healthy:
            return self._finish(record, "rolled_back", steps, t0, ExitCode.ROLLED_BACK,
                                f"{tag} failed ({verdict.reason}); rolled back to "
                                f"{back_tag or previous}, which is healthy again")
        return self._finish(record, "failed", steps, t0, ExitCode.ROLLBACK_FAILED,
                            f"{tag} failed ({verdict.reason}); the rollback to {back_tag or previous} "
                            f"did not become healthy: {again.reason}")

    def _failed_tasks(self, services: list[str], tag: str) -> list[dict[str, Any]]:
        """The failed tasks of the release, node by node: what an operator needs to see why."""
        try:
            nodes = self.swarm.nodes()
            tasks = self.swarm.tasks(services)
        except Exception:
            return []
        return [{"service": t.service, "task": t.id[:12], "state": t.state, "exit_code": t.exit_code,
                 "error": REDACTOR(t.error),
                 "node": nodes[t.node_id].hostname if t.node_id in nodes else t.node_id[:12]}
                for t in tasks if t.tag == tag and t.state in ("failed", "rejected")][:20]


def _replicas(services: Collection[ServicePlan]) -> dict[str, int]:
    return {s.name: s.replicas for s in services}


def root_config(root: AgentRoot, tag: str) -> ComposeConfig:
    from .compose import ComposeProject

    return ComposeProject(root.path, root.compose_file, root.project).config(root.compose_env(tag))


def swarm_preflight(root: AgentRoot, engine: Engine, report: PreflightReport) -> None:
    """The swarm's part of preflight (run_preflight calls it with agent.engine swarm): the
    engine is a manager; the plan's accessories are judged by the stack's services (a
    missing one is deployed first; a running one is never in a stack file)."""
    swarm = Swarm(engine, root.project)
    try:
        manager = swarm.is_manager()
        existing = swarm.services() if manager else {}
    except Exception as exc:
        report.add("swarm.unreachable", f"cannot ask the engine about its swarm ({type(exc).__name__}: "
                                        f"{REDACTOR(str(exc))[:200]})")
        return
    if not manager:
        report.add("swarm.not_manager", "agent.engine is swarm but this node's engine is not a swarm "
                                        "manager: run the agent on a manager (docker node ls shows "
                                        "them), or run docker swarm init")
    if root.settings.watch.seconds > 0:
        report.add("swarm.watch", "agent.watch (SPEC §16) is not carried out on a swarm yet; set "
                                  "watch.seconds to 0, or run obs-agent verify after the deploy")
    if root.settings.proxy is not None:
        report.add("swarm.proxy", "agent.proxy (SPEC §15) is not carried out on a swarm: Swarm itself "
                                  "replaces the tasks; give the service deploy.update_config.order: "
                                  "start-first behind the routing mesh, and remove agent.proxy")
    if report.plan is not None:
        report.plan = replace(report.plan, accessories=tuple(
            replace(a, action="leave" if a.name in existing else "start", definition_changed=False)
            for a in report.plan.accessories))


# --- status -----------------------------------------------------------------------------------
def swarm_status(root: AgentRoot, engine: Engine) -> dict[str, Any]:
    """`status --json` on a swarm: every task of the stack that should run, with its node."""
    from .state import ReleaseState
    from .status import last_action

    swarm = Swarm(engine, root.project)
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
    state = ReleaseState(root.state_dir)
    return {
        "engine": "swarm",
        "current_tag": release_tags.pop() if len(release_tags) == 1 else None,
        "last_good_tag": state.last_good_tag(),
        "healthy": healthy,
        "services": entries,
        "nodes": [{"id": n.id[:12], "hostname": n.hostname, "address": n.address, "state": n.state,
                   "availability": n.availability} for n in nodes.values()],
        "last_action": last_action(state),
    }
