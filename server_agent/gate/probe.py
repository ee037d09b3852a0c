"""Probing health_url: one GET classified as pass / wait / fail / down, and a ProbeRun that
carries the probing of one URL through a gate, round after round."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

PROBE_TIMEOUT = 2.0
# Once a container has answered, it is asked again this long after an answer that passed,
# and sooner after one that did not (a failure is confirmed, a start awaited): a probe every
# round (50 ms) read as a visit counter of 37 after one deploy. Until the first answer it is
# asked every round: the first answer comes as soon as the service can give it.
PASSED_INTERVAL = 0.5
NOT_PASSED_INTERVAL = 0.2
FAILS_IN_A_ROW = 3


@dataclass
class HealthAnswer:
    kind: str  # pass | wait | fail | down
    detail: str


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
        return HealthAnswer("down", f"no answer within {timeout:g}s")
    except (OSError, http.client.HTTPException, ValueError) as exc:  # ValueError: a bad URL
        return HealthAnswer("down", f"no answer ({exc})")
    finally:
        if conn is not None:
            conn.close()


def url_port(url: str) -> int:
    """The TCP port a URL is asked at."""
    where = urlsplit(url)
    return where.port or (443 if where.scheme == "https" else 80)


_WORST_FIRST = ("fail", "down", "wait", "pass")


def worst(answers: Iterable[HealthAnswer]) -> HealthAnswer:
    """The answer that decides for several containers: one failure fails them all."""
    return min(answers, key=lambda a: _WORST_FIRST.index(a.kind))


@dataclass
class ProbeRun:
    """The probes of one gate at one URL (a container, a node), round after round: one at a
    time, each waited for up to PROBE_TIMEOUT, never abandoned for a new one (a probe given
    up on stays in the service's hands: an app sharing one database connection between
    threads answered 500 to the overlapping pair); every round until the first answer, then
    at a gentler cadence. Failures are counted in a row, not before the first answer (a port
    refused while starting is not a failure)."""

    allow_degraded: bool
    answered: bool = False
    fails_in_a_row: int = 0
    last: HealthAnswer | None = None
    next_at: float = 0.0  # time.monotonic() of the next probe
    sent: int = 0  # probes sent so far

    def ask(self, url: str) -> HealthAnswer:
        """This round's answer: a new probe when one is due, else the last answer."""
        if self.last is not None and time.monotonic() < self.next_at:
            return self.last
        ans = probe(url, self.allow_degraded)
        self.sent += 1
        if ans.kind != "down":
            self.answered = True
        self.fails_in_a_row = self.fails_in_a_row + 1 if ans.kind == "fail" and self.answered else 0
        if self.answered:
            self.next_at = time.monotonic() + (PASSED_INTERVAL if ans.kind == "pass" else NOT_PASSED_INTERVAL)
        self.last = ans
        return ans

    @property
    def failed(self) -> bool:
        return self.fails_in_a_row >= FAILS_IN_A_ROW
