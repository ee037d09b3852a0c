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
from server_agent.gate.probe import FAILS_IN_A_ROW, ProbeRun, probe
from server_agent.root import AgentRoot


class Service:
    """Answers /health with `status` after `lag` seconds; the first `hang` requests get no
    answer at all for 3 s (a connection accepted by Docker's userland proxy whose dial to the
    container was lost)."""

    def __init__(self, status: str = "healthy", lag: float = 0.0, hang: int = 0) -> None:
        self.status, self.lag, self.hang = status, lag, hang
        self.asked = 0
        self.in_flight = self.most_in_flight = 0
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                service.asked += 1
                service.in_flight += 1
                service.most_in_flight = max(service.most_in_flight, service.in_flight)
                time.sleep(3.0 if service.asked <= service.hang else service.lag)
                service.in_flight -= 1
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
    assert (answer.kind, answer.detail) == ("down", "no answer within 0.1s")
    assert probe(slow.url, allow_degraded=False).kind == "pass"


def test_a_slow_health_endpoint_passes_and_is_never_asked_twice_at_once(
        tmp_path: Path, service: type[Service]) -> None:
    """Each answer takes 0.5 s: the probe waits for it rather than sending another beside it
    (the one given up on would still be in the service's hands)."""
    slow = service(lag=0.5)
    assert gate(tmp_path, slow.url).healthy
    assert slow.most_in_flight == 1


def test_a_probe_run_asks_again_only_when_due_and_counts_failures_in_a_row(
        service: type[Service]) -> None:
    """What the gate loop uses round by round, for each URL (a container, a node): once
    answered, the next round gets the last answer until the next probe is due."""
    failing = service(status="error")
    run = ProbeRun(allow_degraded=False)
    assert run.ask(failing.url).detail == "HTTP 200 status=error"
    assert run.ask(failing.url).detail == "HTTP 200 status=error"
    assert (failing.asked, run.sent, run.fails_in_a_row) == (1, 1, 1)
    while run.sent < FAILS_IN_A_ROW:
        run.ask(failing.url)
    assert run.failed and run.answered and failing.asked == FAILS_IN_A_ROW
