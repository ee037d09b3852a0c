"""Remove what dead test runs left behind: a run killed mid-test (SIGKILL, a CI timeout)
never ran its fixtures' teardown, so its private dockerds, registries, sshds, proxies, network
namespaces, bridges, mounts, compose projects and users stay on the machine.

Only what a run wrote in its ledger (tests/runs.py) is touched, and only once no process of
that run is alive (its lock is free): never the user's own containers, nor those of another
session running right now. Every session's controller calls `sweep()` at its start, and
`sweep_run()` on its own run at its end (which also stops the shared daemons).

    .venv/bin/python -m tests.sweep        sweep dead runs by hand
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.runs import RUNS, Resource, current, ledger, pid_start


def sweep() -> list[str]:
    """Sweep every dead run but this one; returns what was removed."""
    if not RUNS.is_dir():
        return []
    removed: list[str] = []
    mine = current()
    for run in sorted(RUNS.iterdir()):
        if run == mine or run.name.startswith(".") or not run.is_dir():
            continue
        with open(run / "lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a process of that run is alive
            removed += sweep_run(run)
    return removed


def sweep_run(run: Path) -> list[str]:
    """Remove what `run` recorded, newest first, then the run directory itself."""
    items = ledger(run)
    removed: list[str] = []
    by_kind = {k: [r for r in reversed(items) if r.kind == k]
               for k in ("engine", "pid", "mount", "netns", "link", "project", "user", "dir")}
    removed += _engines(by_kind["engine"])
    removed += _processes(by_kind["pid"])
    removed += _netns(by_kind["netns"])
    for r in by_kind["mount"]:
        if _umount_under(Path(r.name), include_self=True):
            removed.append(f"mount {r.name}")
    for r in by_kind["link"]:
        if subprocess.run(["ip", "link", "del", r.name], capture_output=True, timeout=30).returncode == 0:
            removed.append(f"link {r.name}")
    removed += _projects({r.name for r in by_kind["project"]})
    for r in by_kind["user"]:
        if subprocess.run(["userdel", "--force", "--remove", r.name], capture_output=True,
                          timeout=60).returncode == 0:
            removed.append(f"user {r.name}")
    for r in by_kind["dir"]:
        path = Path(r.name)
        if path.exists():
            _umount_under(path)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(f"dir {r.name}")
    _umount_under(run)
    shutil.rmtree(run, ignore_errors=True)
    return removed


def _alive(r: Resource) -> bool:
    return bool(r.start) and pid_start(int(r.name)) == r.start


def _processes(procs: list[Resource]) -> list[str]:
    """SIGTERM (a dockerd stops its containers, nginx its workers), then SIGKILL what is left
    after 20 s. A pid whose start time differs is another process now: left alone."""
    live = [r for r in procs if _alive(r)]
    for r in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(r.name), signal.SIGTERM)
    deadline = time.monotonic() + 20
    while any(_alive(r) for r in live) and time.monotonic() < deadline:
        time.sleep(0.1)
    for r in live:
        if _alive(r):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(r.name), signal.SIGKILL)
    return [f"process {r.name} ({r.what})" for r in live]


def _engines(engines: list[Resource]) -> list[str]:
    """A private engine still running: its containers and networks go first (a network's br-*
    interface outlives the dockerd that made it)."""
    removed = []
    for r in engines:
        if not Path(r.name.removeprefix("unix://")).exists():
            continue
        docker = ["docker", "-H", r.name]
        with contextlib.suppress(subprocess.TimeoutExpired):
            ids = subprocess.run([*docker, "ps", "-aq"], capture_output=True, text=True, timeout=20).stdout.split()
            if ids:
                subprocess.run([*docker, "rm", "-f", *ids], capture_output=True, timeout=120)
            subprocess.run([*docker, "network", "prune", "-f"], capture_output=True, timeout=60)
            removed.append(f"the containers and networks of engine {r.name}")
    return removed


def _netns(spaces: list[Resource]) -> list[str]:
    """What still runs in a namespace (containerd, shims, containers of a killed lab dockerd)
    is killed, then the namespace deleted."""
    names = [r.name for r in spaces if Path(f"/run/netns/{r.name}").exists()]
    for ns in names:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                              timeout=30).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    return [f"netns {ns}" for ns in names]


def _projects(projects: set[str]) -> list[str]:
    """Containers, networks and volumes of the run's compose projects on the host engine,
    found by compose's project label (one listing each, not one per project)."""
    if not projects or not shutil.which("docker"):
        return []
    label = '{{.Label "com.docker.compose.project"}}'
    removed = []
    for kind, ls, name, rm in (("container", ["ps", "-a"], "{{.Names}}", ["rm", "-f"]),
                               ("network", ["network", "ls"], "{{.Name}}", ["network", "rm"]),
                               ("volume", ["volume", "ls"], "{{.Name}}", ["volume", "rm", "-f"])):
        out = subprocess.run(["docker", *ls, "--format", f"{name} {label}"], capture_output=True,
                             text=True, timeout=120).stdout
        hits = [n for n, _, p in (line.partition(" ") for line in out.splitlines()) if p in projects]
        if hits:
            subprocess.run(["docker", *rm, *hits], capture_output=True, timeout=300)
            removed += [f"{kind} {n}" for n in hits]
    return removed


def _umount_under(base: Path, include_self: bool = False) -> bool:
    """Unmount (lazily, deepest first) what is mounted under `base`; True when anything was."""
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    prefix = str(base).rstrip("/") + "/"
    hits = sorted((m for m in mounts if m.startswith(prefix) or (include_self and m == str(base))),
                  key=len, reverse=True)
    for target in hits:
        subprocess.run(["umount", "-l", target], capture_output=True, timeout=30)
    return bool(hits)


if __name__ == "__main__":
    for line in sweep():
        print(line)
