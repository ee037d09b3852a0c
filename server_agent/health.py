"""HealthGate: is the release healthy by the seed's success criteria (SPEC §6)?

It wakes on Docker events (a `die` or `health_status` of one of the release's containers
arrives within milliseconds) and probes `health_url` every PROBE_INTERVAL, so a crashed
release fails at once and an error-answering one after three answers, not after the timeout.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .engine import PROJECT_LABEL, ContainerInfo, Engine, EngineUnreachable
from .redact import REDACTOR
from .root import AgentRoot

log = logging.getLogger("obs.health")

PROBE_INTERVAL = 0.05
PROBE_TIMEOUT = 2.0
# Before a container has answered once, a probe gives up sooner, and a little later each
# time (0.1, 0.2, 0.4 ... 2 s): right after a start, a connection to the published port
# (accepted at once by Docker's userland proxy) can get no answer for a second or more while
# one opened 0.3-0.8 s later is answered in a millisecond; the gate then waited the whole
# PROBE_TIMEOUT on the first (bench scenario 3 traced a 2.003 s first probe in the error
# gate and the restore). A slow health endpoint still gets PROBE_TIMEOUT in the end.
FIRST_PROBE_TIMEOUT = 0.1
FAILS_IN_A_ROW = 3


@dataclass
class GateResult:
    healthy: bool
    reason: str
    seconds: float
    answers: list[str] = field(default_factory=list)  # the last health_url answers, redacted


@dataclass
class HealthAnswer:
    kind: str  # pass | wait | fail | down
    detail: str
    timed_out: bool = False  # down because no answer came within the probe's timeout


def classify(status: int, body: bytes, allow_degraded: bool) -> HealthAnswer:
    """Map one HTTP answer of health_url to pass / wait / fail (SPEC §6). A JSON status of
    initializing/starting keeps waiting whatever the HTTP status: a service that is still
    starting may well answer 503 meanwhile (the example observer does)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    st = str(doc["status"]).lower() if isinstance(doc, dict) and "status" in doc else None
    if st in ("initializing", "starting"):
        return HealthAnswer("wait", f"HTTP {status} status={st}")
    if not 200 <= status < 300:
        return HealthAnswer("fail", f"HTTP {status}" + (f" status={st}" if st else ""))
    if st is None or st == "healthy" or (st == "degraded" and allow_degraded):
        return HealthAnswer("pass", f"HTTP {status}" + (f" status={st}" if st else ""))
    return HealthAnswer("fail", f"HTTP {status} status={st}")


def probe(url: str, allow_degraded: bool, timeout: float = PROBE_TIMEOUT) -> HealthAnswer:
    """GET health_url once, straight to its address: no proxy from the environment and no
    redirect (a service answers for itself; a 3xx is not 2xx). http.client, not urllib: the
    engine reads load it anyway, and urllib.request costs `status` another 10 ms."""
    conn: http.client.HTTPConnection | None = None
    try:
        where = urlsplit(url)
        kind = http.client.HTTPSConnection if where.scheme == "https" else http.client.HTTPConnection
        conn = kind(where.hostname or "", where.port, timeout=timeout)
        conn.request("GET", (where.path or "/") + (f"?{where.query}" if where.query else ""))
        resp = conn.getresponse()
        return classify(resp.status, resp.read(65536), allow_degraded)
    except TimeoutError:
        return HealthAnswer("down", f"no answer within {timeout:g}s", timed_out=True)
    except (OSError, http.client.HTTPException, ValueError) as exc:  # ValueError: a bad URL
        return HealthAnswer("down", f"no answer ({exc})")
    finally:
        if conn is not None:
            conn.close()


_WORST_FIRST = ("fail", "down", "wait", "pass")


def worst(answers: Iterable[HealthAnswer]) -> HealthAnswer:
    """The answer that decides for several containers: one failure fails them all."""
    return min(answers, key=lambda a: _WORST_FIRST.index(a.kind))


