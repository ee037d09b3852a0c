"""ComposeBackend: a release as containers of one compose project on one Docker engine.

The steps' mechanics (stop-first and start-first switches, the proxy cutover, walking back)
are in rollout.Rollout; this backend adds what the transaction asks of an engine: images,
accessories, jobs, the gate's observation, diagnostics, and its own state, the restart
policies it sets aside while a release is on trial.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import IO, TYPE_CHECKING, Any

from ..common.errors import CommandError, UsageError
from ..common.redact import REDACTOR
from ..common.runner import run
from ..compose import ComposeProject
from ..engine import (
    PROJECT_LABEL,
    ROLE_LABEL,
    ContainerInfo,
    Engine,
    EngineUnreachable,
    ExecResult,
    engine_down,
    newest_per_service,
    running_tag,
)
from ..gate.criteria import GateCriteria
from ..gate.loop import Look, Observer, Unit, Verdict, run_gate
from ..gate.probe import probe, url_port
from ..plan import PreflightReport, RolloutPlan, Step
from .base import Capture, PreSwitchFailure, Release, WalkedBack
from .rollout import Rollout, Switch

if TYPE_CHECKING:
    from ..root import AgentRoot
    from ..settings import ProxySettings
    from ..state import ReleaseState

log = logging.getLogger("obs.compose")

LOG_TAIL_LINES = 50
CREATED_GRACE_S = 5.0  # a container still "created" this long after the gate began never started


class ComposeBackend:
    name = "compose"

    def __init__(self, root: AgentRoot, engine: Engine, state: ReleaseState) -> None:
        self.root = root
        self.engine = engine
        self.state = state
        # Restart policies set aside while a release is on trial (see _hold_restarts).
        self._held: dict[str, dict[str, Any]] = {}

    @cached_property
    def rollout(self) -> Rollout:
        """Built on first use: it needs the validated settings (the proxy), `status` does not."""
        from ..proxy import proxy_for

        return Rollout(self.root, self.engine, self.state, proxy=proxy_for(self.root))

    # --- before anything is touched --------------------------------------------------------
    def preflight(self, report: PreflightReport) -> None:
        """Compose needs nothing beyond the generic checks."""

    def running_tag(self) -> str | None:
        """The release that runs now, by its obsdeploy.release label."""
        return running_tag(self.engine.project_containers(self.root.project))

    def recover(self, interrupted: dict[str, Any] | None) -> None:
        if interrupted and interrupted.get("held_restarts"):
            self._held = dict(interrupted["held_restarts"])
            self.finish()

    def ensure_images(self, plan: RolloutPlan, release: Release, *, refresh: bool) -> None:
        config = release.config
        released = set(plan.jobs) | {s.name for s in plan.release_services}
        ours = sorted({config.service(s).image for s in released})
        built = sorted(a.name for a in plan.accessories if a.build)
        others = sorted({config.service(a.name).image for a in plan.accessories if not a.build} - set(ours))
        # A deploy pulls its tag again (a re-pushed tag is the registry's truth); accessories
        # and a rollback's release, only when missing.
        self.engine.pull(ours if refresh else self._missing(ours))
        self.engine.pull(self._missing(others))
        if built:
            self._build(built, release)
        self.engine.check_platform(ours)

    def _build(self, accessories: list[str], release: Release) -> None:
        """Accessories whose image is missing, from their `build:` (the plan decided), with
        compose's own build; a failed build is an image failure, nothing switched."""
        from ..common.errors import ImageError

        root = release.root
        log.info("building accessories: %s", ", ".join(accessories))
        try:
            ComposeProject(root.path, root.compose_file, root.project).build(
                accessories, root.compose_env(release.tag))
        except CommandError as exc:
            raise ImageError(f"building accessory {', '.join(accessories)} failed: "
                             f"{REDACTOR(exc.stderr.strip()[-1500:])}",
                             hint="fix its build: section or build context, or build and tag "
                                  "its image on this server yourself") from None

    def _missing(self, images: list[str]) -> list[str]:
        return [i for i in images if not self.engine.has_image(i)]

    # --- before the switch: accessories and jobs -------------------------------------------
    def start_accessories(self, names: list[str], release: Release,
                          gate: Callable[[Observer], Verdict]) -> None:
        """Start accessories that are missing or stopped (never one that runs) and gate them:
        running, and healthy where they have a healthcheck, for stabilize_seconds. What
        they depend on runs already (accessories started before them, release services
        switched by the steps before), so `--no-deps` skips nothing they need."""
        if not names:
            return
        log.info("starting accessories: %s", ", ".join(names))
        started_ns = time.time_ns()
        root = release.root
        ComposeProject(root.path, root.compose_file, root.project).up(names, root.compose_env(release.tag))
        # The newest container of each, running or not: one that exited at once fails here.
        started = list(newest_per_service(self.rollout.containers(names)).values())
        verdict = gate(self._observer(started, started_ns, None, contract=()))
        if not verdict.healthy:
            tails = {c.name: REDACTOR(self.engine.logs_tail(c.id, LOG_TAIL_LINES)) for c in started}
            raise PreSwitchFailure(f"accessory {', '.join(names)} did not start: {verdict.reason}",
                                   {"accessories": names, "log_tail": tails})
        if self.rollout.proxy is not None:  # the proxy may be one of them
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

    def run_job(self, job: str, release: Release) -> None:
        """The job once, with the new tag, as `compose run --rm`; it must exit 0 within
        job_timeout. Its log tail goes to the history record when it does not."""
        root, tag = release.root, release.tag
        compose = ComposeProject(root.path, root.compose_file, root.project)
        timeout = root.settings.job_timeout
        name = f"{root.project}-{job}-{tag}-{os.getpid()}".replace("+", "_")
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
        if res.returncode != 0:
            tail = "\n".join((res.stdout + res.stderr).splitlines()[-LOG_TAIL_LINES:])
            raise PreSwitchFailure(f"job {job} exited with code {res.returncode}",
                                   {"job": {"name": job, "exit_code": res.returncode,
                                            "log_tail": REDACTOR(tail)}})

    def run_in_accessory(self, name: str, argv: tuple[str, ...], *, timeout: float,
                         stdout_fd: int | None = None, stdin: IO[bytes] | None = None) -> ExecResult:
        running = [c for c in self.rollout.containers([name]) if c.running]
        if not running:
            raise UsageError(f"accessory {name} has no running container in project "
                             f"{self.root.project}", hint=f"start it first: docker compose up -d {name}")
        newest = max(running, key=lambda c: c.number)
        return self.engine.exec_streams(newest.id, argv, timeout=timeout, stdout_fd=stdout_fd, stdin=stdin)

    def run_in_service(self, name: str, argv: tuple[str, ...], *, timeout: float,
                       env: dict[str, str]) -> ExecResult:
        running = [c for c in self.rollout.containers([name]) if c.running]
        if not running:
            raise UsageError(f"service {name} has no running container in project {self.root.project}")
        newest = max(running, key=lambda c: c.number)
        return self.engine.exec_streams(newest.id, argv, timeout=timeout, env=env)

    # --- the switch ------------------------------------------------------------------------
    def switch(self, step: Step, release: Release, *, reuse: bool, capture: Capture | None) -> Switch:
        return self.rollout.switch(step, release.tag, release.root, release.config, reuse=reuse,
                                   hold=self._hold_restarts, capture=capture)

    def observe(self, sw: Switch) -> Observer:
        return self._observer(sw.new, sw.started_ns, sw.tag, contract=sw.step.contract)

    def _observer(self, containers: list[ContainerInfo], started_ns: int, tag: str | None,
                  contract: set[str] | tuple[()]) -> ContainerObserver:
        return ContainerObserver(self.engine, self.root.project, containers, started_ns, tag,
                                 set(contract), self.root.settings.proxy)

    def cut_over(self, sw: Switch, weight: int = 100) -> None:
        self.rollout.cut_over(sw, weight)

    def split(self, switched: list[Switch], weight: int) -> tuple[list[str], list[str]] | None:
        """The canary's share: `weight` percent to the proxied step's new containers; the
        addresses of the stable and the canary, or None when no step is proxied."""
        for sw in switched:
            if self.rollout.proxied(sw.step) and sw.old:
                return self.rollout.split(sw, weight)
        return None

    def settle(self, sw: Switch, *, probation: bool) -> None:
        self.rollout.complete(sw, probation=probation)

    def watched(self, switched: list[Switch]) -> WatchedContainers:
        return WatchedContainers(self.engine, [c for sw in switched for c in sw.new])

    # --- the way back ----------------------------------------------------------------------
    def walk_back(self, switched: list[Switch], failed: Switch | None,
                  previous: str | None) -> WalkedBack[Switch]:
        """rollout.walk_back, waiting for a Docker engine that is restarting (up to
        health_timeout); then the last good release for services that ran nothing before.

        The service is down from the verdict until the old containers answer, so this does
        only what it must: kill the failed containers and start the old ones."""
        from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

        started_ns = time.time_ns()
        restored: list[ContainerInfo] = []
        for attempt in Retrying(retry=retry_if_exception(engine_down), reraise=True,
                                stop=stop_after_delay(self.root.settings.health_timeout),
                                wait=wait_fixed(1)):
            with attempt:
                restored = self.rollout.walk_back(switched, failed, ready=self._ready(previous))
        empty = [sw for sw in switched if not sw.old]
        if previous is not None and empty:
            restored += self._previous_into_empty(empty, previous)
        if not restored:
            return WalkedBack(None)
        tags = {c.tag for c in restored}
        services = {c.service for c in restored}
        all_services = [s for sw in switched for s in sw.step.services]
        step = Step(None, tuple(s for s in all_services if s.name in services))
        return WalkedBack(Switch(step, tags.pop() if len(tags) == 1 else None, old=[], new=restored,
                                 started_ns=started_ns))

    def _previous_into_empty(self, empty: list[Switch], previous: str) -> list[ContainerInfo]:
        """Services that ran nothing before the attempt get the last good release."""
        prev_root = self.root.as_released(previous)
        prev_config = ComposeProject(prev_root.path, prev_root.compose_file, prev_root.project
                                     ).config(prev_root.compose_env(previous))
        restored: list[ContainerInfo] = []
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
            criteria = GateCriteria.of(judge.settings, judge.path).for_step(contract=False)
            observer = self._observer(containers, started_ns, tag, contract=())
            return run_gate(observer, criteria.without_stabilize()).healthy
        return ready

    def diagnostics(self, failed: list[Switch], switched: list[Switch], verdict: Verdict) -> dict[str, Any]:
        """The failed containers' log tails and Docker health logs (read while they still
        exist), then this attempt's containers are removed (best effort: the next run removes
        whatever is left)."""
        suspects = [c for sw in failed for c in sw.new] or [c for sw in switched for c in sw.new]
        out = {
            "log_tail": {c.id[:12]: self.engine.logs_tail(c.id) for c in suspects},
            "health_log": {c.id[:12]: self.engine.health_log(c.id) for c in suspects},
            "health_answers": list(verdict.answers),
        }
        try:
            self.engine.remove([c for sw in switched for c in sw.new])
        except Exception as exc:
            log.warning("could not remove the failed containers yet: %s", REDACTOR(str(exc)))
        return out

    def commit(self, switched: list[Switch], keep_tag: str | None) -> None:
        """Stop what stood by through the watch; keep the stopped containers of `keep_tag`
        (the release a `rollback` goes back to: going back is then a start)."""
        self.rollout.retire(switched)
        self.finish()
        self._drop_stopped(keep_tag)

    def walked_back(self) -> None:
        self._drop_stopped(None)

    def finish(self) -> None:
        for cid, policy in list(self._held.items()):
            try:
                self.engine.set_restart_policy(cid, policy)
            except Exception as exc:  # the engine is away: the next run's recovery retries
                log.warning("could not restore the restart policy of %s: %s", cid[:12], exc)
                continue
            del self._held[cid]

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

    def _drop_stopped(self, keep_tag: str | None) -> None:
        """Remove the stopped release containers, except those of `keep_tag` (a fast way
        back). Accessories are never touched."""
        self.engine.remove([
            c for c in self.engine.project_containers(self.root.project)
            if not c.running and c.role == "release" and (keep_tag is None or c.tag != keep_tag)
        ])

    # --- status ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return compose_status(self.root, self.engine)


