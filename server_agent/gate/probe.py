"""Probing health_url: one GET classified as pass / wait / fail / down, and a ProbeRun that
carries the probing of one gate round after round."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

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
