"""The watch window (SPEC §16): the release's probation after its gate passed.

Checks are measured (`measure_*`, the only code here that does I/O), then judged into
verdicts by pure functions (`judge_*`):

    http        the answer's status and JSON fields ({tag}: the release's tag)
    prometheus  a PromQL value at or under `max`, and at most `max_increase` above the value
                measured just before the switch (the baseline)
    log         matching lines per minute in the release containers' logs

A check that cannot be measured (Prometheus unreachable, no or several series, the engine
away) is *inconclusive*: reported, and counted as failed unless `inconclusive` is "pass".
A release service that answers nothing is measured, not inconclusive: that is a failure.

`Watch.run` measures every `interval` for `seconds` and watches the release's containers in
between (an exit or restart fails at once); `failure_limit` failed measurements end it.
`Watch.verify` measures once, for `obs-agent verify`.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode, urlsplit

from .common.redact import REDACTOR
from .engine import ContainerInfo

if TYPE_CHECKING:
    from .settings import HttpCheck, LogCheck, PrometheusCheck, WatchSettings

    Check = HttpCheck | PrometheusCheck | LogCheck

log = logging.getLogger("obs.watch")

# Containers are looked at this often between rounds of checks: an exit fails at once.
CONTAINER_POLL = 0.25
# Measurements a history record keeps besides the last round's (a long watch has many rounds).
KEPT_FAILURES = 20


@dataclass
class Measurement:
    check: str  # the check's name (default: kind and what it looks at)
    kind: str
    verdict: str  # pass | fail | inconclusive
    detail: str  # what was measured and why the verdict, redacted
    value: float | None = None
    at: float = 0.0  # seconds since the watch began

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class WatchResult:
    ok: bool
    reason: str | None
    seconds: float
    rounds: int = 0
    baseline: dict[str, float | None] = field(default_factory=dict)
    last: list[Measurement] = field(default_factory=list)
    failures: list[Measurement] = field(default_factory=list)
    ended: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The history record's `watch`: why it ended, the last round, every failed one."""
        return {
            "result": ("passed" if self.ok else "failed") if self.ended else "watching",
            "reason": self.reason,
            "seconds": self.seconds, "rounds": self.rounds, "baseline": self.baseline,
            "last": [m.as_dict() for m in self.last],
            "failures": [m.as_dict() for m in self.failures[-KEPT_FAILURES:]],
        }


def check_name(check: Check) -> str:
    if check.name:
        return check.name
    what = {"http": "url", "prometheus": "query", "log": "pattern"}[check.kind]
    return f"{check.kind} {getattr(check, what)}"