class ContainerObserver:
    """The gate's view of containers on one engine. It wakes on Docker events (a `die` or
    `health_status` of one of them arrives within milliseconds), so a crashed release fails
    at once; events since `started_ns` count, so a crash in the first milliseconds is not
    missed either."""

    def __init__(self, engine: Engine, project: str, containers: list[ContainerInfo], started_ns: int,
                 tag: str | None, contract: set[str], proxy: ProxySettings | None) -> None:
        self.engine = engine
        self.ids = {c.id for c in containers}
        self.contract_ids = {c.id for c in containers if c.service in contract}
        self.tag = tag
        self.proxy = proxy
        self.began = time.monotonic()
        self.infos: list[ContainerInfo] = list(containers)
        self.wake = threading.Event()
        self.dead: list[str] = []
        self.stream = self._open_events(project, started_ns)
        if self.stream is not None:
            threading.Thread(target=self._watch_events, args=(started_ns,), daemon=True).start()

    def look(self) -> Look:
        if self.dead:
            return Look(failure=self.dead[0])
        try:
            infos = [self.engine.inspect(cid) for cid in self.ids]
        except EngineUnreachable:  # dockerd restarting: not a verdict on the release
            return Look(unreachable=True)
        except Exception as exc:  # a container removed under us is a failure of this release
            return Look(failure=f"cannot inspect the release's containers: {exc}")
        self.infos = infos
        for c in infos:
            if c.state in ("exited", "dead") or (c.state == "created"
                                                 and time.monotonic() - self.began > CREATED_GRACE_S):
                return Look(failure=f"container {c.name} exited with code {c.exit_code}")
            if c.state == "restarting" or c.restart_count > 0:
                # Restarted already, the exit code inspect shows is the new run's; the `die`
                # event, due any moment, carries the real one.
                wait_until = time.monotonic() + 0.5
                while not self.dead and time.monotonic() < wait_until:
                    time.sleep(0.02)
                return Look(failure=self.dead[0] if self.dead else f"container {c.name} crashed and is restarting")
            if c.health == "unhealthy":
                return Look(failure=f"container {c.name} is unhealthy (Docker healthcheck)")
            if self.tag is not None and c.tag != self.tag:
                return Look(failure=f"container {c.name} belongs to release {c.tag or '(none)'}, not {self.tag}")
        healthy = all(c.state == "running" and c.health in (None, "healthy") for c in infos)
        waiting = None if healthy else "container health (" + ", ".join(
            f"{c.name}: {c.health or c.state}" for c in infos) + ")"
        return Look(waiting=waiting, probing=all(c.state == "running" for c in infos),
                    units=tuple(Unit(c.name, c.id in self.contract_ids, frozenset(c.env_names)) for c in infos))

    def health_urls(self, url: str) -> list[str]:
        """Where health_url is asked of these containers: as written when one of them
        publishes its port; at each container's own address when they listen on that port
        without publishing it (the proxied service, never through the proxy, which still
        serves the old release; a service behind the project's own nginx); else as written
        (another service publishes it, e.g. a later step's)."""
        from ..proxy import rewrite_url

        if self.proxy is not None:
            proxied = [c for c in self.infos if c.service == self.proxy.service]
            if proxied:
                addresses = [c.address(self.proxy.port) for c in proxied]
                return [rewrite_url(url, a) for a in addresses if a is not None]
        return where_to_ask(url, self.infos)

    def logs_contain(self, pattern: re.Pattern[str]) -> bool:
        return all(self.engine.logs_contain(cid, pattern) for cid in self.contract_ids)

    def pause(self, seconds: float) -> None:
        self.wake.wait(seconds)
        self.wake.clear()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()

    def _open_events(self, project: str, since_ns: int) -> Any:
        try:
            return self.engine.client.api.events(
                decode=True, filters={"type": "container", "label": f"{PROJECT_LABEL}={project}"},
                since=since_ns // 1_000_000_000)
        except Exception:  # the polling loop still sees everything, only later
            return None

    def _watch_events(self, since_ns: int) -> None:
        """Turn a `die` or `health_status: unhealthy` into an immediate verdict. Events from
        before the start (the stop of a kept container now started again) are old news."""
        try:
            for ev in self.stream:
                if ev.get("id") not in self.ids or int(ev.get("timeNano") or 0) < since_ns:
                    continue
                action = str(ev.get("Action") or ev.get("status") or "")
                attrs = (ev.get("Actor") or {}).get("Attributes") or {}
                name = attrs.get("name", str(ev.get("id", ""))[:12])
                if action == "die":
                    self.dead.append(f"container {name} exited with code {attrs.get('exitCode', '?')}")
                elif action.startswith("health_status") and "unhealthy" in action:
                    self.dead.append(f"container {name} is unhealthy (Docker healthcheck)")
                self.wake.set()
        except Exception:  # closing the stream at the end of the gate ends the loop
            pass


class WatchedContainers:
    """The watch's view of a release's containers."""

    def __init__(self, engine: Engine, containers: list[ContainerInfo]) -> None:
        self.engine = engine
        self.containers = containers

    def problem(self) -> str | None:
        from ..watch import container_problem

        try:
            return container_problem([self.engine.inspect(c.id) for c in self.containers])
        except EngineUnreachable:
            return None  # dockerd restarting: not a verdict on the release
        except Exception as exc:  # removed under us
            return f"cannot inspect the release's containers: {exc}"

    def logs_since(self, since: float) -> str:
        return "".join(self.engine.logs_since(c.id, since) for c in self.containers)


def where_to_ask(url: str, containers: Sequence[ContainerInfo]) -> list[str]:
    """health_url as written when one of `containers` publishes its port; else at the own
    address of each that listens on it (a service behind the project's own nginx); else as
    written. The gate and `status` ask the same places."""
    from ..proxy import rewrite_url

    port = url_port(url)
    if any(c.publishes(port) for c in containers):
        return [url]
    listening = [c for c in containers if f"{port}/tcp" in c.exposed]
    if listening:
        return [rewrite_url(url, a) for c in listening if (a := c.address(port)) is not None]
    return [url]


# --- status: read-only, from unvalidated settings (status works with a broken configuration)
TRUTHY = {"true", "1", "yes", "on", "t", "y"}  # what pydantic reads as True


def compose_status(root: AgentRoot, engine: Engine) -> dict[str, Any]:
    """The containers of a compose project: every running one (replicas, accessories); with
    none running, the newest of each service."""
    containers = engine.project_containers(root.project)
    running = [c for c in containers if c.running]
    # Every running container (replicas, accessories); with none running, the newest of each.
    shown = running or list(newest_per_service(containers).values())
    services = [{"name": c.service, "container": c.name, "image": c.image, "state": c.state,
                 "health": c.health, "role": c.role, "tag": c.tag} for c in shown]
    down = accessories_down(root, containers) if running else []
    services += [a for a in down if a["container"] not in {c.name for c in shown}]
    healthy = bool(running) and not down and all(
        c.state == "running" and c.health in (None, "healthy") for c in running
    )
    # Unvalidated settings (see Ctx.load_root): a broken URL only makes the probe fail.
    url = root.raw_setting("health_url")
    if healthy and url:
        allow_degraded = str(root.raw_setting("allow_degraded")).lower() in TRUTHY
        release = [c for c in running if c.role == "release"] or running
        healthy = all(probe(where, allow_degraded).kind == "pass"
                      for where in where_to_ask(str(url), release))
    return {
        "current_tag": running_tag(containers),
        "healthy": healthy,
        "services": services,
        "proxy": proxy_view(root, running),
    }


def accessories_down(root: AgentRoot, containers: list[ContainerInfo]) -> list[dict[str, Any]]:
    """The accessories of the compose file that do not run: their newest container (exited,
    created...), or `missing` when they have none. Jobs and release services are not."""
    from ..plan import ROLES

    out = []
    newest = newest_per_service(containers)
    for name, svc in root.compose_services().items():
        labels = svc.get("labels") or {}
        role = (labels.get(ROLE_LABEL) if isinstance(labels, dict) else None) or (
            "release" if "IMAGE_TAG" in str(svc.get("image", "")) else "accessory")
        if role not in ROLES or role != "accessory":
            continue
        c = newest.get(name)
        if c is None:
            out.append({"name": name, "container": None, "image": str(svc.get("image", "")),
                        "state": "missing", "health": None, "role": "accessory", "tag": None})
        elif not c.running:
            out.append({"name": name, "container": c.name, "image": c.image, "state": c.state,
                        "health": c.health, "role": "accessory", "tag": None})
    return out


def proxy_view(root: AgentRoot, running: list[ContainerInfo]) -> dict[str, Any] | None:
    """Where agent.proxy sends traffic now, and which release answers there ;
    None without a proxy. A proxy that cannot be read is shown as such, not raised."""
    if root.raw_setting("proxy") is None:
        return None
    from ..common.redact import REDACTOR
    from ..proxy import proxy_for

    try:
        cutover = proxy_for(root)
        assert cutover is not None
        upstreams = cutover.driver.current()
    except Exception as exc:  # unvalidated settings, a proxy that does not answer
        return {"error": REDACTOR(str(exc))[:300]}
    at = {c.address(cutover.port): c for c in running if c.service == cutover.service}
    return {"service": cutover.service, "upstreams": upstreams,
            "serving": sorted({str(at[a].tag) for a in upstreams if a in at}),
            "unknown_upstreams": [a for a in upstreams if a not in at]}
