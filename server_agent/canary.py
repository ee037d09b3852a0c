"""The canary by weight (SPEC §20): after its gate, the new release receives each step's share
of the requests beside the release that served, and is judged every `interval`.

    AccessLog      the proxy's access log (JSON lines: caddy as the agent configures it,
                   nginx's `log_format ... escape=json`, traefik's `format: json`), read
                   from where it was when the canary began
    Answers        what it recorded of each release in one step (status, seconds)
    judge_*        pure: success_rate (non-5xx answers / answers) and latency (a quantile,
                   and its ratio to the stable release's in the same window)
    CanaryPlan     the steps as values, planned before anything changes
    Canary.run     the steps in order: set the share, measure every interval, end the step
                   passed, held, failed, or cut short by `obs-agent canary promote|abort`

Below `min_requests` answers of the canary, success_rate and latency are *inconclusive*: a
step ending so holds, fails or passes by `inconclusive`. Any failed measurement aborts at once.
The caller moves the proxy (the Split it passes in) and walks back an aborted canary.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common.redact import REDACTOR
from .watch import Measurement, Watch, Watched, check_name

if TYPE_CHECKING:
    from .settings import CanaryCheck, CanarySettings, LatencyCheck, ProxySettings, SuccessRateCheck

log = logging.getLogger("obs.canary")

# The request another shell leaves for the running canary (obs-agent canary promote|abort).
REQUEST_FILE = "canary-request.json"
ACTIONS = ("promote", "abort")
# Containers and requests are looked at this often between rounds.
POLL = 0.25
# The stable release's answers a latency ratio needs before it is judged.
MIN_STABLE_ANSWERS = 10


def check_label(check: CanaryCheck) -> str:
    if check.kind == "success_rate":
        return check.name or "success_rate"
    if check.kind == "latency":
        return check.name or f"latency p{check.quantile * 100:g}"
    return check_name(check)


# --- what the proxy recorded ------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    upstream: str  # host:port that answered (or was asked)
    status: int
    seconds: float


def parse_line(line: str, kind: str) -> Answer | None:
    """One access-log line, or None when it is not a proxied request of ours. caddy and nginx
    lines carry `upstream`, `status`, `duration` (seconds); traefik's its own field names."""
    try:
        doc = json.loads(line)
        if not isinstance(doc, dict):
            return None
        if kind == "traefik":
            upstream, status, seconds = (doc.get("ServiceAddr"), doc.get("DownstreamStatus"),
                                         float(doc.get("Duration") or 0) / 1e9)
        else:
            upstream, status, seconds = doc.get("upstream"), doc.get("status"), float(doc.get("duration") or 0)
        # nginx names every upstream it tried ("a, b"): the last one answered.
        upstream = str(upstream or "").split(",")[-1].strip()
        if not upstream or upstream == "-" or status is None:
            return None
        return Answer(upstream, int(status), seconds)
    except (ValueError, TypeError):
        return None


class AccessLog:
    """New lines of the proxy's access log since `start()`; a rotated or truncated file is
    read again from its beginning."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path = path
        self.kind = kind
        self.offset = 0
        self.inode: int | None = None
        self.partial = b""

    def start(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self.offset, self.inode = 0, None
            return
        self.offset, self.inode = st.st_size, st.st_ino

    def read(self) -> list[Answer]:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != self.inode or st.st_size < self.offset:
                    self.offset, self.inode, self.partial = 0, st.st_ino, b""
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data, _, self.partial = (self.partial + data).rpartition(b"\n")
        out = []
        for line in data.splitlines():
            answer = parse_line(line.decode("utf-8", "replace"), self.kind)
            if answer is not None:
                out.append(answer)
        return out


@dataclass
class Answers:
    """One step's answers of each release."""

    canary: list[Answer] = field(default_factory=list)
    stable: list[Answer] = field(default_factory=list)

    def add(self, answers: Sequence[Answer], stable: Sequence[str], canary: Sequence[str]) -> None:
        for a in answers:
            if a.upstream in canary:
                self.canary.append(a)
            elif a.upstream in stable:
                self.stable.append(a)