@dataclass
class ProbeRun:
    """The probes of one gate at the same URLs, round after round: the timeout grows from
    FIRST_PROBE_TIMEOUT until they have answered once, and failures are counted in a row
    (not before the first answer: a port refused while starting is not a failure)."""

    allow_degraded: bool
    answered: bool = False
    timeouts: int = 0  # rounds in a row that timed out before the first answer
    fails_in_a_row: int = 0

    def ask(self, urls: Iterable[str]) -> HealthAnswer:
        """One round: every URL once, the worst answer decides."""
        timeout = PROBE_TIMEOUT if self.answered else min(
            PROBE_TIMEOUT, FIRST_PROBE_TIMEOUT * 2 ** self.timeouts)
        ans = worst(probe(u, self.allow_degraded, timeout) for u in urls)
        if ans.kind != "down":
            self.answered = True
        elif ans.timed_out:
            self.timeouts += 1
        self.fails_in_a_row = self.fails_in_a_row + 1 if ans.kind == "fail" and self.answered else 0
        return ans

    @property
    def failed(self) -> bool:
        return self.fails_in_a_row >= FAILS_IN_A_ROW


class HealthGate:
    def __init__(self, root: AgentRoot, engine: Engine) -> None:
        self.root = root
        self.engine = engine
        s = root.settings
        self.timeout = s.health_timeout
        self.stabilize = s.stabilize_seconds
        self.pattern = re.compile(s.verify.log_pattern) if s.verify.log_pattern else None
        env = s.verify.container_env
        self.container_env = s.required_env if env is None else env

    def wait(self, tag: str | None, containers: list[ContainerInfo], started_ns: int, *,
             contract: Collection[str], stabilize: float | None = None) -> GateResult:
        """Gate `containers`, started at `started_ns` (time.time_ns() just before their start):
        their events since then count, so a crash in the first milliseconds is not missed.

        `tag`: the release they must belong to (None: any, e.g. an accessory). `contract`:
        the contract services (SPEC §14); their containers carry verify and the container
        environment, and health_url is probed when any is among `containers`.
        `stabilize`: instead of stabilize_seconds (0 for an accessory: healthy is enough)."""
        started = time.monotonic()
        ids = {c.id for c in containers}
        contract_ids = {c.id for c in containers if c.service in contract}
        wake = threading.Event()
        dead: list[str] = []
        since_ns = started_ns
        stream = self._open_events(since_ns)
        if stream is not None:
            threading.Thread(
                target=self._watch_events, args=(stream, ids, since_ns, wake, dead), daemon=True
            ).start()
        answers: list[str] = []
        try:
            # The proxied service (SPEC §15) is asked health_url whether it carries the
            # contract or not: it is what the proxy will send users to.
            proxy = self.root.settings.proxy
            proxied = proxy is not None and any(c.service == proxy.service for c in containers)
            reason = self._loop(tag, ids, contract_ids, proxied, wake, dead, answers, started,
                                self.stabilize if stabilize is None else stabilize)
        finally:
            if stream is not None:
                stream.close()
        seconds = round(time.monotonic() - started, 3)
        if reason is None:
            return GateResult(True, "healthy", seconds)
        return GateResult(False, REDACTOR(reason), seconds, [REDACTOR(a) for a in answers[-5:]])

    def _loop(self, tag: str | None, ids: set[str], contract_ids: set[str], proxied: bool,
              wake: threading.Event,
              dead: list[str], answers: list[str], started: float, stabilize: float) -> str | None:
        deadline = started + self.timeout
        healthy_since: float | None = None
        probes = ProbeRun(self.root.settings.allow_degraded)
        log_seen = self.pattern is None or not contract_ids
        health_url = self.root.settings.health_url if contract_ids or proxied else None
        verify_paths = self.root.settings.verify.paths if contract_ids else []
        env_checked = False
        waiting_on = "containers"
        while True:
            now = time.monotonic()
            if dead:
                return dead[0]
            try:
                infos = [self.engine.inspect(cid) for cid in ids]
            except EngineUnreachable:
                # dockerd restarting: not a verdict on the release; wait for it, up to the deadline.
                if now >= deadline:
                    return f"the Docker engine was unreachable until health_timeout={self.timeout:g}s"
                healthy_since = None
                wake.wait(PROBE_INTERVAL * 4)
                continue
            except Exception as exc:  # a container removed under us is a failure of this release
                return f"cannot inspect the release's containers: {exc}"
            for c in infos:
                if c.state in ("exited", "dead") or (c.state == "created" and now - started > 5):
                    return f"container {c.name} exited with code {c.exit_code}"
                if c.state == "restarting" or c.restart_count > 0:
                    # Restarted already, the exit code inspect shows is the new run's; the
                    # `die` event, due any moment, carries the real one.
                    wait_until = time.monotonic() + 0.5
                    while not dead and time.monotonic() < wait_until:
                        time.sleep(0.02)
                    return dead[0] if dead else f"container {c.name} crashed and is restarting"
                if c.health == "unhealthy":
                    return f"container {c.name} is unhealthy (Docker healthcheck)"
                if tag is not None and c.tag != tag:
                    return f"container {c.name} belongs to release {c.tag or '(none)'}, not {tag}"
            ok = all(c.state == "running" and c.health in (None, "healthy") for c in infos)
            if not ok:
                waiting_on = "container health (" + ", ".join(
                    f"{c.name}: {c.health or c.state}" for c in infos) + ")"
            # Probe as soon as the containers run, before Docker's own healthcheck has had its
            # first interval: an error-answering release is caught within three probes.
            urls = self._health_urls(health_url, infos)
            if all(c.state == "running" for c in infos) and urls:
                ans = probes.ask(urls)
                answers.append(ans.detail)
                del answers[:-10]
                if probes.failed:
                    return f"health_url answered a failure {FAILS_IN_A_ROW} times in a row: {ans.detail}"
                if ans.kind != "pass":
                    ok = False
                    waiting_on = f"health_url ({ans.detail})"
            if ok:
                missing = [p for p in verify_paths if not (self.root.path / p).exists()]
                if missing:
                    ok = False
                    waiting_on = "verify.paths " + ", ".join(missing)
            if ok and not env_checked:
                unset = sorted({n for c in infos if c.id in contract_ids
                                for n in self.container_env if n not in c.env_names})
                if unset:
                    return "not set inside the container: " + ", ".join(unset)
                env_checked = True
            if ok and not log_seen:
                assert self.pattern is not None
                log_seen = all(self.engine.logs_contain(cid, self.pattern) for cid in contract_ids)
                if not log_seen:
                    ok = False
                    waiting_on = f"verify.log_pattern {self.pattern.pattern!r} in the log"
            if ok:
                healthy_since = healthy_since or now
                if now - healthy_since >= stabilize:
                    return None
            else:
                healthy_since = None
            if now >= deadline:
                return f"not healthy within health_timeout={self.timeout:g}s; waiting on {waiting_on}"
            wake.wait(PROBE_INTERVAL)
            wake.clear()

    def _health_urls(self, health_url: str | None, infos: list[ContainerInfo]) -> list[str]:
        """health_url; with a proxy (SPEC §15), asked of each of the proxied service's
        containers at its own address (its ephemeral host port or its network address),
        never through the proxy, which still serves the old release."""
        proxy = self.root.settings.proxy
        if health_url is None or proxy is None:
            return [health_url] if health_url else []
        from .proxy import rewrite_url

        proxied = [c for c in infos if c.service == proxy.service]
        if not proxied:
            return [health_url]
        addresses = [c.address(proxy.port) for c in proxied]
        return [rewrite_url(health_url, a) for a in addresses if a is not None]

    def _open_events(self, since_ns: int) -> Any:
        try:
            return self.engine.client.api.events(
                decode=True,
                filters={"type": "container", "label": f"{PROJECT_LABEL}={self.root.project}"},
                since=since_ns // 1_000_000_000,
            )
        except Exception:  # the polling loop still sees everything, only later
            return None

    @staticmethod
    def _watch_events(stream: Any, ids: set[str], since_ns: int, wake: threading.Event,
                      dead: list[str]) -> None:
        """Turn a `die` or `health_status: unhealthy` of the release into an immediate verdict.
        Events from before the start (the stop of a kept container now started again) are
        old news."""
        try:
            for ev in stream:
                if ev.get("id") not in ids or int(ev.get("timeNano") or 0) < since_ns:
                    continue
                action = str(ev.get("Action") or ev.get("status") or "")
                attrs = (ev.get("Actor") or {}).get("Attributes") or {}
                name = attrs.get("name", str(ev.get("id", ""))[:12])
                if action == "die":
                    dead.append(f"container {name} exited with code {attrs.get('exitCode', '?')}")
                elif action.startswith("health_status") and "unhealthy" in action:
                    dead.append(f"container {name} is unhealthy (Docker healthcheck)")
                wake.set()
        except Exception:  # closing the stream at the end of the gate ends the loop
            pass

    def diagnostics(self, result: GateResult, containers: list[ContainerInfo]) -> dict[str, Any]:
        """What an operator needs to see why a release failed: the containers' log tails and
        Docker health logs (read while the containers still exist), and the last answers."""
        return {
            "log_tail": {c.id[:12]: self.engine.logs_tail(c.id) for c in containers},
            "health_log": {c.id[:12]: self.engine.health_log(c.id) for c in containers},
            "health_answers": result.answers,
        }
