"""examples/observer/observer.py on the host: health JSON, graceful SIGTERM, whole JSONL lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.parts import REPO, free_port

OBSERVER = REPO / "examples" / "observer" / "observer.py"
STATUSES = {"healthy", "degraded", "shutting_down", "initializing"}


class Running:
    def __init__(self, proc: subprocess.Popen[str], port: int, archive: Path) -> None:
        self.proc, self.port, self.archive = proc, port, archive

    def get(self, path: str = "/health") -> tuple[int, dict]:  # type: ignore[type-arg]
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 (loopback)
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def wait_health(self, timeout: float = 10) -> tuple[int, dict]:  # type: ignore[type-arg]
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.get()
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)

    def wait_until(self, cond, timeout: float = 10, what: str = "") -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not cond():
            assert self.proc.poll() is None, f"observer exited early: {self.output()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def output(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stdout.read() if self.proc.stdout else ""


@pytest.fixture
def start(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    procs: list[subprocess.Popen[str]] = []

    def _start(**env: str) -> Running:
        port = free_port()
        archive = tmp_path / "config" / "observer" / "observer.jsonl"
        full = {
            **os.environ,
            "OBSERVER_ARCHIVE": str(archive),
            "OBSERVER_HOST": "127.0.0.1",
            "OBSERVER_PORT": str(port),
            "OBSERVER_INTERVAL": "0.05",
            "OBSERVER_VERSION": "v9.9.9",
            **env,
        }
        proc = subprocess.Popen(
            [sys.executable, str(OBSERVER)], env=full, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        return Running(proc, port, archive)

    yield _start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def lines(archive: Path) -> list[dict]:  # type: ignore[type-arg]
    raw = archive.read_bytes()
    assert raw.endswith(b"\n"), f"partial last line: {raw[-80:]!r}"
    return [json.loads(line) for line in raw.decode().splitlines()]


def test_health_json_has_the_seed_fields(start) -> None:  # type: ignore[no-untyped-def]
    obs = start(OBSERVER_STARTUP_SECONDS="0.8")
    code, body = obs.wait_health()
    assert code == 503 and body["status"] == "initializing"
    assert body["ready"] is False and body["live"] is True
    obs.wait_until(lambda: obs.get()[1]["status"] == "healthy", what="healthy")
    code, body = obs.get()
    assert code == 200
    assert set(body) >= {"status", "ready", "live", "checks", "in_flight_tasks", "uptime_seconds"}
    assert body["status"] in STATUSES
    assert body["ready"] is True and body["live"] is True
    assert isinstance(body["in_flight_tasks"], int) and body["in_flight_tasks"] in (0, 1)
    assert body["uptime_seconds"] > 0
    assert body["checks"]["writer_alive"] is True
    assert body["checks"]["archive_path"] == str(obs.archive)
    assert body["version"] == "v9.9.9"
    assert obs.get("/live") == (200, {"live": True})
    assert obs.get("/ready") == (200, {"ready": True})
    assert obs.get("/nope")[0] == 404
    assert obs.stop() == 0
    records = lines(obs.archive)
    assert records and [r["seq"] for r in records] == list(range(1, len(records) + 1))


def test_health_never_shows_secret_values(start) -> None:  # type: ignore[no-untyped-def]
    obs = start(KIS_API_KEY="kis-SENTINEL-1234", KIS_API_SECRET="")
    _code, body = obs.wait_health()
    env = body["checks"]["environment"]
    assert env["KIS_API_KEY"] is True and env["KIS_API_SECRET"] is False
    assert "SENTINEL" not in json.dumps(body)
    assert obs.stop() == 0


def test_sigterm_mid_write_finishes_the_line_and_exits_0(start) -> None:  # type: ignore[no-untyped-def]
    # Each record takes ~1.2 s to write, in pieces; the signal lands while a line is half out.
    obs = start(OBSERVER_INTERVAL="0", OBSERVER_WRITE_DELAY="1.2")
    obs.wait_health()
    obs.wait_until(lambda: obs.archive.exists() and obs.archive.read_bytes().count(b"\n") >= 1,
                   what="a first whole record")

    def mid_line() -> bool:
        raw = obs.archive.read_bytes()
        return bool(raw) and not raw.endswith(b"\n")

    obs.wait_until(mid_line, what="a write in flight")
    before = obs.archive.read_bytes().count(b"\n")
    obs.proc.send_signal(signal.SIGTERM)
    # While the write finishes, health says so (503 shutting_down, one task in flight).
    obs.wait_until(lambda: obs.get()[1]["status"] == "shutting_down", timeout=1,
                   what="shutting_down")
    code, body = obs.get()
    assert code == 503 and body["status"] == "shutting_down", body
    assert body["in_flight_tasks"] == 1 and body["ready"] is False
    assert obs.proc.wait(15) == 0, obs.output()
    records = lines(obs.archive)
    # The line in flight was finished, and no new one was started after the signal.
    assert len(records) == before + 1
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert "observer stopped" in obs.output()


def test_sigint_is_graceful_too(start) -> None:  # type: ignore[no-untyped-def]
    obs = start()
    obs.wait_health()
    obs.wait_until(lambda: obs.archive.exists() and obs.archive.stat().st_size > 0,
                   what="a record")
    assert obs.stop(signal.SIGINT) == 0
    assert lines(obs.archive)


def test_partial_line_from_a_hard_kill_is_cut_at_start(start) -> None:  # type: ignore[no-untyped-def]
    obs = start(OBSERVER_INTERVAL="0", OBSERVER_WRITE_DELAY="1.0")
    obs.wait_health()
    obs.wait_until(lambda: obs.archive.exists() and b"\n" in obs.archive.read_bytes()
                   and not obs.archive.read_bytes().endswith(b"\n"), what="a write in flight")
    obs.proc.kill()  # SIGKILL mid-write leaves a partial line
    obs.proc.wait()
    assert not obs.archive.read_bytes().endswith(b"\n")
    again = start()
    again.wait_health()
    again.wait_until(lambda: again.get()[1]["checks"]["records_written"] >= 2, what="records")
    assert again.stop() == 0
    records = lines(again.archive)
    assert len(records) >= 3


def test_pause_stops_the_collector_and_resume_starts_it_again(start) -> None:  # type: ignore[no-untyped-def]
    obs = start()
    obs.wait_health()
    obs.wait_until(lambda: obs.get()[1]["checks"]["records_written"] >= 2, what="records")

    def post(path: str) -> tuple[int, dict]:  # type: ignore[type-arg]
        body = json.dumps({"action": "deploy", "tag": "v2.0.0", "from_tag": "v1.0.0", "result": None}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{obs.port}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=2) as r:  # noqa: S310 (loopback)
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert post("/pause") == (200, {"paused": True})
    code, health = obs.get()
    assert code == 200 and health["status"] == "healthy" and health["checks"]["paused"] is True
    # Paused between two records: at most the one in flight is finished, then nothing more.
    obs.wait_until(lambda: obs.archive.read_text().count("\n") == obs.get()[1]["checks"]["records_written"],
                   what="the archive to hold every record")
    written = obs.get()[1]["checks"]["records_written"]
    lines = obs.archive.read_text().count("\n")
    time.sleep(0.5)  # ten intervals: a collector still running would write ten records meanwhile
    assert obs.get()[1]["checks"]["records_written"] <= written + 1
    assert obs.archive.read_text().count("\n") <= lines + 1
    assert post("/resume") == (200, {"paused": False})
    resumed_at = obs.get()[1]["checks"]["records_written"]
    obs.wait_until(lambda: obs.get()[1]["checks"]["records_written"] > resumed_at + 2, what="records again")
    assert obs.get()[1]["checks"]["paused"] is False
    assert post("/nowhere")[0] == 404
    assert obs.stop() == 0
    assert all(json.loads(line) for line in obs.archive.read_text().splitlines())