# --- verdicts: pure ---------------------------------------------------------------------------
def quantile_ms(answers: Sequence[Answer], q: float) -> float:
    values = sorted(a.seconds * 1000 for a in answers)
    if len(values) == 1:
        return values[0]
    # 1000 cut points: a quantile to the tenth of a percent (P99.9).
    cuts = statistics.quantiles(values, n=1000, method="inclusive")
    return cuts[max(0, min(len(cuts) - 1, round(q * 1000) - 1))]


def judge_success_rate(check: SuccessRateCheck, answers: Answers, min_requests: int) -> Measurement:
    name, n = check_label(check), len(answers.canary)
    if n == 0 or n < min_requests:
        return Measurement(name, "success_rate", "inconclusive",
                           f"{n} answer(s) of the canary, fewer than min_requests {min_requests}")
    good = sum(1 for a in answers.canary if a.status < 500)
    rate = good / n
    detail = f"{good}/{n} answers not 5xx ({rate:.4f}, min {check.min:g})"
    return Measurement(name, "success_rate", "fail" if rate < check.min else "pass", detail, round(rate, 6))


def judge_latency(check: LatencyCheck, answers: Answers, min_requests: int) -> Measurement:
    name, n = check_label(check), len(answers.canary)
    if n == 0 or n < min_requests:
        return Measurement(name, "latency", "inconclusive",
                           f"{n} answer(s) of the canary, fewer than min_requests {min_requests}")
    ms = quantile_ms(answers.canary, check.quantile)
    problems, notes = [], [f"p{check.quantile * 100:g} {ms:.1f} ms over {n} answers"]
    if check.max_ms is not None and ms > check.max_ms:
        problems.append(f"{ms:.1f} ms > max_ms {check.max_ms:g}")
    if check.max_ratio is not None:
        if len(answers.stable) < MIN_STABLE_ANSWERS:
            notes.append(f"ratio not judged: {len(answers.stable)} answer(s) of the stable release")
        else:
            base = quantile_ms(answers.stable, check.quantile)
            ratio = ms / base if base > 0 else float("inf")
            notes.append(f"stable {base:.1f} ms, ratio {ratio:.2f}")
            if ratio > check.max_ratio:
                problems.append(f"{ratio:.2f} times the stable release's {base:.1f} ms "
                                f"(max_ratio {check.max_ratio:g})")
    return Measurement(name, "latency", "fail" if problems else "pass",
                       "; ".join(problems or notes), round(ms, 3))


# --- the plan and its record --------------------------------------------------------------------
@dataclass(frozen=True)
class CanaryPlan:
    """What a canary will do, decided before anything changes."""

    steps: tuple[tuple[int, float], ...]  # (weight percent, seconds)
    interval: float
    min_requests: int
    inconclusive: str
    max_hold_seconds: float
    checks: tuple[CanaryCheck, ...]

    @classmethod
    def of(cls, s: CanarySettings) -> CanaryPlan:
        return cls(tuple((st.weight, st.seconds) for st in s.steps), s.interval, s.min_requests,
                   s.inconclusive, s.max_hold_seconds, tuple(s.checks))

    @property
    def first_weight(self) -> int:
        return self.steps[0][0]

    def watch_checks(self, tag: str, stable: str) -> list[Any]:
        """The watch's kinds among the checks, `{tag}` and `{stable}` filled in."""
        out: list[Any] = []
        for c in self.checks:
            if c.kind == "http":
                out.append(c.model_copy(update={"url": _fill(c.url, tag, stable)}))
            elif c.kind == "prometheus":
                out.append(c.model_copy(update={"query": _fill(c.query, tag, stable)}))
            elif c.kind == "log":
                out.append(c)
        return out


def _fill(text: str, tag: str, stable: str) -> str:
    return text.replace("{tag}", tag).replace("{stable}", stable)


@dataclass
class StepRecord:
    weight: int
    seconds: float  # how long it lasted
    result: str  # running | passed | failed | inconclusive-passed | promoted | aborted
    requests: dict[str, int] = field(default_factory=dict)  # answers of canary and stable
    held_s: float = 0.0
    measurements: list[dict[str, Any]] = field(default_factory=list)  # the last round


