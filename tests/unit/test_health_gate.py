"""The gate loop's probing against a real HTTP server, with a stand-in engine (the containers'
states are not what is tested here; tests/integration show the gate on the real engine)."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server_agent.backends.compose import ContainerObserver
from server_agent.engine import ContainerInfo
from server_agent.gate.criteria import GateCriteria
from server_agent.gate.loop import Verdict, run_gate
from server_agent.gate.probe import FIRST_PROBE_TIMEOUT, PROBE_TIMEOUT, ProbeRun, probe
from server_agent.root import AgentRoot


class Service:
    """Answers /health with `status` after `lag` seconds; the first `hang` requests get no
    answer at all for 3 s (a connection accepted by Docker's userland proxy whose dial to the
    container was lost)."""

    def __init__(self, status: str = "healthy", lag: float = 0.0, hang: int = 0) -> None:
        self.status, self.lag, self.hang = status, lag, hang
        self.asked = 0
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                service.asked += 1
                time.sleep(3.0 if service.asked <= service.hang else service.lag)
                body = json.dumps({"status": service.status}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except BrokenPipeError:  # the probe gave up on this one
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/health"


@pytest.fixture
def service() -> Iterator[type[Service]]:
    made: list[Service] = []

    def make(*args: object, **kw: object) -> Service:
        s = Service(*args, **kw)  # type: ignore[arg-type]
        made.append(s)
        return s

    yield make  # type: ignore[misc]
    for s in made:
        s.server.shutdown()


class RunningContainers:
    """The engine as the gate sees it: containers that run, without a Docker healthcheck."""

    client = None  # no event stream: the gate polls

    def inspect(self, cid: str) -> ContainerInfo:
        return ContainerInfo(
            id=cid, name=f"p-web-{cid}", service="web", number=1, image="reg/web:v1",
            state="running", health=None, exit_code=0, restart_count=0,
            env_names=frozenset(), stop_timeout=None, restart_policy={}, tag="v1",
            role="release", config_hash="h", binds=frozenset(), ports=frozenset())


def gate(tmp_path: Path, url: str) -> Verdict:
    """The gate of one contract container of v1 that runs, with `url` as health_url."""
    (tmp_path / "deployment_config.json").write_text(json.dumps({"service": {}, "agent": {
        "health_url": url, "health_timeout": 8, "stabilize_seconds": 0, "verify": {"paths": []},
        "required_env": []}}))
    root = AgentRoot(tmp_path)
    engine = RunningContainers()
    observer = ContainerObserver(engine, "p", [engine.inspect("1")], time.time_ns(), "v1",  # type: ignore[arg-type]
                                 {"web"}, None)
    return run_gate(observer, GateCriteria.of(root.settings, root.path).for_step(contract=True))


def test_a_probe_that_times_out_says_so(service: type[Service]) -> None:
    slow = service(lag=0.5)
    answer = probe(slow.url, allow_degraded=False, timeout=0.1)
    assert (answer.kind, answer.timed_out, answer.detail) == ("down", True, "no answer within 0.1s")
    assert probe(slow.url, allow_degraded=False).kind == "pass"


def test_a_hung_first_connection_does_not_hold_the_gate(tmp_path: Path, service: type[Service]) -> None:
    """Two connections that would hang for 3 s: the gate gives each up after 0.1 s, then
    0.2 s, and judges the third answer, not after 2 x PROBE_TIMEOUT."""
    failing = service(status="error", hang=2)
    result = gate(tmp_path, failing.url)
    assert not result.healthy and "3 times in a row" in result.reason, result
    assert result.seconds < PROBE_TIMEOUT, result
    assert result.answers[:2] == (f"no answer within {FIRST_PROBE_TIMEOUT:g}s",
                                  f"no answer within {2 * FIRST_PROBE_TIMEOUT:g}s")


def test_a_slow_health_endpoint_still_passes(tmp_path: Path, service: type[Service]) -> None:
    """Each answer takes 0.5 s: the first probes give up too soon, the later ones wait long
    enough, and once it has answered every probe waits PROBE_TIMEOUT."""
    slow = service(lag=0.5)
    result = gate(tmp_path, slow.url)
    assert result.healthy, result


def test_a_probe_run_waits_longer_until_answered_then_counts_failures_in_a_row(
        service: type[Service]) -> None:
    """What the gate loop uses round by round, for each URL (a container, a node)."""
    failing = service(status="error", hang=2)
    run = ProbeRun(allow_degraded=False)
    details = [run.ask([failing.url]).detail for _ in range(4)]
    assert details[:2] == [f"no answer within {FIRST_PROBE_TIMEOUT:g}s",
                           f"no answer within {2 * FIRST_PROBE_TIMEOUT:g}s"]
    assert details[2:] == ["HTTP 200 status=error"] * 2 and not run.failed
    run.ask([failing.url])
    assert run.failed and run.answered
