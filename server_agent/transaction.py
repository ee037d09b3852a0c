"""Transaction: one deploy or rollback, all or nothing, over a backend (compose or swarm).

    lock → recover a killed attempt → journal → preflight (the plan) → images → the
    accessories' dumps (deploy only) → accessories → jobs (deploy only) → pre_switch hooks →
    for each step: switch → gate → cut over → the accessories that depend on it →
    post_switch hooks → watch (deploy only) → commit; or walk the switched steps back and
    gate what ran before → (post_switch, on_rollback,) post_deploy hooks → record → report

The backup is captured the moment the step that carries the path contract stopped its old
units (the writer has stopped writing), and written while the gates run. The transaction
keeps nothing between attempts: what a step needs is an argument, what it learns is in its
return value or in the Attempt.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import report
from .attempt import Attempt, Outcome, log_tail_lines
from .backends.base import Backend, PreSwitchFailure, Release, S, Switched
from .backup import BackupArchive, BackupSnapshot, DumpFile
from .canary import CanaryResult, CanaryRun
from .checkpoint import checkpoint
from .common.errors import ExitCode, ObsError, PreflightError, UsageError
from .common.redact import REDACTOR
from .engine import engine_down
from .gate.criteria import GateCriteria
from .gate.loop import PASSED, Verdict, run_gate
from .hooks import HookContext, HookPlan, run_hook
from .plan import RolloutPlan
from .preflight import run_preflight
from .root import AgentRoot
from .state import ReleaseState
from .watch import Watch

log = logging.getLogger("obs.deploy")

# Good releases whose compose file and configuration stay kept under state/releases/.
KEPT_RELEASES = 10


class Transaction:
    def __init__(self, root: AgentRoot, backend: Backend[Any], state: ReleaseState) -> None:
        self.root = root
        self.backend = backend
        self.state = state
        self.backups = BackupArchive(root, backend.engine)
        # Today's hooks, for a rollback too: they are the host's (its trading pause), not a release's.
        self.hooks = HookPlan.of(root.settings.hooks)

    def deploy(self, tag: str) -> Outcome:
        return self._attempt("deploy", tag)

    def rollback(self, tag: str | None, *, force: bool = False) -> Outcome:
        return self._attempt("rollback", tag, force=force)

    def _attempt(self, action: str, tag: str | None, *, force: bool = False) -> Outcome:
        self.state.ensure()
        with self.state.lock.hold(action, tag or "previous"):
            interrupted = self.state.recover_interrupted()
            self.backend.recover(interrupted)
            target = tag or self._previous_good(interrupted)
            if action == "rollback" and not force:
                refuse_across_a_migration(self.state.history.records(), target)
            # A rollback re-creates and judges its release as that release passed its gate.
            root = self.root.as_released(target) if action == "rollback" else self.root
            attempt = Attempt(action, target)
            # Journal first, so a kill from here on is reported as an interrupted attempt.
            self.state.begin(attempt.journal())
            checkpoint("locked")
            try:
                plan, release = self._prepare(attempt, root)
            except ObsError:
                # Preflight or pull failed: nothing changed, so there is no attempt to record.
                self.state.discard()
                raise
            checkpoint("pulled")
            attempt.from_tag = self.backend.running_tag() or self.state.last_good_tag()
            self.state.begin(attempt.journal())
            checkpoint("journaled")
            criteria = GateCriteria.of(root.settings, root.path)
            dumps: tuple[DumpFile, ...] = ()
            try:
                try:
                    if action == "deploy":  # the data as the running release left it, then jobs
                        dumps = self._dump_accessories(attempt, plan, release)
                    self._start_accessories(plan, release, criteria, after_step=0)
                    if action == "deploy":  # jobs never run on a rollback
                        self._run_jobs(attempt, plan, release)
                    self._pre_switch(attempt)
                except PreSwitchFailure as exc:
                    attempt.failure = {"reason": REDACTOR(str(exc)), **exc.details}
                    if dumps:  # a failed migration may have changed the data: keep what it was
                        self._keep_dumps(attempt, dumps)
                    return self._finish(attempt, "failed", ExitCode.JOB_FAILED,
                                        f"{exc}; nothing running was switched")
                return self._roll_out(attempt, plan, release, criteria, dumps)
            finally:
                _close(dumps)
                self._post_switch(attempt)  # a crash of ours must not leave the pause on

    def _start_accessories(self, plan: RolloutPlan, release: Release, criteria: GateCriteria, *,
                           after_step: int) -> None:
        """The missing or stopped accessories due once `after_step` steps have passed (0:
        before the first); PreSwitchFailure when one does not keep running."""
        self.backend.start_accessories(plan.accessories_starting(after_step), release,
                                       lambda observer: run_gate(observer, criteria.for_accessories()))

    def _prepare(self, attempt: Attempt, root: AgentRoot) -> tuple[RolloutPlan, Release]:
        """Preflight and images: everything that must succeed before anything running is touched."""
        report_ = run_preflight(root, self.backend, attempt.tag)
        for note in report_.notes:
            log.info("preflight: %s", note)
        if not report_.ok:
            raise PreflightError(report_.problems)
        assert report_.config is not None and report_.plan is not None
        log.info("preflight ok (%.2fs)", attempt.took("preflight", attempt.t0))
        release = Release(attempt.tag, root, report_.config)
        t = time.monotonic()
        self.backend.ensure_images(report_.plan, release, refresh=attempt.action == "deploy")
        attempt.took("pull", t)
        # Secrets sent with --secrets-stdin: into .env only now that nothing refused the
        # attempt (a preflight or pull failure leaves .env as it was).
        self.root.write_incoming()
        attempt.sent_secrets = bool(self.root.incoming)
        return report_.plan, release

    def _run_jobs(self, attempt: Attempt, plan: RolloutPlan, release: Release) -> None:
        for job in plan.jobs:
            t = time.monotonic()
            log.info("running job %s with %s", job, release.tag)
            if job in plan.irreversible_jobs:
                # Recorded before it runs: one that fails half-way may have changed the data too.
                attempt.irreversible_jobs.append(job)
                self.state.update(irreversible_jobs=attempt.irreversible_jobs)
            self.backend.run_job(job, release)
            log.info("job %s done (%.2fs)", job, attempt.took(f"job:{job}", t))

    # --- the data of accessories -------------------------------------------------------------
    def _dump_accessories(self, attempt: Attempt, plan: RolloutPlan, release: Release
                          ) -> tuple[DumpFile, ...]:
        """Each running accessory with a backup command: its stdout streamed into a spool file
        that the attempt's archive takes in (PreSwitchFailure when one fails: exit 13)."""
        timeout = release.root.settings.backup_timeout
        dumps: list[DumpFile] = []
        try:
            for a in (a for a in plan.accessories if a.dumped):
                t = time.monotonic()
                dump = DumpFile(a.name, a.dump, self.backups.spool_file())
                dumps.append(dump)
                log.info("dumping %s: %s", a.name, " ".join(a.dump))
                res = self.backend.run_in_accessory(a.name, a.dump, timeout=timeout, stdout_fd=dump.fd)
                dump.bytes, dump.seconds = res.bytes, attempt.took(f"dump:{a.name}", t)
                if res.exit_code != 0:
                    how = (f"did not finish within backup_timeout={timeout:g}s" if res.exit_code is None
                           else f"exited with code {res.exit_code}")
                    raise PreSwitchFailure(
                        f"the dump of accessory {a.name} ({' '.join(a.dump)}) {how}",
                        {"dump": dump.record(), "log_tail": {f"dump {a.name}": res.stderr_tail}})
                log.info("dumped %s: %d bytes (%.2fs)", a.name, dump.bytes, dump.seconds)
        except BaseException:
            _close(tuple(dumps))
            raise
        attempt.dumps = [d.record() for d in dumps]
        self.state.update(dumps=attempt.dumps)
        return tuple(dumps)

    def _keep_dumps(self, attempt: Attempt, dumps: tuple[DumpFile, ...]) -> None:
        """A job failed after the dumps: they (and the files as they are) go into an archive
        now, since no switch will capture one."""
        try:
            path = self.backups.write(self.backups.capture(
                f"{attempt.from_tag or 'none'}-to-{attempt.tag}-job-failed", dumps))
        except Exception as exc:  # the failure is the job's; the archive is a courtesy
            log.warning("could not archive the dumps: %s", REDACTOR(str(exc)))
            return
        attempt.backup = path.name
        log.info("the dumps taken before the job are in %s", path.name)

    # --- the switch, step by step ----------------------------------------------------------
    def _roll_out(self, attempt: Attempt, plan: RolloutPlan, release: Release,
                  criteria: GateCriteria, dumps: tuple[DumpFile, ...]) -> Outcome:
        tag = attempt.tag
        capture_at = next((st for st in plan.steps if st.contract), plan.steps[0])
        # The watch is a deploy's probation: a rollback returns to a release that already
        # passed one, and watching it could walk back into the release being fled.
        watch = Watch(release.root.settings.watch)
        watching = attempt.action == "deploy" and watch.on
        baseline = watch.baseline() if watching else {}  # "just before the switch"
        canary = self._canary_plan(attempt, release)
        canary_baseline = canary.baseline(tag, attempt.from_tag or "") if canary else {}
        # A canary's first share goes to the proxied step's new units at its cutover.
        first_share = canary.plan.first_weight if canary else 100
        switched: list[Any] = []
        failed: Switched | None = None  # the step whose gate failed
        details: dict[str, Any] = {}  # what the failure record holds besides the reason
        writing: Future[Path] | None = None  # the backup being written, if any
        verdict = PASSED

        def capture() -> BackupSnapshot:
            return self.backups.capture(f"{attempt.from_tag or 'none'}-to-{tag}", dumps)

        for n, step in enumerate(plan.steps, 1):
            try:
                # A rollback reuses the release's stopped containers, unless secrets came
                # with it: those containers hold the values they were created with.
                sw = self.backend.switch(step, release, reuse=attempt.action == "rollback"
                                         and not attempt.sent_secrets,
                                         capture=capture if step is capture_at else None)
            except Exception as exc:
                if not switched or engine_down(exc):
                    # The switch failed before anything running was touched.
                    self._finish(attempt, "failed", ExitCode.BUG, "", writing)
                    raise
                verdict = Verdict(False, f"could not switch {', '.join(step.names)}: "
                                  f"{REDACTOR(str(exc))[:300]}", 0.0)
                break
            switched.append(sw)
            attempt.add("swap", sw.swap_s)
            checkpoint("started")
            if sw.snapshot is not None and writing is None:  # written while the gates watch
                writing = self._write_in_background(sw.snapshot)
            if sw.start_error:
                verdict = Verdict(False, sw.start_error, 0.0)
            else:
                verdict = run_gate(self.backend.observe(sw), criteria.for_step(contract=sw.contract))
            attempt.add("gate", verdict.seconds)
            if verdict.healthy:
                verdict = self._cut_over(sw, verdict, first_share)
            if not verdict.healthy:
                failed = sw
                if len(plan.steps) > 1:
                    verdict = verdict.within(f"step {n} ({', '.join(step.names)})")
                break
            # On probation (a canary or a watch) the proxied service's old units stand by.
            self.backend.settle(sw, probation=watching or canary is not None)
            try:  # accessories that depend on this step's services (a project's own nginx)
                self._start_accessories(plan, release, criteria, after_step=n)
            except PreSwitchFailure as exc:
                failed, details = sw, exc.details
                verdict = Verdict(False, REDACTOR(str(exc)), verdict.seconds)
                if len(plan.steps) > 1:
                    verdict = verdict.within(f"after step {n} ({', '.join(step.names)})")
                break
            checkpoint(f"step{n}_done")
        verdict = self._with_backup(attempt, verdict, writing)
        writing = None
        checkpoint("gated")
        if verdict.healthy:  # the switch is over (a failed one: once it went back, in _finish)
            self._post_switch(attempt)
        if verdict.healthy and canary is not None:
            verdict = self._canary(attempt, canary, canary_baseline, switched)
        if verdict.healthy and watching:
            verdict = self._watch(attempt, watch, baseline, switched)
        if not verdict.healthy:
            return self._walk_back(attempt, verdict, switched, failed, details)
        # Keep the stopped units of the release a `rollback` goes back to (the previous good
        # one): what ran before this attempt is not always that release (after a killed
        # attempt it may be a release that never passed).
        self.backend.commit(switched, keep_tag=self.state.last_good_tag())
        self.state.set_last_good_tag(tag)
        checkpoint("committed")
        release.root.keep_release(tag, keep=self.state.good_tags()[-KEPT_RELEASES:])
        return self._finish(attempt, "success", ExitCode.OK,
                            f"{tag} is healthy (gate {attempt.steps.get('gate', 0):.2f}s)")

    # --- hooks -------------------------------------------------------------------------------
    def _hook(self, attempt: Attempt, hook: str, result: str | None = None) -> bool:
        """Run one hook's actions, recorded in the attempt (and journaled); True when all passed."""
        runs = run_hook(self.hooks, hook, HookContext(attempt.action, attempt.tag, attempt.from_tag, result),
                        self.backend)
        if runs:
            attempt.hooks += [r.record() for r in runs]
            self.state.update(hooks=attempt.hooks)
        return all(r.ok for r in runs)

    def _pre_switch(self, attempt: Attempt) -> None:
        """PreSwitchFailure (exit 13, nothing switched) when an action fails."""
        if not self.hooks.pre_switch:
            return
        attempt.paused = True
        if not self._hook(attempt, "pre_switch"):
            failed = attempt.hooks[-1]
            raise PreSwitchFailure(f"pre_switch hook {failed['action']} failed: {failed['detail']}",
                                   {"hook": failed})

    def _post_switch(self, attempt: Attempt, result: str | None = None) -> None:
        """Once per attempt whose pre_switch ran, whatever came of the switch."""
        if attempt.paused:
            attempt.paused = False
            self._hook(attempt, "post_switch", result)

    def _cut_over(self, sw: Switched, verdict: Verdict, weight: int = 100) -> Verdict:
        """Behind a proxy, the gated step's new units receive traffic only now (`weight`
        percent of it: a canary's first step). A proxy that cannot be updated fails the
        step: it still serves the old ones."""
        from .proxy import ProxyError

        try:
            self.backend.cut_over(sw, weight)
        except ProxyError as exc:
            return Verdict(False, f"the proxy could not be updated: {REDACTOR(str(exc))[:400]}",
                           verdict.seconds)
        return verdict

    def _canary_plan(self, attempt: Attempt, release: Release) -> CanaryRun | None:
        """The canary of a deploy (never of a rollback: it returns to a release that served)."""
        settings = release.root.settings
        if attempt.action != "deploy" or settings.canary is None or settings.proxy is None:
            return None
        return CanaryRun.of(settings.canary, settings.proxy, self.state.dir)

    def _canary(self, attempt: Attempt, canary: CanaryRun, baseline: dict[str, float | None],
                switched: list[Any]) -> Verdict:
        """Every step gated and the canary has its first share: the steps of agent.canary,
        then 100 % (promotion), or a failed verdict that the walk back turns into 100 % for
        the release that served (the proxy still sends it the rest meanwhile)."""
        from .proxy import ProxyError

        stable = attempt.from_tag or "-"
        shown_weight = -1

        def split(weight: int) -> tuple[list[str], list[str]]:
            addresses = self.backend.split(switched, weight)
            assert addresses is not None
            return addresses

        def journal(progress: CanaryResult) -> None:
            nonlocal shown_weight
            attempt.canary = progress.as_dict()
            self.state.update(canary=attempt.canary)
            if progress.weight != shown_weight:  # a new share: the metric follows it
                shown_weight = progress.weight
                report.canary_metric(self.root, self.state, attempt.tag, progress.weight)
                checkpoint(f"canary_{progress.weight}")

        since = min(sw.started_ns for sw in switched) / 1e9
        try:
            # The cutover sent the first share already; None: nothing served before, the
            # new release has 100 % (a first deploy).
            if self.backend.split(switched, canary.plan.first_weight) is None:
                log.info("canary: no release served before %s: it receives 100 %% at once", attempt.tag)
                return PASSED
            canary.runner.begin()
            result = canary.runner.run(attempt.tag, stable, split, self.backend.watched(switched),
                                       since, baseline, on_round=journal)
        except ProxyError as exc:
            return Verdict(False, f"canary: the proxy could not be updated: {REDACTOR(str(exc))[:400]}", 0.0)
        if result.ok:
            try:
                split(100)
            except ProxyError as exc:
                result.ok = False
                result.reason = ("canary: promotion failed, the proxy could not be updated: "
                                 f"{REDACTOR(str(exc))[:400]}")
        attempt.canary = result.as_dict()
        self.state.update(canary=attempt.canary)
        attempt.add("canary", result.seconds)
        report.canary_metric(self.root, self.state, attempt.tag, 100 if result.ok else 0)
        report.canary_notice(self.root, attempt.journal(), result.ok)
        checkpoint("canary_done")
        if result.ok:
            log.info("canary %s promoted to 100 %% (%.2fs, %d step(s))", attempt.tag,
                     result.seconds, len(result.steps))
            return Verdict(True, "healthy", result.seconds)
        return Verdict(False, result.reason or "canary failed", result.seconds)

    def _watch(self, attempt: Attempt, watch: Watch, baseline: dict[str, float | None],
               switched: list[Any]) -> Verdict:
        """Every step passed its gate: the release is on probation. last_good_tag still names
        the previous release, so a kill -9 meanwhile leaves the state a rollback expects."""
        since = min(sw.started_ns for sw in switched) / 1e9

        def journal(progress: Any) -> None:
            self.state.update(watch=progress.as_dict())
            if progress.rounds:
                checkpoint("watching")  # a round measured and journaled

        result = watch.run(attempt.tag, self.backend.watched(switched), since, baseline, on_round=journal)
        attempt.watch = result.as_dict()
        self.state.update(watch=attempt.watch)
        attempt.add("watch", result.seconds)
        checkpoint("watched")
        if result.ok:
            log.info("watch passed (%.2fs, %d round(s)%s)", result.seconds, result.rounds, "".join(
                f"; {m.check}: {m.detail}" for m in result.last))
            return Verdict(True, "healthy", result.seconds)
        return Verdict(False, result.reason or "watch failed", result.seconds)

    # --- the way back ------------------------------------------------------------------------
    def _walk_back(self, attempt: Attempt, verdict: Verdict, switched: list[S], failed: S | None,
                   details: dict[str, Any]) -> Outcome:
        """A step (or the watch) failed: every switched step goes back, in reverse order, to
        what it ran before the attempt, and what runs again is gated by the criteria of the
        release it is."""
        tag = attempt.tag
        t_fail = time.monotonic()
        log.error("%s failed: %s", tag, verdict.reason)
        attempt.failure = {"reason": verdict.reason}
        self.state.update(failure=attempt.failure)
        previous = self.state.last_good_tag()
        if previous is not None:
            log.warning("rolling back to %s", previous)
        back = None
        again = PASSED
        try:
            back = self.backend.walk_back(switched, failed, previous)
            checkpoint("rolled_back")
        except Exception as exc:  # the engine stayed away: report it, don't crash
            again = Verdict(False, f"{type(exc).__name__}: {REDACTOR(str(exc))[:300]}", 0.0)
        attempt.failure = {"reason": verdict.reason, **self.backend.diagnostics(
            [failed] if failed is not None else [], switched, verdict), **details}
        self.state.update(failure=attempt.failure)
        removed = back.removed if back is not None else ()
        restored = back.restored if back is not None else None
        if previous is None or (restored is None and removed):
            lost = (f"; removed {', '.join(removed)}" if removed
                    else "; nothing is running" if restored is None else "")
            if not again.healthy:
                lost += f"; going back failed: {again.reason}"
            return self._finish(attempt, "failed", ExitCode.ROLLBACK_FAILED,
                                f"{tag} failed ({verdict.reason}); there is no previous good release "
                                "to roll back to" + lost)
        back_tag = restored.tag if restored is not None else None
        if again.healthy and restored is not None:
            judge = self.root.as_released(back_tag or previous)
            again = run_gate(self.backend.observe(restored), GateCriteria.of(judge.settings, judge.path)
                             .for_step(contract=restored.contract))
        attempt.rollback_gate = {"healthy": again.healthy, "reason": again.reason}
        attempt.took("restore", t_fail)
        if attempt.irreversible_jobs:
            attempt.warnings.append(
                f"job {', '.join(attempt.irreversible_jobs)} of {tag} (not reversible) ran before "
                f"the rollback: the data may be newer than {back_tag or previous} expects"
                + (f"; the backup taken before it is {attempt.backup}" if attempt.backup else ""))
        if again.healthy:
            self.backend.walked_back()
            return self._finish(attempt, "rolled_back", ExitCode.ROLLED_BACK,
                                f"{tag} failed ({verdict.reason}); rolled back to {back_tag or previous}, "
                                "which is healthy" + "".join(f"; warning: {w}" for w in attempt.warnings))
        return self._finish(attempt, "failed", ExitCode.ROLLBACK_FAILED,
                            f"{tag} failed ({verdict.reason}); rollback to {back_tag or previous} failed "
                            f"too ({again.reason})")

    # --- the backup --------------------------------------------------------------------------
    def _write_in_background(self, snapshot: BackupSnapshot) -> Future[Path]:
        pool = ThreadPoolExecutor(max_workers=1)
        future = pool.submit(self._write_backup, snapshot)
        pool.shutdown(wait=False)
        return future

    def _write_backup(self, snapshot: BackupSnapshot) -> Path:
        t = time.monotonic()
        path = self.backups.write(snapshot)
        checkpoint("backed_up")
        log.info("backup %s written (%.2fs)", path.name, round(time.monotonic() - t, 3))
        return path

    def _with_backup(self, attempt: Attempt, verdict: Verdict, writing: Future[Path] | None) -> Verdict:
        """The backup is part of the release (there is no deploy without one): a failed
        archive turns a passed verdict into a failure."""
        error = self._collect_backup(attempt, writing)
        if error is None or not verdict.healthy:
            if error is not None:
                log.warning("the backup of this attempt failed: %s", REDACTOR(str(error)))
            return verdict
        return Verdict(False, f"backup failed: {error}", verdict.seconds)

    def _collect_backup(self, attempt: Attempt, writing: Future[Path] | None) -> BaseException | None:
        """Wait for the archive being written; record its name, or return why it failed."""
        if writing is None:
            return None
        error = writing.exception()
        if error is None:
            attempt.backup = writing.result().name
            self.state.update(backup=attempt.backup)
        return error

    # --- the end -----------------------------------------------------------------------------
    def _finish(self, attempt: Attempt, result: str, code: ExitCode, message: str,
                writing: Future[Path] | None = None) -> Outcome:
        self.backend.finish()
        error = self._collect_backup(attempt, writing)
        if error is not None:
            log.warning("the backup of this attempt failed: %s", REDACTOR(str(error)))
        # Every attempt that reached its backup prunes, failed ones too: a run of failing
        # releases must not fill the disk with archives.
        try:
            self.backups.prune()
        except OSError as exc:
            log.warning("could not prune old backups: %s", exc)
        # The result is known: the hooks that are told it (their failures never change it).
        self._post_switch(attempt, result)
        if attempt.action == "rollback" or attempt.rollback_gate is not None:
            self._hook(attempt, "on_rollback", result)
        self._hook(attempt, "post_deploy", result)
        if attempt.failure is not None and {"job", "accessories", "dump"} & attempt.failure.keys():
            # The cause is in their own log ("host not found in upstream"): shown, not hidden.
            message = "\n  ".join([message, *log_tail_lines(attempt.failure)])
        record = attempt.record(result)
        checkpoint("finishing")
        self.state.finish(record)
        report.publish(self.root, self.state, record, self._release_now)
        return Outcome(code, message, record)

    def _release_now(self) -> str | None:
        try:
            return self.backend.running_tag()
        except Exception:  # the engine is away: the release last known good
            return self.state.last_good_tag()

    def _previous_good(self, interrupted: dict[str, Any] | None) -> str:
        """The good release before the current one (rollback without TAG).

        Right after a killed attempt, `rollback` finishes the job instead: a killed rollback's
        target, or, when a killed deploy left the last good release not running, that one."""
        current = self.state.last_good_tag()
        if interrupted is not None:
            if interrupted.get("action") == "rollback" and isinstance(interrupted.get("tag"), str):
                return str(interrupted["tag"])
            if current and self.backend.running_tag() != current:
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


def refuse_across_a_migration(records: list[dict[str, Any]], target: str) -> None:
    """A rollback to a release older than one whose deploy ran a job labelled
    obsdeploy.reversible "false" would run that release against data it does not know:
    UsageError (exit 2) naming the job, the release and the archive (--force overrides)."""
    from .common.versions import older_than

    for rec in reversed(records):
        jobs, ran = rec.get("irreversible_jobs"), rec.get("tag")
        if not jobs or not isinstance(ran, str) or not older_than(target, ran):
            continue
        archive = rec.get("backup")
        raise UsageError(
            f"refusing to roll back to {target}: job {', '.join(map(str, jobs))} of {ran} "
            f"(labelled obsdeploy.reversible: \"false\") ran at {rec.get('started_at')}, "
            f"and {target} is older than {ran}: it would run against data changed for {ran}"
            + (f"; the backup taken just before it is {archive}" if archive else ""),
            hint=(f"restore the data first (obs-agent backup restore {archive} --accessories), "
                  if archive else "") + f"then: obs-agent rollback {target} --force")


def _close(dumps: tuple[DumpFile, ...]) -> None:
    for d in dumps:
        d.close()
