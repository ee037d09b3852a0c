"""run_gate: the one gate loop. A backend observes (containers on one engine, tasks on every
node of a swarm); the loop applies the criteria, fails fast, stabilizes and times out.

    look → a failure is the verdict; the engine away is no verdict (wait, up to the deadline)
         → health_url probed as soon as the units run (before Docker's first healthcheck:
           an error-answering release fails within three answers), one probe at a time
           per unit, every round until it answers, then gentler (probe.ProbeRun)
         → verify.paths, the container environment (once), verify.log_pattern
         → healthy for `stabilize` seconds: pass; the deadline: fail, saying what it waited on
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from typing import Protocol

from ..common.redact import REDACTOR
from .criteria import GateCriteria
from .probe import FAILS_IN_A_ROW, HealthAnswer, ProbeRun, worst

KEPT_ANSWERS = 5


@dataclass(frozen=True)
class Unit:
    """One running unit of the release (a container, a swarm task)."""

    name: str
    contract: bool  # carries the path contract: verify and the container environment apply
    env_names: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Look:
    """One round of a backend's observation."""

    failure: str | None = None  # the release failed: the verdict, now
    unreachable: bool = False  # the engine did not answer: no verdict on the release
    waiting: str | None = None  # not ready yet, and why; None: every unit runs and is healthy
    probing: bool = False  # the units run: health_url may be asked
    units: tuple[Unit, ...] = ()


class Observer(Protocol):
    """What a backend gives the gate loop for one set of units (see Backend.observe)."""

    def look(self) -> Look: ...

    def health_urls(self, url: str) -> list[str]:
        """Where health_url is asked of these units (never through the proxy)."""
        ...

    def logs_contain(self, pattern: re.Pattern[str]) -> bool:
        """Every contract unit's log has a line matching `pattern`."""
        ...

    def pause(self, seconds: float) -> None:
        """Until the next round: `seconds`, or sooner when the engine reports an event."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reason: str
    seconds: float
    answers: tuple[str, ...] = field(default=())  # the last health_url answers, redacted

    def within(self, where: str) -> Verdict:
        """The same verdict, its reason prefixed with where it was given (a step)."""
        return replace(self, reason=f"{where}: {self.reason}")


PASSED = Verdict(True, "healthy", 0.0)
ROUND_S = 0.05  # between rounds; a backend's events wake the loop sooner


def run_gate(observer: Observer, criteria: GateCriteria) -> Verdict:
    started = time.monotonic()
    answers: list[str] = []
    try:
        reason = _loop(observer, criteria, started, answers)
    finally:
        observer.close()
    seconds = round(time.monotonic() - started, 3)
    if reason is None:
        return Verdict(True, "healthy", seconds)
    return Verdict(False, REDACTOR(reason), seconds, tuple(REDACTOR(a) for a in answers[-KEPT_ANSWERS:]))


def _loop(observer: Observer, c: GateCriteria, started: float, answers: list[str]) -> str | None:
    deadline = started + c.timeout
    healthy_since: float | None = None
    probes: dict[str, ProbeRun] = {}  # one per URL: each node or container answers for itself
    env_checked = False
    log_seen = c.log_pattern is None
    while True:
        now = time.monotonic()
        look = observer.look()
        if look.unreachable:
            if now >= deadline:
                return f"the Docker engine was unreachable until health_timeout={c.timeout:g}s"
            healthy_since = None
            observer.pause(ROUND_S * 4)
            continue
        if look.failure is not None:
            return look.failure
        ok = look.waiting is None
        waiting_on = look.waiting or ""
        contract = [u for u in look.units if u.contract]
        if look.probing and c.health_url:
            urls = observer.health_urls(c.health_url)
            if urls:
                ans, failed_at, fresh = _ask(probes, urls, c.allow_degraded)
                if fresh:
                    answers.append(ans.detail if len(urls) == 1 else f"{failed_at or urls[0]}: {ans.detail}")
                    del answers[:-10]
                if failed_at is not None:
                    where = f" at {failed_at}" if len(urls) > 1 else ""
                    return f"health_url answered a failure {FAILS_IN_A_ROW} times in a row{where}: {ans.detail}"
                if ans.kind != "pass":
                    ok = False
                    waiting_on = f"health_url ({ans.detail})"
        if ok:
            missing = [p for p in c.verify_paths if not (c.root / p).exists()]
            if missing:
                ok = False
                waiting_on = "verify.paths " + ", ".join(missing)
        if ok and not env_checked and contract:
            unset = sorted({n for u in contract for n in c.container_env if n not in u.env_names})
            if unset:
                return "not set inside the release's containers: " + ", ".join(unset)
            env_checked = True
        if ok and not log_seen and contract:
            assert c.log_pattern is not None
            log_seen = observer.logs_contain(c.log_pattern)
            if not log_seen:
                ok = False
                waiting_on = f"verify.log_pattern {c.log_pattern.pattern!r} in the log"
        if ok:
            healthy_since = healthy_since or now
            if now - healthy_since >= c.stabilize:
                return None
        else:
            healthy_since = None
        if now >= deadline:
            return f"not healthy within health_timeout={c.timeout:g}s; waiting on {waiting_on}"
        observer.pause(ROUND_S)


def _ask(probes: dict[str, ProbeRun], urls: list[str], allow_degraded: bool
         ) -> tuple[HealthAnswer, str | None, bool]:
    """One round of probes (those due); the worst answer decides. Also returns the URL that
    has failed FAILS_IN_A_ROW times in a row, if any, and whether any probe was sent."""
    got = []
    fresh = False
    for url in urls:
        run = probes.setdefault(url, ProbeRun(allow_degraded))
        sent = run.sent
        ans = run.ask(url)
        fresh = fresh or run.sent > sent
        if run.failed:
            return ans, url, True
        got.append(ans)
    return worst(got), None, fresh
