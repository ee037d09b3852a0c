"""A test run's directory: who is alive, what the run started, and the daemons its pytest
processes (the xdist controller and its workers) share. Plain Python, no pytest.

    /tmp/obsdeploy-test-runs/<run>/
        lock               every process of the run holds a shared flock on it while it lives;
                           a sweeper that gets it exclusively knows the whole run is gone
        ledger-<pid>.jsonl what each process started (Resource lines), for the sweeper
        <name>.json        the state of a shared daemon (`shared`), written once per run
        <name>/            its working directory

The controller calls `start_run()` (it exports OBS_TEST_RUN, which the workers inherit) and
each worker `join_run()`. Outside a test session (bench/, the demo) there is no run: `record`
does nothing and `shared` just starts the daemon.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RUNS = Path("/tmp/obsdeploy-test-runs")
ENV = "OBS_TEST_RUN"
_held: list[Any] = []  # the lock file of this process's run, open for the process's life


@dataclass(frozen=True)
class Resource:
    """One thing a run started. kind: pid (name = pid, start = its start time, so a reused
    pid is never taken for it), engine (a private dockerd's DOCKER_HOST: its containers and
    networks), netns, link, mount, dir, project (a compose project on the host engine: its
    containers, networks and volumes), user."""

    kind: str
    name: str
    start: str = ""
    what: str = ""


def current() -> Path | None:
    path = os.environ.get(ENV)
    return Path(path) if path else None


def start_run() -> Path:
    """Make this session's run directory, hold its lock, and export it to the workers."""
    RUNS.mkdir(parents=True, exist_ok=True)
    # Made under a hidden name and locked before it gets its own: a sweeper never sees a run
    # directory whose lock nobody holds yet.
    tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=RUNS))
    _hold(tmp / "lock")
    run = RUNS / f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    tmp.rename(run)
    os.environ[ENV] = str(run)
    return run


def join_run() -> Path | None:
    run = current()
    if run is not None and not _held:
        _hold(run / "lock")
    return run


def _hold(lock: Path) -> None:
    f = open(lock, "a")  # noqa: SIM115 (open as long as the process lives)
    fcntl.flock(f, fcntl.LOCK_SH)
    _held.append(f)


def pid_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or ""."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]


def record(kind: str, name: str, what: str = "") -> None:
    """Note in the run's ledger that this process started `name` (before starting it, where a
    kill in between could leave it unnoted)."""
    run = current()
    if run is None:
        return
    start = pid_start(int(name)) if kind == "pid" else ""
    line = json.dumps(asdict(Resource(kind, name, start, what))) + "\n"
    with open(run / f"ledger-{os.getpid()}.jsonl", "a") as f:
        f.write(line)


def record_process(pid: int, what: str) -> None:
    record("pid", str(pid), what)


def ledger(run: Path) -> list[Resource]:
    out = []
    for f in sorted(run.glob("ledger-*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                out.append(Resource(**json.loads(line)))
            except (ValueError, TypeError):  # a line torn by a kill
                continue
    return out


def shared(name: str, start: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """The state of the run's shared daemon `name`: the first process to ask runs
    `start(workdir)` (which records what it starts) under a lock, the others wait and read what
    it returned. The run's end stops it (tests/sweep.py sweeps the run's own ledger), so a
    worker that finishes early never takes it away from the others."""
    from filelock import FileLock

    run = current()
    if run is None:
        return start(Path(tempfile.mkdtemp(prefix=f"obs-{name}-")))
    state = run / f"{name}.json"
    with FileLock(str(run / f"{name}.lock")):
        if state.exists():
            return json.loads(state.read_text())  # type: ignore[no-any-return]
        workdir = run / name
        workdir.mkdir(exist_ok=True)
        value = start(workdir)
        state.write_text(json.dumps(value))
        return value
