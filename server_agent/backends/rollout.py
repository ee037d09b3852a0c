"""Rollout: carries out the steps of a RolloutPlan on the engine, and walks them back.

One step switches its services from what runs now to `tag`:

    stop-first   create the new containers beside the old (compose, under compose's names and
                 labels), stop the old, start the new: the service is down for one stop and one
                 start. The old are kept, stopped, for a fast way back.
    start-first  create and start the new beside the old; the old keep running until the
                 step's gate has passed, then stop with their stop_grace_period.

With a proxy (SPEC §15) its service is start-first; once the step's gate has passed,
`cut_over` points the proxy at the new containers, and `complete` lets the old drain before
it stops them. Walking such a step back starts the old containers first when they no longer
run, waits until they answer, points the proxy back at them, then stops the new.

A single writer (SPEC §19) is stop-first everywhere: behind a proxy that can hold, the
proxy holds requests from just before its old container stops until its new one passed its
gate (`held`), then sends them on; walking it back holds again, stops the new, starts the
old, gates it, then sends the requests to it. Two of its containers never run at once.

A service's `container_name` is taken by its new container once the old one no longer runs
(compose cannot create a second container under the same name, so the new one is created
under compose's own name and renamed: the downtime stays one stop and one start).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..checkpoint import checkpoint
from ..common.errors import ObsError
from ..common.redact import REDACTOR
from ..compose import ComposeConfig, ComposeProject, release_override
from ..engine import ContainerInfo, Engine, engine_down
from ..plan import Step
from ..proxy import ProxyCutover
from ..root import AgentRoot
from ..state import ReleaseState, atomic_write
from .base import Capture, Switched

log = logging.getLogger("obs.rollout")

@dataclass
class Switch(Switched):
    """A compose step switched: its containers before and after."""

    old: list[ContainerInfo] = field(default_factory=list)  # the step's containers that ran before it
    new: list[ContainerInfo] = field(default_factory=list)
    cut_over: bool = False  # the proxy was pointed at `new`
    cut_over_at: float = 0.0  # time.monotonic() of that change
    # The proxied service's old containers, still running out of rotation while the release
    # is on probation (the watch), until `retire` stops them or a walk back points the proxy
    # at them again.
    standing_by: list[ContainerInfo] = field(default_factory=list)


# The longest the requests in flight at a held single writer's old container get to finish
# before it stops (its drain, but at most this: the arriving requests wait meanwhile).
HELD_DRAIN_SECONDS = 1.0

# Gates containers started at a time.time_ns(): True when they are healthy.
Ready = Callable[[list[ContainerInfo], int], bool]


class Rollout:
    def __init__(self, root: AgentRoot, engine: Engine, state: ReleaseState,
                 proxy: ProxyCutover | None = None) -> None:
        self.root = root
        self.engine = engine
        self.state = state
        self.proxy = proxy

    def proxied(self, step: Step) -> bool:
        return self.proxy is not None and self.proxy.service in step.names

    def held(self, step: Step) -> bool:
        """The step's proxied service is a single writer behind a proxy that holds."""
        return (self.proxy is not None and self.proxied(step) and self.proxy.driver.can_hold
                and step.services_by_name[self.proxy.service].single_writer)

    def containers(self, services: Sequence[str]) -> list[ContainerInfo]:
        return [c for c in self.engine.project_containers(self.root.project) if c.service in services]

    # --- one step forward -------------------------------------------------------------------
    def switch(self, step: Step, tag: str, root: AgentRoot, config: ComposeConfig, *,
               reuse: bool, hold: Callable[[list[ContainerInfo], list[ContainerInfo]], None],
               capture: Capture | None = None,
               avoid: Sequence[ContainerInfo] = ()) -> Switch:
        """Start `tag` for the step's services: their kept stopped containers of `tag` when
        `reuse` (never those in `avoid`, a failed attempt at the same tag), else new ones
        created from `root`'s compose file with `config`'s definitions."""
        existing = self.containers(step.names)
        old = [c for c in existing if c.running]
        new = self._reusable(step, tag, existing, avoid) if reuse else {}
        missing = [s for s in step.names if s not in new]
        if missing:
            new.update(self._create(step, tag, root, config, existing, missing, avoid))
        started = [c for s in step.names for c in new[s]]
        stop_first = [c for c in old if step.services_by_name[c.service].strategy == "stop-first"]
        hold(started, stop_first)
        t = time.monotonic()
        if self.held(step) and old:
            assert self.proxy is not None
            self.proxy.driver.hold()  # no request reaches the old container from here on
            checkpoint("held")
            # The requests already at the old container finish before it stops (a response
            # cut mid-way cannot be retried); every second of this is a second of the hold.
            self.proxy.wait_drain(old, at_most=HELD_DRAIN_SECONDS)
        self.engine.stop(stop_first)
        snapshot = None
        if capture is not None:
            try:
                snapshot = capture()
            except Exception as exc:
                # The backup could not be captured: the new release must not start without
                # it, and the old one is stopped. The step is reported as failed to start,
                # so the caller walks it back (the old containers start again, gated).
                if engine_down(exc):
                    raise
                log.error("backup failed after %s stopped: %s", ", ".join(step.names),
                          REDACTOR(str(exc)))
                return Switch(step, tag, _since(t), f"backup failed: {REDACTOR(str(exc))[:500]}",
                              old=old, new=started, started_ns=time.time_ns())
        checkpoint("stopped")
        started_ns = time.time_ns()
        try:
            self.engine.start(started)
        except Exception as exc:  # e.g. its port is taken: a failed release, not a crash of ours
            if engine_down(exc):
                raise
            log.error("starting %s failed: %s", tag, REDACTOR(str(exc)))
            return Switch(step, tag, _since(t), f"could not start {tag}: {REDACTOR(str(exc))[:500]}",
                          snapshot, old=old, new=started, started_ns=started_ns)
        swap_s = _since(t)
        log.info("started %s: %s (%.2fs)", tag, ", ".join(c.name for c in started), swap_s)
        return Switch(step, tag, swap_s, None, snapshot, old=old, new=started, started_ns=started_ns)

    def cut_over(self, sw: Switch, weight: int = 100) -> None:
        """The step passed its gate: point the proxy at its new containers, in one change
        (SPEC §15), or send them `weight` percent of the requests (a canary's first step,
        SPEC §20: the old keep the rest). Raises ProxyError when the proxy cannot be updated;
        it then still serves the old containers."""
        if self.proxy is None or not self.proxied(sw.step):
            return
        if weight < 100 and sw.old:
            self.split(sw, weight)
        else:
            self.proxy.point_at(self._fresh(sw.new), held=self.held(sw.step))
            sw.cut_over, sw.cut_over_at = True, time.monotonic()
        checkpoint("cut_over")

    def split(self, sw: Switch, weight: int) -> tuple[list[str], list[str]]:
        """The proxied step's new containers get `weight` percent (100: all), its old ones
        the rest; the addresses of each. The drain of the old counts from the last change."""
        assert self.proxy is not None
        addresses = self.proxy.split(self._fresh(sw.old), self._fresh(sw.new), weight)
        sw.cut_over, sw.cut_over_at = True, time.monotonic()
        return addresses

    def complete(self, sw: Switch, probation: bool = False) -> None:
        """The step passed its gate: stop the start-first services' old containers (graceful;
        behind a proxy, after they drained), and give each container_name to the service's
        running container. On `probation` (a watch follows, SPEC §16) the proxied service's
        old containers keep running out of rotation: going back is then one proxy change."""
        strategy = sw.step.services_by_name
        stopping = [c for c in sw.old if strategy[c.service].strategy == "start-first"]
        if sw.cut_over and self.proxy is not None:
            if probation:
                sw.standing_by = [c for c in stopping if c.service == self.proxy.service]
                stopping = [c for c in stopping if c not in sw.standing_by]
            else:
                self.proxy.wait_drain(stopping)  # a stop-first service's old ones stopped already
        self.engine.stop(stopping)
        self.settle_names(sw.step)

    def retire(self, switches: Sequence[Switch]) -> None:
        """The watch passed: stop the old containers that stood by, once their drain (counted
        from the cutover) is over."""
        for sw in switches:
            if not sw.standing_by:
                continue
            assert self.proxy is not None
            left = self.proxy.drain_seconds(sw.standing_by) - (time.monotonic() - sw.cut_over_at)
            if left > 0:
                time.sleep(left)
            self.engine.stop(sw.standing_by)
            sw.standing_by = []
            self.settle_names(sw.step)

    def settle_names(self, step: Step) -> None:
        for svc in step.services:
            if svc.container_name:
                self._claim_name(svc.name, svc.container_name)

    def _claim_name(self, service: str, name: str) -> None:
        containers = self.containers([service])
        running = [c for c in containers if c.running]
        if len(running) != 1 or running[0].name == name:
            return
        for holder in containers:
            if holder.name == name:
                self.engine.rename(holder.id, f"{name}-{holder.id[:12]}")
        self.engine.rename(running[0].id, name)

    def _reusable(self, step: Step, tag: str, existing: list[ContainerInfo],
                  avoid: Sequence[ContainerInfo]) -> dict[str, list[ContainerInfo]]:
        avoid_ids = {c.id for c in avoid}
        out = {}
        for svc in step.services:
            kept = [c for c in existing if c.service == svc.name and c.tag == tag
                    and not c.running and c.id not in avoid_ids]
            if len(kept) >= svc.replicas:
                out[svc.name] = sorted(kept, key=lambda c: c.number)[-svc.replicas:]
        return out

    def _create(self, step: Step, tag: str, root: AgentRoot, config: ComposeConfig,
                existing: list[ContainerInfo], services: list[str],
                avoid: Sequence[ContainerInfo]) -> dict[str, list[ContainerInfo]]:
        """Create `tag`'s containers of `services` beside the existing ones. Of the stopped
        containers, only the last good release's are kept (a fast way back); the rest go."""
        keep_tag = self.state.last_good_tag()
        drop = [c for c in existing if c.service in services and not c.running
                and (c.tag != keep_tag or c.tag == tag or c in avoid)]
        self.engine.remove(drop)
        dropped = {c.id for c in drop}
        counts = {s: sum(1 for c in existing if c.service == s and c.id not in dropped) for s in services}
        replicas = {s.name: s.replicas for s in step.services}
        override = self.root.state_dir / "compose.override.yml"
        atomic_write(override, release_override(tag, [config.service(s) for s in services]))
        before = {c.id for c in existing}
        compose = ComposeProject(root.path, root.compose_file, root.project)
        compose.create({s: counts[s] + replicas[s] for s in services}, override, root.compose_env(tag))
        created = [c for c in self.containers(services) if c.id not in before]
        out = {s: [c for c in created if c.service == s] for s in services}
        wrong = {s: len(cs) for s, cs in out.items() if len(cs) != replicas[s]}
        if wrong:
            raise ObsError(f"compose created {[c.name for c in created]} for {tag}; expected "
                           f"{', '.join(f'{replicas[s]} of {s}' for s in wrong)}")
        return out

    # --- walking back -----------------------------------------------------------------------
    def walk_back(self, switches: list[Switch], failed: Switch | None,
                  ready: Ready | None = None) -> list[ContainerInfo]:
        """Put every switched step back, in reverse order, to what it ran before: the failed
        step's new containers are killed (no grace for a broken release), the passed steps'
        stopped gracefully; then the old containers start again. Returns them.
        A step behind the proxy goes back without a gap (`_walk_back_proxied`); `ready`
        gates its old containers before the proxy is pointed back at them."""
        restored: list[ContainerInfo] = []
        for sw in reversed(switches):
            if self.proxied(sw.step):
                self._walk_back_proxied(sw, sw is failed, ready)
            else:
                if sw is failed:
                    self.engine.kill(sw.new)
                else:
                    self.engine.stop(sw.new)
                checkpoint("failed_stopped")
                self.engine.start(sw.old)
            self.settle_names(sw.step)
            restored += sw.old
        return restored

    def _walk_back_proxied(self, sw: Switch, failed: bool, ready: Ready | None) -> None:
        """The old containers serve again before the new ones stop: started first when they
        no longer run (a later step failed after this one completed) and gated, then the
        proxy is pointed back at them, then the new drain and stop (a failed release that
        never received a request is killed at once). After a failed watch they still run,
        out of rotation: the proxy change alone brings them back."""
        assert self.proxy is not None
        if sw.step.services_by_name[self.proxy.service].single_writer:
            self._walk_back_single_writer(sw, failed, ready)
            return
        stopped = [c for c in self._fresh(sw.old) if not c.running]
        if stopped:
            started_ns = time.time_ns()
            self.engine.start(stopped)
            if ready is not None and not ready(sw.old, started_ns):
                raise ObsError(f"{', '.join(c.name for c in sw.old)} did not become healthy again; "
                               "the proxy still sends traffic to the new containers")
        if sw.cut_over and sw.old:
            self.proxy.point_at(self._fresh(sw.old))
            sw.cut_over, sw.standing_by = False, []
            self.proxy.wait_drain(sw.new)
        checkpoint("failed_stopped")
        if failed:
            self.engine.kill(sw.new)
        else:
            self.engine.stop(sw.new)

    def _walk_back_single_writer(self, sw: Switch, failed: bool, ready: Ready | None) -> None:
        """Never two writers: the new containers stop before the old start again. Behind a
        proxy that holds, requests wait from before the new stop until the old passed their
        gate (after a failed gate the proxy holds already)."""
        assert self.proxy is not None
        held = self.held(sw.step)
        if held and sw.cut_over:
            self.proxy.driver.hold()
        if failed:
            self.engine.kill(sw.new)
        else:
            self.engine.stop(sw.new)
        checkpoint("failed_stopped")
        stopped = [c for c in self._fresh(sw.old) if not c.running]
        started_ns = time.time_ns()
        self.engine.start(stopped)
        if stopped and ready is not None and not ready(sw.old, started_ns):
            raise ObsError(f"{', '.join(c.name for c in sw.old)} did not become healthy again"
                           + ("; the proxy holds requests" if held else ""))
        if sw.old and (held or sw.cut_over):
            self.proxy.point_at(self._fresh(sw.old), held=held)  # the held requests go there
            sw.cut_over, sw.standing_by = False, []

    def _fresh(self, containers: Sequence[ContainerInfo]) -> list[ContainerInfo]:
        """Inspect again: a container's published ports are known only while it runs."""
        return [self.engine.inspect(c.id) for c in containers]


def _since(t: float) -> float:
    return round(time.monotonic() - t, 3)

