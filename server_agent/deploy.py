"""Deployer: the transaction of SPEC §7, and rollback, as readable steps.

    lock → recover a killed attempt → preflight → pull → journal → switch (backup captured
    the moment the old release stopped) → health gate → commit, or roll back and gate that.

The switch creates the new release's containers with compose *beside* the running ones, then
stops the old and starts the new: the service is down only for a stop and a start. The
previous release's containers are kept, stopped, so going back is a start, not a re-create.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backup import BackupArchive, BackupSnapshot
from .compose import ComposeConfig, ComposeProject
from .engine import ContainerInfo, Engine, newest_per_service, running_tag
from .errors import ExitCode, ObsError, PreflightError, UsageError
from .health import GateResult, HealthGate
from .preflight import run_preflight
from .redact import REDACTOR
from .root import AgentRoot
from .state import JOURNAL_ONLY, ReleaseState, now_iso

log = logging.getLogger("obs.deploy")

DIE_AT_ENV = "OBS_AGENT_DIE_AT"


def checkpoint(step: str) -> None:
    """Test hook for the crash-safety suite: `OBS_AGENT_DIE_AT=step` kills the agent here."""
    if os.environ.get(DIE_AT_ENV) == step:
        log.warning("%s=%s: killing myself", DIE_AT_ENV, step)
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Outcome:
    exit_code: ExitCode
    message: str
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class Switch:
    old: list[ContainerInfo]
    new: list[ContainerInfo]
    swap_s: float
    started_ns: int  # time.time_ns() just before the new containers were started
    start_error: str | None = None


class Deployer:
    def __init__(self, root: AgentRoot, engine: Engine) -> None:
        self.root = root
        self.engine = engine
        self.compose = ComposeProject(root.path, root.compose_file, root.project)
        self.state = ReleaseState(root.state_dir)
        self.backups = BackupArchive(root)
        self.gate = HealthGate(root, engine)
        # Restart policies set aside while a release is on trial (see _hold_restarts).
        self._held: dict[str, dict[str, Any]] = {}
        self._writing: Future[Path] | None = None  # the backup being written, if any

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
                config = self._prepare(action, target, steps, t0)
            except ObsError:
                # Preflight or pull failed: nothing changed, so there is no attempt to record.
                self.state.discard()
                raise
            checkpoint("pulled")
            record["from_tag"] = (running_tag(self.engine.project_containers(self.root.project))
                                  or self.state.last_good_tag())
            self.state.begin(record)
            checkpoint("journaled")
            return self._switch_and_gate(record, config, steps, t0)

    def _prepare(self, action: str, target: str, steps: dict[str, float], t0: float) -> ComposeConfig:
        """Preflight and pull: everything that must succeed before anything running is touched."""
        report = run_preflight(self.root, self.engine, target)
        for note in report.notes:
            log.info("preflight: %s", note)
        if not report.ok:
            raise PreflightError(report.problems)
        assert report.config is not None
        steps["preflight"] = _since(t0)
        log.info("preflight ok (%.2fs)", steps["preflight"])
        t = time.monotonic()
        self._pull(report.config.images, always=(action == "deploy"))
        steps["pull"] = _since(t)
        return report.config

    def _switch_and_gate(self, record: dict[str, Any], config: ComposeConfig,
                         steps: dict[str, float], t0: float) -> Outcome:
        tag = record["tag"]
        snapshot: list[BackupSnapshot] = []

        def capture() -> None:
            snapshot.append(self.backups.capture(f"{record['from_tag'] or 'none'}-to-{tag}"))

        try:
            switch = self._switch(tag, _service_names(config), reuse=record["action"] == "rollback",
                                  on_stopped=capture)
        except Exception:
            # Creating the containers failed before anything running was touched.
            self._finish(record, "failed", steps, t0, ExitCode.BUG, "")
            raise
        steps["swap"] = switch.swap_s
        checkpoint("started")
        # The archive is written while the gate watches the new release.
        pool = ThreadPoolExecutor(max_workers=1)
        self._writing = pool.submit(self._write_backup, snapshot[0])
        pool.shutdown(wait=False)
        if switch.start_error:
            gate = GateResult(False, f"could not start {tag}: {switch.start_error}", 0.0)
        else:
            gate = self.gate.wait(tag, switch.new, switch.started_ns)
        steps["gate"] = gate.seconds
        if gate.healthy:
            backup_error = self._collect_backup(record)
            if backup_error is not None:
                gate = GateResult(False, f"backup failed: {backup_error}", gate.seconds)
        # A failed release is rolled back at once; its archive is collected when it is written.
        checkpoint("gated")
        if gate.healthy:
            self._release_restarts()
            self.state.set_last_good_tag(tag)
            checkpoint("committed")
            self._drop_stopped(keep=switch.old)
            self.backups.prune()
            return self._finish(record, "success", steps, t0, ExitCode.OK,
                                f"{tag} is healthy (gate {gate.seconds:.2f}s)")
        return self._recover(record, gate, switch, steps, t0)

    def _recover(self, record: dict[str, Any], gate: GateResult, switch: Switch,
                 steps: dict[str, float], t0: float) -> Outcome:
        """The release failed its gate: go back to the last good release, keep diagnostics.

        The service is down from the failed release's verdict until the previous release
        answers, so that path does only what it must: kill the failed containers (no grace
        period for a broken release) and start the kept ones. Diagnostics are read and the
        failed containers removed once the previous release is starting."""
        tag = record["tag"]
        t_fail = time.monotonic()
        log.error("%s failed: %s", tag, gate.reason)
        record["failure"] = {"reason": gate.reason}
        self.state.update(failure=record["failure"])
        previous = self.state.last_good_tag()
        if previous is None:
            try:
                self.engine.kill(switch.new)
                checkpoint("failed_stopped")
                if switch.old:  # put back what ran before, though it never passed a gate here
                    self.engine.start(switch.old)
                self._keep_diagnostics(record, gate, switch.new)
            except Exception as exc:
                log.error("cleaning up after %s failed: %s", tag, REDACTOR(str(exc)))
            return self._finish(record, "failed", steps, t0, ExitCode.ROLLBACK_FAILED,
                                f"{tag} failed ({gate.reason}); there is no previous good release "
                                "to roll back to" + ("" if switch.old else "; nothing is running"))
        log.warning("rolling back to %s", previous)
        try:
            again = self._restore(previous, switch, record, gate)
        except Exception as exc:  # the engine stayed away: report it, don't crash
            again = GateResult(False, f"{type(exc).__name__}: {REDACTOR(str(exc))[:300]}", 0.0)
        record["rollback_gate"] = {"healthy": again.healthy, "reason": again.reason}
        steps["restore"] = _since(t_fail)
        if again.healthy:
            self._drop_stopped(keep=[])
            return self._finish(record, "rolled_back", steps, t0, ExitCode.ROLLED_BACK,
                                f"{tag} failed ({gate.reason}); rolled back to {previous}, "
                                "which is healthy")
        return self._finish(record, "failed", steps, t0, ExitCode.ROLLBACK_FAILED,
                            f"{tag} failed ({gate.reason}); rollback to {previous} failed too "
                            f"({again.reason})")

    def _restore(self, previous: str, switch: Switch, record: dict[str, Any],
                 failed: GateResult) -> GateResult:
        """Kill the failed release, start `previous` (its kept containers when there), then
        keep the failed release's diagnostics, remove it and gate `previous`. A Docker engine
        that is restarting is waited for, up to health_timeout."""
        from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

        back: Switch | None = None
        for attempt in Retrying(retry=retry_if_exception(_engine_down), reraise=True,
                                stop=stop_after_delay(self.root.settings.health_timeout),
                                wait=wait_fixed(1)):
            with attempt:
                self.engine.kill(switch.new)
                checkpoint("failed_stopped")
                # The failed release ran the compose file's services; no need to render it again.
                services = sorted({c.service for c in switch.new}) or _service_names(
                    self.compose.config(self.root.compose_env(previous)))
                back = self._switch(previous, services, reuse=True, on_stopped=None,
                                    avoid=switch.new)
        assert back is not None, "tenacity returns only after a successful attempt"
        checkpoint("rolled_back")
        self._keep_diagnostics(record, failed, switch.new)
        if back.start_error:
            return GateResult(False, f"could not start {previous}: {back.start_error}", 0.0)
        return self.gate.wait(previous, back.new, back.started_ns)

    def _keep_diagnostics(self, record: dict[str, Any], gate: GateResult,
                          failed: list[ContainerInfo]) -> None:
        """Journal why the release failed, then remove its containers (best effort: the next
        run removes whatever is left)."""
        record["failure"] = {"reason": gate.reason, **self.gate.diagnostics(gate, failed)}
        self.state.update(failure=record["failure"])
        try:
            self.engine.remove(failed)
        except Exception as exc:
            log.warning("could not remove the failed containers yet: %s", REDACTOR(str(exc)))

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
        for key in JOURNAL_ONLY:
            record.pop(key, None)
        record.update(result=result, finished_at=now_iso(), duration_s=_since(t0),
                      steps={k: round(v, 3) for k, v in steps.items()})
        checkpoint("finishing")
        self.state.finish(record)
        return Outcome(code, message, record)

    # --- switching containers --------------------------------------------------------------
    def _switch(self, tag: str, services: list[str], *, reuse: bool,
                on_stopped: Callable[[], None] | None, avoid: Sequence[ContainerInfo] = ()) -> Switch:
        """Start `tag`: its kept stopped containers when `reuse` (never those in `avoid`, a
        failed attempt at the same tag), else new ones created beside the running ones."""
        existing = self.engine.project_containers(self.root.project)
        running = [c for c in existing if c.running]
        avoid_ids = {c.id for c in avoid}
        stopped = [c for c in existing if not c.running and c.id not in avoid_ids]

        new = _one_per_service([c for c in stopped if c.tag == tag], services) if reuse else None
        if new is None:
            # Keep at most the last good release's stopped containers, for a fast way back.
            keep_tag = self.state.last_good_tag()
            keep = _one_per_service([c for c in stopped if c.tag == keep_tag != tag], services)
            drop = [c for c in stopped if c not in (keep or [])]
            self.engine.remove(drop)
            counts = Counter(c.service for c in existing if c not in drop)
            before = {c.id for c in existing}
            self.compose.create({s: counts[s] + 1 for s in services}, self.root.compose_env(tag))
            created = [c for c in self.engine.project_containers(self.root.project)
                       if c.id not in before]
            new = _one_per_service(created, services)
            if new is None:
                raise ObsError(f"compose created {[c.name for c in created]} for {tag}; "
                               f"expected one container per service {services}")
        self._hold_restarts(new)
        t = time.monotonic()
        self.engine.stop(running)
        if on_stopped is not None:
            on_stopped()
        checkpoint("stopped")
        started_ns = time.time_ns()
        try:
            self.engine.start(new)
        except Exception as exc:  # e.g. its port is taken: a failed release, not a crash of ours
            if _engine_down(exc):
                raise
            log.error("starting %s failed: %s", tag, REDACTOR(str(exc)))
            return Switch(old=running, new=new, swap_s=_since(t), started_ns=started_ns,
                          start_error=REDACTOR(str(exc))[:500])
        swap_s = _since(t)
        log.info("started %s (%s) in %.2fs", tag, ", ".join(c.name for c in new), swap_s)
        return Switch(old=running, new=new, swap_s=swap_s, started_ns=started_ns)

    def _hold_restarts(self, containers: list[ContainerInfo]) -> None:
        """A release on trial runs without its restart policy: a crash leaves it exited, so
        the gate's verdict and its removal are immediate instead of racing Docker's restarts.
        The policies are put back once the gate has spoken (and, after a kill, by the next
        run, from the journal)."""
        for c in containers:
            self._held.setdefault(c.id, c.restart_policy)
            self.engine.set_restart_policy(c.id, {"Name": "no"})
        self.state.update(held_restarts=self._held)

    def _release_restarts(self) -> None:
        for cid, policy in list(self._held.items()):
            try:
                self.engine.set_restart_policy(cid, policy)
            except Exception as exc:  # the engine is away: the next run's recovery retries
                log.warning("could not restore the restart policy of %s: %s", cid[:12], exc)
                continue
            del self._held[cid]

    def _drop_stopped(self, keep: list[ContainerInfo]) -> None:
        keep_ids = {c.id for c in keep}
        self.engine.remove([
            c for c in self.engine.project_containers(self.root.project)
            if not c.running and c.id not in keep_ids
        ])

    def _running(self) -> list[ContainerInfo]:
        return [c for c in self.engine.project_containers(self.root.project)
                if c.running]

    def _pull(self, images: list[str], *, always: bool) -> None:
        missing = images if always else [i for i in images if not self.engine.has_image(i)]
        self.engine.pull(missing)

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
            if current and not any(c.tag == current for c in self._running()):
                return current
        for t in reversed(self.state.good_tags()):
            if t != current:
                return t
        raise UsageError(
            "there is no earlier good release to roll back to"
            + (f" (only {current} passed the gate)" if current else ""),
            hint="name the version: obs-agent rollback vX.Y.Z",
        )


def _service_names(config: ComposeConfig) -> list[str]:
    return sorted(s.name for s in config.services)


def _engine_down(exc: BaseException) -> bool:
    """The Docker engine is unreachable (restarting), as opposed to refusing something."""
    import requests

    from .engine import EngineUnreachable

    return isinstance(exc, EngineUnreachable | requests.exceptions.ConnectionError)


def _one_per_service(containers: list[ContainerInfo], services: list[str]) -> list[ContainerInfo] | None:
    """The newest container of each service, or None unless every service has one."""
    by_service = newest_per_service(containers)
    if sorted(by_service) != services:
        return None
    return [by_service[s] for s in services]


def _since(t: float) -> float:
    return round(time.monotonic() - t, 3)
