#!/usr/bin/env python3
"""A minimal observer: the service obsdeploy deploys, in Python's standard library only.

It stands in for the real market-data collector: a writer thread appends one JSON object
per line to the archive (default /app/config/observer/observer.jsonl), and an HTTP server
answers the seed's health JSON on /health:

    {"status": "healthy" | "degraded" | "shutting_down" | "initializing",
     "ready": bool, "live": bool, "checks": {...}, "in_flight_tasks": int,
     "uptime_seconds": float, "version": str}

/health answers 200 for healthy and degraded, 503 for initializing and shutting_down (so a
plain HTTP probe or the compose healthcheck reads it correctly). /live and /ready answer the
two booleans alone.

The trading pause (the seed's DeploySafetyGuard): POST /pause stops the collector between two
records (the one being written is finished), POST /resume starts it again; both answer
{"paused": bool}, and /health shows `checks.paused` (a paused collector is not stale, so it
stays healthy). A deploy calls them as a pre_switch / post_switch pair of hooks.

SIGTERM (and SIGINT) is graceful: the status turns `shutting_down`, the writer finishes the
record it is writing (never a partial line), the archive is flushed and fsynced, and the
process exits 0. A partial last line left by a hard kill (SIGKILL, power loss) is cut off at
the next start, so every line of the archive always parses.

Settings (environment):
    OBSERVER_ARCHIVE           archive path (default /app/config/observer/observer.jsonl)
    OBSERVER_HOST / _PORT      listen address (default 0.0.0.0:8000)
    OBSERVER_INTERVAL          seconds between records (default 1.0)
    OBSERVER_STARTUP_SECONDS   time spent `initializing` before the first record (default 0)
    OBSERVER_STALE_SECONDS     no record for this long -> `degraded` (default 30)
    OBSERVER_WRITE_DELAY       test hook: seconds spent inside one write, the line being
                               written in pieces (default 0)
    OBSERVER_VERSION           reported in /health and in each record (default "dev")
    QTS_OBSERVER_STANDALONE, PYTHONPATH, KIS_API_KEY, KIS_API_SECRET: the service's standard
    environment; /health reports whether each is set, never its value.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger("observer")

STANDARD_ENV = ("QTS_OBSERVER_STANDALONE", "PYTHONPATH", "KIS_API_KEY", "KIS_API_SECRET")
SYMBOLS = ("005930", "000660", "035420", "051910", "207940")


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw.strip() else default
    except ValueError:
        raise SystemExit(f"observer: {name}={raw!r} is not a number") from None


class Archive:
    """The JSONL archive. One record = one complete line, written under a lock."""

    def __init__(self, path: Path, write_delay: float = 0.0) -> None:
        self.path = path
        self.write_delay = write_delay
        self.lock = threading.Lock()
        self.in_flight = 0
        self.records = 0
        self.last_write: float | None = None
        self.last_error: str | None = None
        self._fh: io.FileIO | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115 (held for the run)

    def _repair(self) -> None:
        """Cut off a partial last line (left only by a hard kill), so every line parses."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0:
            return
        with open(self.path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
            fh.seek(0)
            keep = fh.read().rfind(b"\n") + 1
            fh.truncate(keep)
            log.warning("archive %s: removed a partial last line (%d bytes)", self.path,
                        size - keep)

    def write(self, record: dict[str, object]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        assert self._fh is not None
        with self.lock:
            self.in_flight += 1
            try:
                if self.write_delay > 0:
                    # Test hook: the line goes out in pieces, so a signal can land mid-write.
                    step = max(1, len(line) // 4)
                    for i in range(0, len(line), step):
                        self._fh.write(line[i:i + step])
                        time.sleep(self.write_delay / 4)
                else:
                    self._fh.write(line)
                self.records += 1
                self.last_write = time.monotonic()
                self.last_error = None
            except OSError as exc:
                self.last_error = f"{type(exc).__name__}: {exc.strerror}"
                raise
            finally:
                self.in_flight -= 1

    def close(self) -> None:
        with self.lock:
            if self._fh is not None:
                os.fsync(self._fh.fileno())
                self._fh.close()
                self._fh = None


class Observer:
    def __init__(self) -> None:
        self.version = os.environ.get("OBSERVER_VERSION", "dev")
        self.interval = _float_env("OBSERVER_INTERVAL", 1.0)
        self.startup = _float_env("OBSERVER_STARTUP_SECONDS", 0.0)
        self.stale = _float_env("OBSERVER_STALE_SECONDS", 30.0)
        self.archive = Archive(
            Path(os.environ.get("OBSERVER_ARCHIVE", "/app/config/observer/observer.jsonl")),
            _float_env("OBSERVER_WRITE_DELAY", 0.0),
        )
        self.started = time.monotonic()
        self.stopping = threading.Event()
        self.initialized = threading.Event()
        self.paused = threading.Event()
        self.writer = threading.Thread(target=self._write_loop, name="writer", daemon=True)
        self.seq = 0

    # --- the collector ---------------------------------------------------------------------
    def _write_loop(self) -> None:
        if self.stopping.wait(self.startup):
            return
        self.initialized.set()
        rng = random.Random()
        while not self.stopping.is_set():
            if self.paused.is_set():  # between records: the last one was written whole
                self.stopping.wait(self.interval)
                continue
            self.seq += 1
            record = {
                "seq": self.seq,
                "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "symbol": rng.choice(SYMBOLS),
                "price": round(rng.uniform(10_000, 900_000), -1),
                "volume": rng.randint(1, 5_000),
                "version": self.version,
            }
            try:
                self.archive.write(record)
            except OSError as exc:
                log.error("archive write failed: %s", exc)
            # The stop check is between records: a record once started is always finished.
            self.stopping.wait(self.interval)

    # --- health ----------------------------------------------------------------------------
    def health(self) -> tuple[int, dict[str, object]]:
        a = self.archive
        age = None if a.last_write is None else round(time.monotonic() - a.last_write, 3)
        checks: dict[str, object] = {
            "writer_alive": self.writer.is_alive(),
            "archive_path": str(a.path),
            "archive_writable": a.last_error is None,
            "last_write_age_seconds": age,
            "records_written": a.records,
            "paused": self.paused.is_set(),
            "environment": {name: bool(os.environ.get(name)) for name in STANDARD_ENV},
        }
        if self.stopping.is_set():
            status = "shutting_down"
        elif not self.initialized.is_set():
            status = "initializing"
        elif not self.writer.is_alive() or a.last_error or (
                age is not None and age > self.stale and not self.paused.is_set()):
            status = "degraded"
        else:
            status = "healthy"
        body = {
            "status": status,
            "ready": status in ("healthy", "degraded"),
            "live": status != "shutting_down" or self.writer.is_alive(),
            "checks": checks,
            "in_flight_tasks": a.in_flight,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "version": self.version,
        }
        return (200 if body["ready"] else 503), body

    # --- lifecycle -------------------------------------------------------------------------
    def run(self, host: str, port: int) -> int:
        self.archive.open()
        server = ThreadingHTTPServer((host, port), _handler(self))
        server.daemon_threads = True
        http = threading.Thread(target=server.serve_forever, name="http", daemon=True)

        def on_signal(signum: int, _frame: object) -> None:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        http.start()
        self.writer.start()
        log.info("observer %s listening on %s:%d, archive %s", self.version, host,
                 server.server_address[1], self.archive.path)
        while not self.stopping.wait(0.5):
            pass
        # The writer finishes the record in flight, then sees the stop flag.
        self.writer.join(timeout=25)
        clean = not self.writer.is_alive()
        self.archive.close()
        server.shutdown()
        server.server_close()
        log.info("observer stopped after %d records%s", self.archive.records,
                 "" if clean else " (writer did not finish in time)")
        return 0 if clean else 1


def _handler(observer: Observer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "observer"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            code, body = observer.health()
            path = self.path.split("?", 1)[0]
            if path == "/live":
                code, body = (200 if body["live"] else 503), {"live": body["live"]}
            elif path == "/ready":
                code, body = (200 if body["ready"] else 503), {"ready": body["ready"]}
            elif path != "/health":
                code, body = 404, {"error": "not found", "paths": ["/health", "/live", "/ready"]}
            self._answer(code, body)

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            # The body (a deploy's hook sends the attempt as JSON) says who asked, for the log.
            length = int(self.headers.get("Content-Length") or 0)
            try:
                asked = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                asked = {}
            who = f" by {asked.get('action')} {asked.get('tag')}" if isinstance(asked, dict) and asked else ""
            path = self.path.split("?", 1)[0]
            if path in ("/pause", "/resume"):
                if path == "/pause":
                    observer.paused.set()
                else:
                    observer.paused.clear()
                log.info("collector %s%s", "paused" if path == "/pause" else "resumed", who)
                code, body = 200, {"paused": observer.paused.is_set()}
            else:
                code, body = 404, {"error": "not found", "paths": ["/pause", "/resume"]}
            self._answer(code, body)

        def _answer(self, code: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(message)s")
    host = os.environ.get("OBSERVER_HOST", "0.0.0.0")  # noqa: S104 (inside a container)
    port = int(_float_env("OBSERVER_PORT", 8000))
    return Observer().run(host, port)


if __name__ == "__main__":
    sys.exit(main())
