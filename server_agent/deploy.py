"""Deployer: the transaction of SPEC §7 and §14, and rollback, as readable steps.

    lock → recover a killed attempt → preflight (with the RolloutPlan) → pull → journal →
    start missing accessories → jobs (deploy only) → each step: switch, gate → watch
    (deploy only, SPEC §16) → commit; or walk the switched steps back and gate what ran
    before → history, metrics file, notification.

The backup is captured the moment the step that carries the path contract stopped its old
containers (the writer has stopped writing), and written while the gates run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import metrics, notify
from .backup import BackupArchive, BackupSnapshot
from .compose import ComposeConfig, ComposeProject
from .engine import ContainerInfo, Engine, running_tag
from .errors import CommandError, ExitCode, ObsError, PreflightError, UsageError
from .health import GateResult, HealthGate
from .plan import RolloutPlan, Step
from .preflight import run_preflight
from .redact import REDACTOR
from .rollout import Rollout, Switch, checkpoint, engine_down
from .root import AgentRoot
from .runner import run
from .state import JOURNAL_ONLY, ReleaseState, now_iso
from .watch import Watch, WatchResult

log = logging.getLogger("obs.deploy")

# Good releases whose compose file and configuration stay kept under state/releases/.
KEPT_RELEASES = 10
LOG_TAIL_LINES = 50


@dataclass
class Outcome:
    exit_code: ExitCode
    message: str
    record: dict[str, Any] = field(default_factory=dict)


class PreSwitchFailure(Exception):
    """A job or an accessory failed before any release service was switched (exit 13)."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