@dataclass
class CanaryResult:
    ok: bool
    reason: str | None
    tag: str
    stable: str
    since: str  # when the canary began (ISO)
    steps: list[StepRecord] = field(default_factory=list)
    seconds: float = 0.0
    ended: bool = False

    @property
    def weight(self) -> int:
        if self.ended:
            return 100 if self.ok else 0
        return self.steps[-1].weight if self.steps else 0

    def as_dict(self) -> dict[str, Any]:
        """The history record's and status's `canary`."""
        last = self.steps[-1] if self.steps else None
        return {
            "result": ("promoted" if self.ok else "aborted") if self.ended else "running",
            "reason": self.reason, "tag": self.tag, "stable": self.stable,
            "step": len(self.steps), "weight": self.weight, "since": self.since,
            "seconds": self.seconds,
            "measurements": last.measurements if last else [],
            "steps": [asdict(s) for s in self.steps],
        }


# --- requests from another shell ----------------------------------------------------------------
def leave_request(state_dir: Path, action: str) -> None:
    from .state import atomic_write, now_iso

    assert action in ACTIONS
    atomic_write(state_dir / REQUEST_FILE, json.dumps({"action": action, "at": now_iso()}))


def take_request(state_dir: Path) -> str | None:
    """The request left for the running canary, removed once read (a bad file is dropped)."""
    path = state_dir / REQUEST_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        doc = {}
    path.unlink(missing_ok=True)
    action = doc.get("action") if isinstance(doc, dict) else None
    return action if action in ACTIONS else None


# --- the run ------------------------------------------------------------------------------------
# Sets the canary's share (100: all) and returns the (stable, canary) addresses it split between.
Split = Callable[[int], "tuple[list[str], list[str]]"]


