"""A test run killed mid-test (SIGKILL: no teardown ran) leaves its daemons, private engine,
bridge and containers behind; the next run sweeps them at its start and passes without any
manual cleanup (tests/sweep.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import parts, runs

pytestmark = pytest.mark.integration

# The inner run: the shared registry and images, an agent root with a deployed release, an
# sshd and a private engine; then it waits to be killed, or (the second run) ends.
INNER = '''
import json, os, time
from tests import parts
from tests.faults import PrivateEngine
from tests.parts_ssh import Sshd


def test_inner(agent_root, tmp_path):
    assert agent_root.agent("deploy", "v1.0.0").returncode == 0
    engine = PrivateEngine().start()
    sshd = Sshd(tmp_path / "sshd").start()
    try:
        report = os.environ.get("INNER_REPORT")
        if report:
            run = os.environ["OBS_TEST_RUN"]
            with open(report + ".tmp", "w") as f:
                json.dump({"run": run, "project": agent_root.project, "bridge": engine.bridge,
                           "dockerd": engine.proc.pid, "sshd": sshd.proc.pid, "base": str(engine.base)}, f)
            os.rename(report + ".tmp", report)
            time.sleep(600)  # killed here
    finally:
        sshd.stop()
        engine.destroy()
'''


def inner_run(test_file: Path, report: Path | None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in (runs.ENV, "PYTEST_XDIST_WORKER")}
    if report is not None:
        env["INNER_REPORT"] = str(report)
    # `-p tests.conftest`: the suite's fixtures and session hooks, for a file outside tests/.
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider",
         "-p", "tests.conftest", "--rootdir", str(test_file.parent),
         "--basetemp", str(test_file.parent / f"basetemp-{'killed' if report else 'again'}"), str(test_file)],
        cwd=parts.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def containers_of(project: str) -> list[str]:
    return subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                          capture_output=True, text=True, timeout=60).stdout.split()


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True, timeout=30).returncode == 0


def test_a_killed_run_is_swept_by_the_next_one(tmp_path: Path, images: dict[str, str]) -> None:
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(INNER)
    report = tmp_path / "report.json"
    killed = inner_run(test_file, report)
    try:
        deadline = time.monotonic() + 300
        while not report.exists():
            assert killed.poll() is None, killed.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the inner run never got to its test"
            time.sleep(0.2)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=60)
    left = json.loads(report.read_text())
    registry = json.loads((Path(left["run"]) / "registry.json").read_text())
    # What a killed run leaves: nothing of it was torn down.
    assert containers_of(left["project"]), "the deployed release"
    assert alive(left["dockerd"]) and alive(left["sshd"])
    assert link_exists(left["bridge"]) and Path(left["base"]).is_dir()
    assert _listening(registry["port"])

    again = inner_run(test_file, None)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-4000:]
    assert "swept what dead test runs left" in out, out[-3000:]
    assert not containers_of(left["project"])
    assert not alive(left["dockerd"]) and not alive(left["sshd"])
    assert not link_exists(left["bridge"]) and not Path(left["base"]).exists()
    assert not _listening(registry["port"])
    assert not Path(left["run"]).exists()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