class Deployer:
    def __init__(self, root: AgentRoot, engine: Engine) -> None:
        self.root = root
        self.engine = engine
        self.state = ReleaseState(root.state_dir)
        self.backups = BackupArchive(root)
        from .proxy import proxy_for

        self.rollout = Rollout(root, engine, self.state, proxy=proxy_for(root))
        # Restart policies set aside while a release is on trial (see _hold_restarts).
        self._held: dict[str, dict[str, Any]] = {}
        self._writing: Future[Path] | None = None  # the backup being written, if any

    @staticmethod
    def for_root(root: AgentRoot, engine: Engine) -> Deployer:
        """The one place that picks the engine's backend (agent.engine, SPEC §17)."""
        if root.settings.engine == "swarm":
            from .swarm_deploy import SwarmDeployer

            return SwarmDeployer(root, engine)
        return Deployer(root, engine)

    def running_tag(self) -> str | None:
        """The release that runs now, by its obsdeploy.release label."""
        return running_tag(self.engine.project_containers(self.root.project))

    # --- the public steps ------------------------------------------------------------------
    def deploy(self, tag: str) -> Outcome:
        return self._attempt("deploy", tag)

    def rollback(self, tag: str | None) -> Outcome:
        return self._attempt("rollback", tag)

    def _attempt(self, action: str, tag: str | None) -> Outcome:
        self.state.ensure()
        with self.state.lock.hold(action, tag or "previous"):
            interrupted = self.state.recover_interrupted()
            if interrupted and interrupted.get("held_restarts"):
                self._held = dict(interrupted["held_restarts"])
                self._release_restarts()
            target = tag or self._previous_good(interrupted)
            # A rollback re-creates and judges its release as that release passed its gate.
            root = self.root.as_released(target) if action == "rollback" else self.root
            t0 = time.monotonic()
            steps: dict[str, float] = {}
            # Journal first, so a kill from here on is reported as an interrupted attempt.
            record: dict[str, Any] = {
                "action": action, "tag": target, "from_tag": None,
                "started_at": now_iso(), "backup": None, "pid": os.getpid(),
            }
            self.state.begin(record)
            checkpoint("locked")
            try:
                plan, config = self._prepare(action, target, root, steps, t0)
            except ObsError:
                # Preflight or pull failed: nothing changed, so there is no attempt to record.
                self.state.discard()
                raise
            checkpoint("pulled")
            record["from_tag"] = self.running_tag() or self.state.last_good_tag()
            self.state.begin(record)
            checkpoint("journaled")
            try:
                self._start_accessories(plan, root, target)
                if action == "deploy":  # jobs never run on a rollback
                    self._run_jobs(plan, root, target, steps)
            except PreSwitchFailure as exc:
                record["failure"] = {"reason": REDACTOR(str(exc)), **exc.details}
                return self._finish(record, "failed", steps, t0, ExitCode.JOB_FAILED,
                                    f"{exc}; nothing running was switched")
            return self._roll_out(record, plan, root, config, steps, t0)

    def _prepare(self, action: str, target: str, root: AgentRoot, steps: dict[str, float],
                 t0: float) -> tuple[RolloutPlan, ComposeConfig]:
        """Preflight and pull: everything that must succeed before anything running is touched."""
        report = run_preflight(root, self.engine, target)
        for note in report.notes:
            log.info("preflight: %s", note)
        if not report.ok:
            raise PreflightError(report.problems)
        assert report.config is not None and report.plan is not None
        steps["preflight"] = _since(t0)
        log.info("preflight ok (%.2fs)", steps["preflight"])
        t = time.monotonic()
        plan, config = report.plan, report.config
        released = set(plan.jobs) | {s.name for s in plan.release_services}
        ours = sorted({config.service(s).image for s in released})
        others = sorted({config.service(a.name).image for a in plan.accessories} - set(ours))
        # A deploy pulls its tag again (a re-pushed tag is the registry's truth); accessories
        # and a rollback's release, only when missing.
        self.engine.pull(ours if action == "deploy" else self._missing(ours))
        self.engine.pull(self._missing(others))
        self.engine.check_platform(ours)
        steps["pull"] = _since(t)
        return plan, config

    def _missing(self, images: list[str]) -> list[str]:
        return [i for i in images if not self.engine.has_image(i)]

    # --- before the switch: accessories and jobs -------------------------------------------
    def _start_accessories(self, plan: RolloutPlan, root: AgentRoot, tag: str) -> None:
        """Start the accessories that are missing or stopped (never one that runs), and wait
        for those with a healthcheck to be healthy."""
        names = [a.name for a in plan.accessories if a.action == "start"]
        if not names:
            return
        log.info("starting accessories: %s", ", ".join(names))
        started_ns = time.time_ns()
        ComposeProject(root.path, root.compose_file, root.project).up(names, root.compose_env(tag))
        running = [c for c in self.rollout.containers(names) if c.running]
        gate = HealthGate(root, self.engine).wait(None, running, started_ns, contract=(), stabilize=0)
        if not gate.healthy:
            raise PreSwitchFailure(f"accessory {', '.join(names)} did not start: {gate.reason}",
                                   {"accessories": names})
        if self.rollout.proxy is not None:  # the proxy may be one of them (SPEC §15)
            problem = self._proxy_problem()
            if problem is not None:
                raise PreSwitchFailure(f"the proxy does not answer after starting "
                                       f"{', '.join(names)}: {problem}", {"accessories": names})

    def _proxy_problem(self) -> str | None:
        """Why the proxy cannot be driven, asked for a few seconds: a proxy just started as
        an accessory opens its admin API a moment after its container runs."""
        assert self.rollout.proxy is not None
        deadline = time.monotonic() + 10
        while (problem := self.rollout.proxy.driver.problem()) is not None:
            if time.monotonic() > deadline:
                return problem
            time.sleep(0.2)
        return None

    def _run_jobs(self, plan: RolloutPlan, root: AgentRoot, tag: str, steps: dict[str, float]) -> None:
        """Each job once, with the new tag, as `compose run --rm`; it must exit 0 within
        job_timeout. Its log tail goes to the history record when it does not."""
        compose = ComposeProject(root.path, root.compose_file, root.project)
        timeout = root.settings.job_timeout
        for job in plan.jobs:
            t = time.monotonic()
            name = f"{root.project}-{job}-{tag}-{os.getpid()}".replace("+", "_")
            log.info("running job %s with %s", job, tag)
            try:
                res = run(compose.run_argv(job, name, tag), env=root.compose_env(tag),
                          cwd=root.path, check=False, timeout=timeout)
            except CommandError as exc:
                if exc.returncode != 124:  # compose itself is missing: not the job's fault
                    raise
                tail = self.engine.logs_tail(name, LOG_TAIL_LINES)
                self.engine.remove_named(name)  # compose run's client is gone; its container is not
                raise PreSwitchFailure(f"job {job} did not finish within job_timeout={timeout:g}s",
                                       {"job": {"name": job, "exit_code": None, "log_tail": tail}}) from None
            steps[f"job:{job}"] = _since(t)
            if res.returncode != 0:
                tail = "\n".join((res.stdout + res.stderr).splitlines()[-LOG_TAIL_LINES:])
                raise PreSwitchFailure(f"job {job} exited with code {res.returncode}",
                                       {"job": {"name": job, "exit_code": res.returncode,
                                                "log_tail": REDACTOR(tail)}})
            log.info("job %s done (%.2fs)", job, steps[f"job:{job}"])

    # --- the switch, step by step ----------------------------------------------------------
    def _roll_out(self, record: dict[str, Any], plan: RolloutPlan, root: AgentRoot,
                  config: ComposeConfig, steps: dict[str, float], t0: float) -> Outcome:
        tag = record["tag"]
        snapshot: list[BackupSnapshot] = []
        capture_at = next((st for st in plan.steps if st.contract), plan.steps[0])

        def capture() -> None:
            snapshot.append(self.backups.capture(f"{record['from_tag'] or 'none'}-to-{tag}"))

        gate = HealthGate(root, self.engine)
        # The watch (SPEC §16) is a deploy's probation: a rollback returns to a release that
        # already passed one, and watching it could walk back into the release being fled.
        watch = Watch(root.settings.watch, self.engine)
        watching = record["action"] == "deploy" and watch.on
        baseline = watch.baseline() if watching else {}  # "just before the switch"
        switches: list[Switch] = []
        failed: Switch | None = None  # the step whose gate failed
        verdict = GateResult(True, "healthy", 0.0)
        for n, step in enumerate(plan.steps, 1):
            try:
                sw = self.rollout.switch(step, tag, root, config, reuse=record["action"] == "rollback",
                                         hold=self._hold_restarts,
                                         on_stopped=capture if step is capture_at else None)
            except Exception as exc:
                if not switches or engine_down(exc):
                    # Creating the containers failed before anything running was touched.
                    self._finish(record, "failed", steps, t0, ExitCode.BUG, "")
                    raise
                verdict = GateResult(False, f"could not switch {', '.join(step.names)}: "
                                     f"{REDACTOR(str(exc))[:300]}", 0.0)
                break
            switches.append(sw)
            steps["swap"] = round(steps.get("swap", 0) + sw.swap_s, 3)
            checkpoint("started")
            if snapshot and self._writing is None:  # written while the gates watch
                pool = ThreadPoolExecutor(max_workers=1)
                self._writing = pool.submit(self._write_backup, snapshot[0])
                pool.shutdown(wait=False)
            if sw.start_error:
                verdict = GateResult(False, sw.start_error, 0.0)
            else:
                verdict = gate.wait(tag, sw.new, sw.started_ns, contract=step.contract)
            steps["gate"] = round(steps.get("gate", 0) + verdict.seconds, 3)
            if verdict.healthy:
                verdict = self._cut_over(sw, verdict)
            if not verdict.healthy:
                failed = sw
                if len(plan.steps) > 1:
                    verdict.reason = f"step {n} ({', '.join(step.names)}): {verdict.reason}"
                break
            self.rollout.complete(sw, probation=watching)
            checkpoint(f"step{n}_done")
        verdict = self._with_backup(record, verdict)
        checkpoint("gated")
        if verdict.healthy and watching:
            verdict = self._watch(record, watch, baseline, switches, steps)
        if not verdict.healthy:
            return self._recover(record, verdict, switches, failed, plan, steps, t0)
        self.rollout.retire(switches)
        self._release_restarts()
        previous_good = self.state.last_good_tag()
        self.state.set_last_good_tag(tag)
        checkpoint("committed")
        root.keep_release(tag, keep=self.state.good_tags()[-KEPT_RELEASES:])
        # Keep the stopped containers of the release a `rollback` goes back to (the previous
        # good one): going back is then a start. What ran before this attempt is not always
        # that release (after a killed attempt it may be a release that never passed).
        self._drop_stopped(keep_tag=previous_good)
        return self._finish(record, "success", steps, t0, ExitCode.OK,
                            f"{tag} is healthy (gate {steps.get('gate', 0):.2f}s)")

    def _watch(self, record: dict[str, Any], watch: Watch, baseline: dict[str, float | None],
               switches: list[Switch], steps: dict[str, float]) -> GateResult:
        """Every step passed its gate: the release is on probation. Its restart policies stay
        set aside (a crash leaves it exited: the verdict is immediate), last_good_tag still
        names the previous release, whose stop-first containers are kept stopped for the way
        back. Each round is journaled, so a kill here leaves the measurements in history.
        Behind a proxy (SPEC §15) the proxied service's previous containers still run, out of
        rotation (Rollout.complete on probation): a failed watch points the proxy back at
        them, a passed one lets Rollout.retire stop them."""
        containers = [c for sw in switches for c in sw.new]
        since = min(sw.started_ns for sw in switches) / 1e9

        def journal(progress: WatchResult) -> None:
            self.state.update(watch=progress.as_dict())
            if progress.rounds:
                checkpoint("watching")  # a round measured and journaled

        result = watch.run(record["tag"], containers, since, baseline, on_round=journal)
        record["watch"] = result.as_dict()
        self.state.update(watch=record["watch"])
        steps["watch"] = result.seconds
        checkpoint("watched")
        if result.ok:
            log.info("watch passed (%.2fs, %d round(s)%s)", result.seconds, result.rounds, "".join(
                f"; {m.check}: {m.detail}" for m in result.last))
            return GateResult(True, "healthy", result.seconds)
        return GateResult(False, result.reason or "watch failed", result.seconds)

    def _cut_over(self, sw: Switch, verdict: GateResult) -> GateResult:
        """Behind a proxy, the gated step's new containers receive traffic only now (SPEC
        §15). A proxy that cannot be updated fails the step: it still serves the old ones."""
        from .proxy import ProxyError

        try:
            self.rollout.cut_over(sw)
        except ProxyError as exc:
            return GateResult(False, f"the proxy could not be updated: {REDACTOR(str(exc))[:400]}",
                              verdict.seconds)
        return verdict

    def _recover(self, record: dict[str, Any], verdict: GateResult, switches: list[Switch],
                 failed: Switch | None, plan: RolloutPlan, steps: dict[str, float],
                 t0: float) -> Outcome:
        """A step failed: every switched step goes back, in reverse order, to what it ran
        before the attempt; a service that ran nothing then gets the last good release.

        The service is down from the verdict until the old containers answer, so that path
        does only what it must: kill the failed containers and start the old ones.
        Diagnostics are read and the new containers removed once the old are starting."""
        tag = record["tag"]
        t_fail = time.monotonic()
        log.error("%s failed: %s", tag, verdict.reason)
        record["failure"] = {"reason": verdict.reason}
        self.state.update(failure=record["failure"])
        previous = self.state.last_good_tag()
        if previous is not None:
            log.warning("rolling back to %s", previous)
        restored: list[ContainerInfo] = []
        started_ns = time.time_ns()
        try:
            restored = self._walk_back(switches, failed, previous)
            checkpoint("rolled_back")
        except Exception as exc:  # the engine stayed away: report it, don't crash
            again = GateResult(False, f"{type(exc).__name__}: {REDACTOR(str(exc))[:300]}", 0.0)
        else:
            again = GateResult(True, "nothing to gate", 0.0)
        # No failed step (the watch, or a switch that could not be made): every new container
        # is a suspect.
        new = [c for sw in switches for c in sw.new]
        self._keep_diagnostics(record, verdict, failed.new if failed else new, new)
        if previous is None:
            return self._finish(record, "failed", steps, t0, ExitCode.ROLLBACK_FAILED,
                                f"{tag} failed ({verdict.reason}); there is no previous good release "
                                "to roll back to" + ("" if restored else "; nothing is running"))
        if again.healthy and restored:
            tags = {c.tag for c in restored}
            back_tag = tags.pop() if len(tags) == 1 else None
            judge = self.root.as_released(back_tag or previous)
            again = HealthGate(judge, self.engine).wait(
                back_tag, restored, started_ns,
                contract={s.name for s in plan.release_services if s.contract})
        record["rollback_gate"] = {"healthy": again.healthy, "reason": again.reason}
        steps["restore"] = _since(t_fail)
        if again.healthy:
            self._drop_stopped(keep_tag=None)
            return self._finish(record, "rolled_back", steps, t0, ExitCode.ROLLED_BACK,
                                f"{tag} failed ({verdict.reason}); rolled back to {previous}, "
                                "which is healthy")
        return self._finish(record, "failed", steps, t0, ExitCode.ROLLBACK_FAILED,
                            f"{tag} failed ({verdict.reason}); rollback to {previous} failed too "
                            f"({again.reason})")

    def _walk_back(self, switches: list[Switch], failed: Switch | None,
                   previous: str | None) -> list[ContainerInfo]:
        """rollout.walk_back, waiting for a Docker engine that is restarting (up to
        health_timeout); then the last good release for services that ran nothing before."""
        from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

        restored: list[ContainerInfo] = []
        for attempt in Retrying(retry=retry_if_exception(engine_down), reraise=True,
                                stop=stop_after_delay(self.root.settings.health_timeout),
                                wait=wait_fixed(1)):
            with attempt:
                restored = self.rollout.walk_back(switches, failed, ready=self._ready(previous))
        empty = [sw for sw in switches if not sw.old]
        if previous is not None and empty:
            prev_root = self.root.as_released(previous)
            prev_config = ComposeProject(prev_root.path, prev_root.compose_file, prev_root.project
                                         ).config(prev_root.compose_env(previous))
            for sw in reversed(empty):
                names = [s for s in sw.step.names if s in prev_config.raw.get("services", {})]
                step = Step(sw.step.order, tuple(s for s in sw.step.services if s.name in names))
                if step.services:
                    back = self.rollout.switch(step, previous, prev_root, prev_config, reuse=True,
                                               hold=lambda *_: None, avoid=sw.new)
                    if self.rollout.proxied(step) and self._ready(previous)(back.new, back.started_ns):
                        self.rollout.cut_over(back)  # the proxy still names the failed containers
                    self.rollout.settle_names(step)
                    restored += back.new
        return restored

    def _ready(self, previous: str | None) -> Callable[[list[ContainerInfo], int], bool]:
        """Gates containers of what ran before, by the criteria they passed with, before the
        proxy is pointed back at them."""
        def ready(containers: list[ContainerInfo], started_ns: int) -> bool:
            tags = {c.tag for c in containers}
            tag = tags.pop() if len(tags) == 1 else None
            judge = self.root.as_released(tag or previous)
            return HealthGate(judge, self.engine).wait(tag, containers, started_ns,
                                                       contract=(), stabilize=0).healthy
        return ready

    def _keep_diagnostics(self, record: dict[str, Any], verdict: GateResult,
                          failed: list[ContainerInfo], new: list[ContainerInfo]) -> None:
        """Journal why the release failed, then remove this attempt's containers (best
        effort: the next run removes whatever is left)."""
        record["failure"] = {"reason": verdict.reason,
                             **HealthGate(self.root, self.engine).diagnostics(verdict, failed)}
        self.state.update(failure=record["failure"])
        try:
            self.engine.remove(new)
        except Exception as exc:
            log.warning("could not remove the failed containers yet: %s", REDACTOR(str(exc)))

    def _with_backup(self, record: dict[str, Any], verdict: GateResult) -> GateResult:
        """Every gate passed: the release also needs its backup (there is no deploy without
        one), so a failed archive turns the verdict into a failure."""
        if not verdict.healthy:
            return verdict
        backup_error = self._collect_backup(record)
        if backup_error is None:
            return verdict
        return GateResult(False, f"backup failed: {backup_error}", verdict.seconds)

    def _collect_backup(self, record: dict[str, Any]) -> BaseException | None:
        """Wait for the archive being written; record its name, or return why it failed."""
        writing, self._writing = self._writing, None
        if writing is None:
            return None
        error = writing.exception()
        if error is None:
            record["backup"] = writing.result().name
            self.state.update(backup=record["backup"])
        return error

    def _finish(self, record: dict[str, Any], result: str, steps: dict[str, float], t0: float,
                code: ExitCode, message: str) -> Outcome:
        self._release_restarts()
        error = self._collect_backup(record)
        if error is not None:
            log.warning("the backup of this attempt failed: %s", REDACTOR(str(error)))
        # Every attempt that reached its backup prunes, failed ones too: a run of failing
        # releases must not fill the disk with archives.
        try:
            self.backups.prune()
        except OSError as exc:
            log.warning("could not prune old backups: %s", exc)
        for key in JOURNAL_ONLY:
            record.pop(key, None)
        record.update(result=result, finished_at=now_iso(), duration_s=_since(t0),
                      steps={k: round(v, 3) for k, v in steps.items()})
        checkpoint("finishing")
        self.state.finish(record)
        self._tell(record)
        return Outcome(code, message, record)

    def _tell(self, record: dict[str, Any]) -> None:
        """The attempt is in history: rewrite the metrics file from it, then notify. Neither
        changes the outcome; the notification waits at most notify.BUDGET_S."""
        settings = self.root.settings
        if settings.metrics_file:
            try:
                try:
                    release = self.running_tag()
                except Exception:  # the engine is away: the release last known good
                    release = self.state.last_good_tag()
                path = self.root.path / settings.metrics_file  # an absolute path stays itself
                metrics.write(path, self.root.project, self.state.history.records(), release,
                              healthy=record["result"] in ("success", "rolled_back"))
            except Exception as exc:
                log.warning("could not write metrics_file %s: %s", settings.metrics_file,
                            REDACTOR(str(exc))[:300])
        if settings.notify:
            notify.send(settings.notify, notify.notice(record, self.root.project))

    # --- restart policies and leftovers ----------------------------------------------------
    def _hold_restarts(self, trial: list[ContainerInfo], stopping: list[ContainerInfo]) -> None:
        """A release on trial runs without its restart policy: a crash leaves it exited, so
        the gate's verdict and its removal are immediate instead of racing Docker's restarts.

        The old containers that stop for it get `always` meanwhile (when they had
        `unless-stopped`): Docker starts an `always` container when the daemon starts even
        though it was stopped by hand, so a reboot while the agent is dead (kill -9 during
        the gate) brings the last good release back, and not the one on trial. The original
        policies are journaled before they change, and put back once the gate has spoken
        (after a kill, by the next run, from the journal)."""
        policies: dict[str, dict[str, Any]] = {}
        for c in trial:
            self._held.setdefault(c.id, c.restart_policy)
            policies[c.id] = {"Name": "no"}
        for c in stopping:
            if c.restart_policy.get("Name") == "unless-stopped":
                self._held.setdefault(c.id, c.restart_policy)
                policies[c.id] = {"Name": "always"}
        self.state.update(held_restarts=self._held)
        for cid, policy in policies.items():
            self.engine.set_restart_policy(cid, policy)

    def _release_restarts(self) -> None:
        for cid, policy in list(self._held.items()):
            try:
                self.engine.set_restart_policy(cid, policy)
            except Exception as exc:  # the engine is away: the next run's recovery retries
                log.warning("could not restore the restart policy of %s: %s", cid[:12], exc)
                continue
            del self._held[cid]

    def _drop_stopped(self, keep_tag: str | None) -> None:
        """Remove the stopped release containers, except those of `keep_tag` (a fast way
        back). Accessories are never touched."""
        self.engine.remove([
            c for c in self.engine.project_containers(self.root.project)
            if not c.running and c.role == "release" and (keep_tag is None or c.tag != keep_tag)
        ])

    def _write_backup(self, snapshot: BackupSnapshot) -> Path:
        t = time.monotonic()
        path = self.backups.write(snapshot)
        checkpoint("backed_up")
        log.info("backup %s written (%.2fs)", path.name, _since(t))
        return path

    def _previous_good(self, interrupted: dict[str, Any] | None) -> str:
        """The good release before the current one (SPEC §8 rollback without TAG).

        Right after a killed attempt, `rollback` finishes the job instead: a killed rollback's
        target, or, when a killed deploy left the last good release not running, that one."""
        current = self.state.last_good_tag()
        if interrupted is not None:
            if interrupted.get("action") == "rollback" and isinstance(interrupted.get("tag"), str):
                return str(interrupted["tag"])
            if current and self.running_tag() != current:
                return current
        line = self.state.release_line()
        if current in line:
            below = line[:len(line) - 1 - line[::-1].index(current)]
        else:  # last_good_tag came from elsewhere (a corrupt file, a hand edit): the newest
            below = line
        for t in reversed(below):
            if t != current:
                return t
        raise UsageError(
            "there is no earlier good release to roll back to"
            + (f" (only {current} passed the gate)" if current else ""),
            hint="name the version: obs-agent rollback vX.Y.Z",
        )


def _since(t: float) -> float:
    return round(time.monotonic() - t, 3)