# --- verdicts: pure ---------------------------------------------------------------------------
def _field(doc: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(doc, dict) or key not in doc:
            raise KeyError(path)
        doc = doc[key]
    return doc


def judge_http(check: HttpCheck, tag: str, status: int | None, body: bytes, error: str = "") -> Measurement:
    name = check_name(check)
    if status is None:
        return Measurement(name, "http", "fail", f"no answer ({error})")
    if status != check.status:
        return Measurement(name, "http", "fail", f"HTTP {status}, expected {check.status}", float(status))
    if not check.json_fields:
        return Measurement(name, "http", "pass", f"HTTP {status}", float(status))
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return Measurement(name, "http", "fail", f"HTTP {status}, the answer is not JSON", float(status))
    wrong = []
    for path, want in check.json_fields.items():
        want = want.replace("{tag}", tag) if isinstance(want, str) else want
        try:
            got = _field(doc, path)
        except KeyError:
            wrong.append(f"{path} missing (expected {want!r})")
            continue
        if got != want:
            wrong.append(f"{path}={got!r}, expected {want!r}")
    if wrong:
        return Measurement(name, "http", "fail", f"HTTP {status}, " + "; ".join(wrong), float(status))
    return Measurement(name, "http", "pass", f"HTTP {status}, " + ", ".join(
        f"{p} as expected" for p in check.json_fields), float(status))


def judge_prometheus(check: PrometheusCheck, value: float | None, baseline: float | None,
                     error: str = "", *, switched: bool = True) -> Measurement:
    """`switched`: False for `verify`, where there is no "just before the switch" to rise from."""
    name = check_name(check)
    if value is None:
        return Measurement(name, "prometheus", "inconclusive", f"cannot be measured: {error}")
    problems = []
    if check.max is not None and value > check.max:
        problems.append(f"{value:g} > max {check.max:g}")
    if check.max_increase is not None and switched:
        if baseline is None:
            return Measurement(name, "prometheus", "inconclusive" if not problems else "fail",
                               "; ".join(problems + ["no baseline value from before the switch, "
                                                     "so max_increase cannot be judged"]), value)
        if value - baseline > check.max_increase:
            problems.append(f"{value:g} rose {value - baseline:g} above the baseline {baseline:g} "
                            f"(max_increase {check.max_increase:g})")
    if problems:
        return Measurement(name, "prometheus", "fail", "; ".join(problems), value)
    base = f", baseline {baseline:g}" if baseline is not None and switched else ""
    return Measurement(name, "prometheus", "pass", f"{value:g}{base}", value)


def judge_log(check: LogCheck, count: int | None, minutes: float, error: str = "") -> Measurement:
    """`minutes`: the window the lines were counted in; under a minute counts as a minute, so
    a few lines right after the switch are not extrapolated into a storm."""
    name = check_name(check)
    if count is None:
        return Measurement(name, "log", "inconclusive", f"cannot read the logs: {error}")
    rate = count / max(minutes, 1.0)
    detail = f"{count} matching line(s) in {minutes:.2f} min ({rate:g}/min, max {check.max_per_minute:g})"
    return Measurement(name, "log", "fail" if rate > check.max_per_minute else "pass", detail, rate)


def counts_as_failed(m: Measurement, inconclusive: str) -> bool:
    return m.verdict == "fail" or (m.verdict == "inconclusive" and inconclusive != "pass")


def container_problem(infos: list[ContainerInfo]) -> str | None:
    """A release container that exited or restarted fails the watch at once."""
    for c in infos:
        if not c.running:
            return f"container {c.name} exited with code {c.exit_code}"
        if c.state == "restarting" or c.restart_count > 0:
            return f"container {c.name} restarted"
    return None


def prometheus_value(doc: Any) -> float:
    """The one value of a /api/v1/query answer; ValueError says why there is none."""
    if not isinstance(doc, dict) or doc.get("status") != "success":
        raise ValueError(f"Prometheus answered {str(doc.get('error') if isinstance(doc, dict) else doc)[:200]}")
    data = doc.get("data") or {}
    kind = data.get("resultType")
    result: Any = data.get("result") or []
    if kind == "scalar":
        raw = result[1]
    elif kind == "vector":
        if len(result) != 1:
            raise ValueError(f"the query returned {len(result)} series; it must return one value "
                             "(aggregate it, e.g. with sum() or max())")
        raw = result[0]["value"][1]
    else:
        raise ValueError(f"the query returned a {kind}; it must return one value")
    value = float(raw)
    if math.isnan(value):
        raise ValueError("the query's value is NaN (no data in its range?)")
    return value


# --- measurements: I/O ------------------------------------------------------------------------
def http_get(url: str, timeout: float) -> tuple[int, bytes]:
    """GET straight to the address (no proxy from the environment, no redirects)."""
    where = urlsplit(url)
    kind = http.client.HTTPSConnection if where.scheme == "https" else http.client.HTTPConnection
    conn = kind(where.hostname or "", where.port, timeout=timeout)
    try:
        conn.request("GET", (where.path or "/") + (f"?{where.query}" if where.query else ""))
        resp = conn.getresponse()
        return resp.status, resp.read(1 << 20)
    finally:
        conn.close()


class Watched(Protocol):
    """The release's units as the watch sees them (a backend's containers or tasks)."""

    def problem(self) -> str | None:
        """Why the release failed already (a unit exited or restarted), else None."""
        ...

    def logs_since(self, since: float) -> str:
        """The units' log lines since Unix time `since`."""
        ...


class Watch:
    def __init__(self, settings: WatchSettings) -> None:
        self.settings = settings

    @property
    def on(self) -> bool:
        return self.settings.seconds > 0

    def baseline(self) -> dict[str, float | None]:
        """The prometheus checks' values just before the switch (None: not measurable)."""
        out: dict[str, float | None] = {}
        for check in self.settings.checks:
            if check.kind == "prometheus" and check.max_increase is not None:
                value, error = self._query(check)
                out[check_name(check)] = value
                log.info("watch baseline %s: %s", check_name(check), value if value is not None else error)
        return out

    # --- one round ---------------------------------------------------------------------------
    def measure(self, tag: str, watched: Watched, since: float,
                baseline: dict[str, float | None], *, switched: bool = True) -> list[Measurement]:
        """Every check once. `since`: the Unix time the log check counts from."""
        out = []
        for check in self.settings.checks:
            if check.kind == "http":
                url = check.url.replace("{tag}", tag)
                try:
                    status, body = http_get(url, check.timeout)
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    out.append(judge_http(check, tag, None, b"", str(exc)))
                else:
                    out.append(judge_http(check, tag, status, body))
            elif check.kind == "prometheus":
                value, error = self._query(check)
                out.append(judge_prometheus(check, value, baseline.get(check_name(check)), error,
                                            switched=switched))
            else:
                count, error = self._count_log_lines(check, watched, since)
                out.append(judge_log(check, count, (time.time() - since) / 60, error))
        for m in out:
            m.detail = REDACTOR(m.detail)
        return out

    def _query(self, check: PrometheusCheck) -> tuple[float | None, str]:
        url = check.url.rstrip("/") + "/api/v1/query?" + urlencode({"query": check.query})
        try:
            status, body = http_get(url, check.timeout)
            return prometheus_value(json.loads(body)), ""
        except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError, TypeError) as exc:
            return None, f"{check.url}: {exc}"[:300]

    def _count_log_lines(self, check: LogCheck, watched: Watched, since: float) -> tuple[int | None, str]:
        pattern = re.compile(check.pattern)
        try:
            text = watched.logs_since(since)
        except Exception as exc:  # the engine is away: not a verdict on the release
            return None, f"{type(exc).__name__}: {exc}"[:300]
        return sum(1 for line in text.splitlines() if pattern.search(line)), ""

    # --- the window --------------------------------------------------------------------------
    def run(self, tag: str, watched: Watched, since: float,
            baseline: dict[str, float | None],
            on_round: Callable[[WatchResult], None] = lambda _: None) -> WatchResult:
        """Watch the units of `tag` (switched at Unix time `since`) for `seconds`.
        `on_round` is told after every round (the deployer journals it)."""
        s = self.settings
        started = time.monotonic()
        deadline = started + s.seconds
        result = WatchResult(True, None, 0.0, baseline=baseline)
        on_round(result)  # the watch has begun
        failed = 0
        next_round = started + min(s.interval, s.seconds)
        log.info("watching %s for %gs (checks every %gs: %s)", tag, s.seconds, s.interval,
                 ", ".join(check_name(c) for c in s.checks) or "containers only")
        while True:
            now = time.monotonic()
            problem = watched.problem()
            if problem:
                return self._end(result, started, False, problem)
            if now >= next_round:
                round_ = self.measure(tag, watched, since, baseline)
                at = round(now - started, 3)
                for m in round_:
                    m.at = at
                result.rounds += 1
                result.last = round_
                bad = [m for m in round_ if counts_as_failed(m, s.inconclusive)]
                result.failures += [m for m in round_ if m.verdict != "pass"]
                for m in round_:  # passes only with -v: an hour's watch has hundreds of rounds
                    (log.warning if m.verdict != "pass" else log.debug)(
                        "watch %s: %s %s", m.check, m.verdict, m.detail)
                failed += len(bad)
                result.seconds = round(now - started, 3)
                on_round(result)
                if failed >= s.failure_limit:
                    m = bad[0]
                    return self._end(result, started, False,
                                     f"check {m.check!r} {m.verdict}: {m.detail} "
                                     f"({failed} failed measurement(s), failure_limit {s.failure_limit})")
                if now >= deadline:
                    return self._end(result, started, True, None)
                next_round = min(next_round + s.interval, deadline)
            time.sleep(max(0.0, min(CONTAINER_POLL, next_round - time.monotonic())))

    @staticmethod
    def _end(result: WatchResult, started: float, ok: bool, reason: str | None) -> WatchResult:
        result.ok, result.ended, result.seconds = ok, True, round(time.monotonic() - started, 3)
        result.reason = None if reason is None else REDACTOR(f"watch: {reason}")
        return result

    def verify(self, tag: str, containers: list[ContainerInfo], watched: Watched) -> WatchResult:
        """The checks once against the running release (`obs-agent verify`): the log check
        counts the last minute; a prometheus check has no baseline to rise from."""
        problem = "no release is running" if not containers else next(
            (f"container {c.name} is {c.state if c.state != 'running' else 'unhealthy'}"
             for c in containers if c.state != "running" or c.health == "unhealthy"), None)
        started = time.monotonic()
        measured = [] if problem else self.measure(tag, watched, time.time() - 60, {}, switched=False)
        bad = [m for m in measured if counts_as_failed(m, self.settings.inconclusive)]
        if bad and not problem:
            problem = "; ".join(f"check {m.check!r} {m.verdict}: {m.detail}" for m in bad)
        result = WatchResult(problem is None, problem, 0.0, rounds=1 if measured else 0, last=measured,
                             failures=[m for m in measured if m.verdict != "pass"], ended=True)
        result.seconds = round(time.monotonic() - started, 3)
        return result
