"""Real parts for the watch window, metrics and notifications (SPEC §16): a Prometheus
(Debian `prometheus`) scraping an exporter in the test process, a node_exporter (Debian
`prometheus-node-exporter`) with its textfile collector, and HTTP endpoints that take apprise's
`json://` notifications, or hang. Everything on free loopback ports, in tmp directories."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests import runs
from tests.parts import free_port, wait_port


def http_json(url: str, timeout: float = 3) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@dataclass
class Exporter:
    """prometheus-client's HTTP server in this process: one gauge, a series per test."""

    port: int = field(default_factory=free_port)

    def start(self) -> Exporter:
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        self.registry = CollectorRegistry()
        self.gauge = Gauge("obs_test_value", "a value the tests raise after the switch",
                           ["case"], registry=self.registry)
        self.server, self.thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Prometheus:
    """`prometheus` with its own config and storage, scraping `targets` every second."""

    workdir: Path
    targets: list[str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: obs-test\n    static_configs:\n"
            f"      - targets: {json.dumps(self.targets)}\n"
        )
        log = open(self.workdir / "prometheus.log", "wb")  # noqa: SIM115 (lives with the process)
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
             "--log.level=warn"],
            stdout=log, stderr=log,
        )
        runs.record_process(self.proc.pid, "prometheus")
        wait_port(self.port, 30)
        return self

    def value(self, query: str) -> float | None:
        doc = http_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
        result = doc["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, query: str, want: float, timeout: float = 20) -> None:
        """Until Prometheus has scraped `want` for `query`."""
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            try:
                got = self.value(query)
            except OSError:
                got = None
            if got == want:
                return
            time.sleep(0.2)
        raise AssertionError(f"Prometheus did not see {query} = {want} within {timeout}s (last {got})")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(15)


@dataclass
class NodeExporter:
    """`prometheus-node-exporter` with only the textfile collector, reading `textfile_dir`."""

    textfile_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeExporter:
        self.textfile_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{self.port}",
             "--collector.disable-defaults", "--collector.textfile",
             f"--collector.textfile.directory={self.textfile_dir}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        runs.record_process(self.proc.pid, "prometheus-node-exporter")
        wait_port(self.port, 20)
        return self

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return r.read().decode()  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)


class NotificationSink:
    """An HTTP endpoint on loopback that keeps what apprise's json:// posts to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.received.append({"path": self.path, "headers": dict(self.headers),
                                      "body": json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HangingEndpoint:
    """Accepts connections and never answers (a notification service that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            while True:
                conn, _ = self.sock.accept()
                self.held.append(conn)
        except OSError:
            pass

    def stop(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()