class Canary:
    def __init__(self, plan: CanaryPlan, access_log: AccessLog | None, state_dir: Path,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.plan = plan
        self.access_log = access_log
        self.state_dir = state_dir
        self.clock = clock
        self.sleep = sleep

    def begin(self) -> None:
        """Just before the first share: the access log counts from here; an old request
        (left for a canary that ended) is dropped."""
        if self.access_log is not None:
            self.access_log.start()
        take_request(self.state_dir)

    def run(self, tag: str, stable: str, split: Split, watched: Watched, since: float,
            baseline: dict[str, float | None],
            on_round: Callable[[CanaryResult], None] = lambda _: None) -> CanaryResult:
        """Every step in order, each share set by `split` (the first was set at the cutover
        already: setting it again changes nothing). `since`: the Unix time the log check
        counts from. `on_round` is told after every share and round (the journal)."""
        from .settings import WatchSettings
        from .state import now_iso

        p = self.plan
        watch = Watch(WatchSettings(checks=p.watch_checks(tag, stable), inconclusive="fail"))
        result = CanaryResult(True, None, tag, stable, now_iso())
        started = self.clock()
        for n, (weight, seconds) in enumerate(p.steps):
            addresses = split(weight)
            record = StepRecord(weight, 0.0, "running")
            result.steps.append(record)
            on_round(result)
            log.info("canary %s: step %d, %d %% for %gs", tag, n + 1, weight, seconds)
            end = self._step(tag, stable, record, seconds, addresses, watch, watched, since,
                             baseline, result, started, on_round)
            if end is not None:
                return end
        result.ok, result.ended = True, True
        result.seconds = round(self.clock() - started, 3)
        return result

    def _step(self, tag: str, stable: str, record: StepRecord, seconds: float,
              addresses: tuple[list[str], list[str]], watch: Watch, watched: Watched, since: float,
              baseline: dict[str, float | None], result: CanaryResult, started: float,
              on_round: Callable[[CanaryResult], None]) -> CanaryResult | None:
        """One step to its end: None when it passed (the next step follows), else the ended
        result (promoted now, or failed)."""
        p = self.plan
        answers = Answers()
        began = self.clock()
        next_round = began + p.interval
        promote = False
        while True:
            problem = watched.problem()
            if problem:
                return self._end(result, started, False, problem)
            request = take_request(self.state_dir)
            if request == "abort":
                record.result = "aborted"
                return self._end(result, started, False, "aborted by obs-agent canary abort")
            promote = promote or request == "promote"
            now = self.clock()
            if now >= next_round or (promote and request == "promote"):
                round_ = self._measure(tag, answers, addresses, watch, watched, since, baseline)
                record.measurements = [m.as_dict() for m in round_]
                record.requests = {"canary": len(answers.canary), "stable": len(answers.stable)}
                record.seconds = round(now - began, 3)
                result.seconds = round(now - started, 3)
                on_round(result)
                for m in round_:
                    (log.warning if m.verdict != "pass" else log.info)(
                        "canary %s %d %%: %s %s %s", tag, record.weight, m.check, m.verdict, m.detail)
                failed = [m for m in round_ if m.verdict == "fail"]
                if failed:
                    record.result = "failed"
                    return self._end(result, started, False, f"check {failed[0].check!r} failed at "
                                     f"{record.weight} %: {failed[0].detail}")
                inconclusive = [m for m in round_ if m.verdict == "inconclusive"]
                if promote and not inconclusive:
                    record.result = "promoted"
                    log.info("canary %s promoted by obs-agent canary promote", tag)
                    return self._end(result, started, True, None)
                if now - began >= seconds:
                    if not inconclusive:
                        record.result = "passed"
                        return None
                    why = f"{inconclusive[0].check}: {inconclusive[0].detail}"
                    if p.inconclusive == "pass":
                        record.result = "inconclusive-passed"
                        return None
                    held = now - began - seconds
                    if p.inconclusive == "fail" or held >= p.max_hold_seconds:
                        record.result = "failed"
                        return self._end(result, started, False, f"step at {record.weight} % "
                                         f"inconclusive ({why})" + (
                                             f" after holding {held:.0f}s (max_hold_seconds "
                                             f"{p.max_hold_seconds:g})" if p.inconclusive == "hold" else ""))
                    record.held_s = round(held, 3)
                next_round = now + p.interval
            self.sleep(max(0.0, min(POLL, next_round - self.clock())))

    def _measure(self, tag: str, answers: Answers, addresses: tuple[list[str], list[str]],
                 watch: Watch, watched: Watched, since: float,
                 baseline: dict[str, float | None]) -> list[Measurement]:
        from .watch import Measurement as M

        p = self.plan
        if self.access_log is not None:
            answers.add(self.access_log.read(), *addresses)
        out: list[M] = []
        for c in p.checks:
            if c.kind == "success_rate":
                out.append(judge_success_rate(c, answers, p.min_requests))
            elif c.kind == "latency":
                out.append(judge_latency(c, answers, p.min_requests))
        out += watch.measure(tag, watched, since, baseline)
        for m in out:
            m.detail = REDACTOR(m.detail)
        return out

    def _end(self, result: CanaryResult, started: float, ok: bool, reason: str | None) -> CanaryResult:
        result.ok, result.ended = ok, True
        result.seconds = round(self.clock() - started, 3)
        result.reason = None if reason is None else REDACTOR(f"canary: {reason}")
        return result


@dataclass(frozen=True)
class CanaryRun:
    """A deploy's canary as the transaction uses it: the plan and its runner."""

    plan: CanaryPlan
    runner: Canary

    @classmethod
    def of(cls, settings: CanarySettings, proxy: ProxySettings, state_dir: Path) -> CanaryRun:
        plan = CanaryPlan.of(settings)
        access = AccessLog(Path(proxy.access_log), proxy.kind) if proxy.access_log else None
        return cls(plan, Canary(plan, access, state_dir))

    def baseline(self, tag: str, stable: str) -> dict[str, float | None]:
        """The prometheus checks' values just before the switch, as the watch takes them."""
        from .settings import WatchSettings

        checks = self.plan.watch_checks(tag, stable)
        return Watch(WatchSettings(checks=checks)).baseline() if checks else {}
