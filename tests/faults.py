"""Helpers of the fault-injection suite (tests/integration/test_faults_*.py, issue 5).

- `FaultProxy`: a TCP proxy in front of the registry that the test controls: forward, refuse
  connections (registry unreachable), answer HTTP 503 to the next N requests (then recover),
  delay every answer (slow), or accept and never answer (stalled).
- `PrivateEngine`: a second, private dockerd (own data root, exec root, socket, bridge and
  address ranges; no iptables) that a test may stop and restart without disturbing the
  machine's engine or other tests.
- `tmpfs`: a small tmpfs mounted as an agent root (disk-full cases).
- The invariants every case asserts (`DataSnapshot`, `assert_state_whole`, `serving`, ...).

Plain Python, no pytest fixtures, so test modules wrap what they need.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import parts, runs
from tests.parts import VENV_BIN, AgentRootDir, history, no_traceback

TAG_LINE = re.compile(r"v\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?\n")


# --- the registry proxy ----------------------------------------------------------------------
class FaultProxy:
    """A loopback TCP proxy to `target` ("127.0.0.1:PORT"). Modes:

    forward   pass bytes both ways
    refuse    nothing listens on the port: connections are refused
    fail      connections read one request and get `HTTP 503`: the next `fail_count` ones,
              or all of them for `fail_seconds` from the first one; then forward again (a
              registry answering 5xx, then recovering)
    slow      forward, holding each chunk from the registry back by `delay` seconds (and,
              with `upload`, each chunk to it: a slow push)
    stall     accept and read, never answer
    """

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.port = parts.free_port()
        self.mode = "forward"
        self.fail_count = 0
        self.fail_seconds = 0.0
        self._fail_until: float | None = None
        self.delay = 0.0
        self.upload = False
        self.connections = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._stop = threading.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._listen()
        return self

    def set(self, mode: str, *, fail_count: int = 0, fail_seconds: float = 0.0,
            delay: float = 0.0, upload: bool = False) -> None:
        assert mode in ("forward", "refuse", "fail", "slow", "stall"), mode
        with self._lock:
            self.mode, self.fail_count, self.delay = mode, fail_count, delay
            self.upload = upload
            self.fail_seconds, self._fail_until = fail_seconds, None
        if mode == "refuse":
            self._close_listener()
            self._drop_open()
        elif self._listener is None:
            self._listen()

    def stop(self) -> None:
        self._stop.set()
        self._close_listener()
        self._drop_open()

    # --- internals ---------------------------------------------------------------------------
    def _listen(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _close_listener(self) -> None:
        s, self._listener = self._listener, None
        if s is not None:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _drop_open(self) -> None:
        with self._lock:
            socks, self._open = self._open, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                mode = self.mode
                if mode == "fail":
                    now = time.monotonic()
                    if self.fail_seconds and self._fail_until is None:
                        self._fail_until = now + self.fail_seconds
                    if self.fail_count > 0 or (self._fail_until or 0) > now:
                        self.fail_count -= 1
                        self.failed += 1
                    else:
                        mode = self.mode = "forward"
                self._open.append(client)
            threading.Thread(target=self._serve, args=(client, mode), daemon=True).start()

    def _serve(self, client: socket.socket, mode: str) -> None:
        try:
            if mode == "fail":
                client.settimeout(5)
                client.recv(65536)
                body = b'{"errors":[{"code":"UNAVAILABLE","message":"fault injected"}]}'
                client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json"
                               b"\r\nContent-Length: " + str(len(body)).encode()
                               + b"\r\nConnection: close\r\n\r\n" + body)
                return
            if mode == "stall":
                while not self._stop.is_set() and client.recv(65536):
                    pass
                return
            upstream = socket.create_connection(self.target, timeout=10)
            with self._lock:
                self._open.append(upstream)
            self._pump(client, upstream)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.close()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            socks = [client, upstream]
            while not self._stop.is_set():
                ready, _, _ = select.select(socks, [], [], 0.5)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if self.mode == "slow" and (s is upstream or self.upload):
                        time.sleep(self.delay)
                    (upstream if s is client else client).sendall(data)
        finally:
            with contextlib.suppress(OSError):
                upstream.close()


# --- a private Docker engine ---------------------------------------------------------------
# Where a private engine's bridge takes its address: a /24 of a range Docker never picks by
# itself (its pools are 172.17-31.x and 192.168.x; swarm's 10.0.x upwards) that no route or
# address of the machine overlaps. The networks it creates (compose's PROJECT_default) come from
# Docker's own pools, which skip every subnet the machine already routes (the host engine's).
PRIVATE_RANGES = (ipaddress.IPv4Network("10.231.0.0/16"), ipaddress.IPv4Network("198.18.0.0/15"))
BRIDGE_LOCK = Path("/tmp/obsf-bridges.lock")  # one chooser at a time, across sessions


def ip(*args: str) -> str:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def free_subnet(what: str) -> ipaddress.IPv4Network:
    """The first /24 of PRIVATE_RANGES that overlaps nothing on the machine. Call it holding
    BRIDGE_LOCK, and claim the subnet (an interface with its address) before letting go."""
    used = networks_in_use()
    for net in (n for r in PRIVATE_RANGES for n in r.subnets(new_prefix=24)):
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError(f"no free /24 in {PRIVATE_RANGES} for {what}")


def networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 route destination (all tables) and address network of the machine."""
    nets = []
    for route in json.loads(ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        with contextlib.suppress(ValueError):
            if route.get("dst", "default") != "default":
                nets.append(ipaddress.IPv4Network(route["dst"], strict=False))
    for link in json.loads(ip("-j", "-4", "addr", "show") or "[]"):
        for a in link.get("addr_info", []):
            with contextlib.suppress(ValueError, KeyError):
                nets.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return nets


@dataclass
class PrivateEngine:
    """A second dockerd with its own roots and socket. Its containers, networks and images are
    its own; stopping it disturbs nobody else. `--iptables=false`: published ports go through
    the userland proxy, which is all the tests need on loopback.

    Its default network is on a bridge of its own (`bridge`, made here on a free private /24),
    because dockerd shares the machine's network namespace and deletes a "docker0" it does not
    own in two cases, after which the machine's engine runs no container on its default
    network until it restarts ("could not find bridge docker0", issue 12):
    - `--bridge=none`: dockerd removes docker0 when the bridge is disabled;
    - `--default-address-pool`: a restart (data root with a default network) removes docker0
      to recreate it from the pool, whatever `--bridge` names.
    And without `--bridge` it would use docker0 itself, the machine engine's bridge."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="obsf-", dir="/tmp")))
    bridge: str = field(default_factory=lambda: f"obsf{uuid.uuid4().hex[:8]}")  # <= 15 chars
    proc: subprocess.Popen[bytes] | None = None
    bridge_net: ipaddress.IPv4Network | None = None

    @property
    def socket(self) -> Path:
        return self.base / "d.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def docker(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "-H", self.host, *args], capture_output=True, text=True,
                              timeout=timeout)

    def make_bridge(self) -> None:
        """Create `bridge` on the first free /24 of PRIVATE_RANGES (kept across restarts)."""
        if self.bridge_net is not None:
            return
        with open(BRIDGE_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            net = free_subnet("a private engine's bridge")
            runs.record("link", self.bridge)
            ip("link", "add", self.bridge, "type", "bridge")
            self.bridge_net = net  # from here on destroy() removes it
            ip("addr", "add", f"{net[1]}/{net.prefixlen}", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")

    def remove_bridge(self) -> None:
        if self.bridge_net is not None:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=30)
            self.bridge_net = None

    def start(self, timeout: float = 60) -> PrivateEngine:
        runs.record("dir", str(self.base))
        runs.record("engine", self.host)
        self.make_bridge()
        log = open(self.base / "dockerd.log", "ab")  # noqa: SIM115 (lives with the process)
        self.proc = subprocess.Popen(
            ["dockerd", "--data-root", str(self.base / "data"), "--exec-root", str(self.base / "x"),
             "--pidfile", str(self.base / "d.pid"), "-H", self.host, f"--bridge={self.bridge}",
             "--iptables=false", "--ip-masq=false"],
            stdout=log, stderr=log, start_new_session=True,
        )
        runs.record_process(self.proc.pid, "private dockerd")
        deadline = time.monotonic() + timeout
        while self.docker("info", timeout=10).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the private dockerd did not start: "
                                   + (self.base / "dockerd.log").read_text()[-2000:])
            time.sleep(0.2)
        return self

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Remove everything start() made, whatever state the engine is in: containers, the
        networks it created (their br-* interfaces outlive dockerd), dockerd, its mounts, its
        bridge and its directory."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):  # a hung engine is killed
                    ids = self.docker("ps", "-aq").stdout.split()
                    if ids:
                        self.docker("rm", "-f", *ids)
                    self.docker("network", "prune", "-f")
            self.stop()
        finally:
            # dockerd unmounts its layers on a clean stop; anything left is unmounted lazily.
            for line in reversed(Path("/proc/mounts").read_text().splitlines()):
                mnt = line.split()[1]
                if mnt.startswith(str(self.base) + "/"):
                    subprocess.run(["umount", "-l", mnt], capture_output=True)
            self.remove_bridge()
            shutil.rmtree(self.base, ignore_errors=True)


# --- a small filesystem --------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    runs.record("mount", str(path))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def fill(path: Path, leave_bytes: int) -> Path:
    """Create `path` so that its filesystem has about `leave_bytes` free."""
    size = max(0, free_bytes(path.parent) - leave_bytes)
    with open(path, "wb") as f:
        if size:
            os.posix_fallocate(f.fileno(), 0, size)
    return path


# --- agent roots of the suite ----------------------------------------------------------------
@dataclass
class EngineRoot(AgentRootDir):
    """An agent root whose agent talks to another engine (DOCKER_HOST)."""

    docker_host: str = ""

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(**{"DOCKER_HOST": self.docker_host, **extra})

    def down(self) -> None:
        base = ["docker", "-H", self.docker_host]
        ids = subprocess.run([*base, "ps", "-aq", "--filter",
                              f"label=com.docker.compose.project={self.project}"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run([*base, "rm", "-f", *ids], capture_output=True)
        subprocess.run([*base, "network", "rm", f"{self.project}_default"], capture_output=True)


def new_project() -> str:
    return f"obsf-{uuid.uuid4().hex[:8]}"


def close_root(root: AgentRootDir) -> None:
    """What the agent_root fixture does at teardown: remove the containers, scan for secrets."""
    root.down()
    leaks = root.secret_leaks()
    assert not leaks, f"secret values leaked into: {leaks}"


@contextlib.contextmanager
def proxied_root(path: Path, registry: str, **agent: object) -> Iterator[tuple[AgentRootDir, FaultProxy]]:
    """An agent root whose compose image points at a FaultProxy in front of `registry`. The
    image references through the proxy's port are this root's own: they are untagged after."""
    proxy = FaultProxy(registry).start()
    root = parts.make_agent_root(path, proxy.address, new_project(), **agent)
    try:
        yield root, proxy
    finally:
        proxy.stop()
        root.down()
        refs = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}",
                               f"--filter=reference={proxy.address}/*/*:*"],
                              capture_output=True, text=True).stdout.split()
        if refs:
            subprocess.run(["docker", "rmi", *refs], capture_output=True)
        leaks = root.secret_leaks()
        assert not leaks, f"secret values leaked into: {leaks}"


# --- running the agent ---------------------------------------------------------------------
def spawn(root: AgentRootDir, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([str(VENV_BIN / "obs-agent"), *args], env=env or root.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def collect(proc: subprocess.Popen[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Wait for a spawned agent; its output joins the session's secret scan."""
    out, err = proc.communicate(timeout=timeout)
    parts.OUTPUTS.append(out + err)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for(cond: Any, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --- the invariants of every case (issue 5) ------------------------------------------------
@dataclass
class DataSnapshot:
    """The bytes of every file under config/ and data/ at one moment. The observer appends to
    its archive, so "intact" means: every file is still there and starts with what it had."""

    files: dict[str, bytes]

    @classmethod
    def take(cls, root: AgentRootDir) -> DataSnapshot:
        files = {}
        for top in ("config", "data"):
            for p in sorted((root.path / top).rglob("*")):
                if p.is_file() and not p.is_symlink():
                    files[str(p.relative_to(root.path))] = p.read_bytes()
        return cls(files)

    def assert_intact(self, root: AgentRootDir) -> None:
        for rel, old in self.files.items():
            p = root.path / rel
            assert p.is_file(), f"{rel} is gone"
            assert p.read_bytes()[: len(old)] == old, f"{rel} lost data"
        archive = root.path / "config" / "observer" / "observer.jsonl"
        if archive.exists():  # every line whole (a torn line would be data loss)
            lines = archive.read_text().splitlines()
            assert all(json.loads(line) for line in lines[:-1]), "observer.jsonl has torn lines"


def assert_state_whole(root: AgentRootDir, *, good: set[str | None] | None = None,
                       known_torn: frozenset[str] = frozenset()) -> None:
    """last_good_tag is one whole version line (or absent); history.jsonl is whole lines of
    JSON, each a record with the SPEC §8 keys; every archive in backups/ is whole."""
    lg = root.path / "state" / "last_good_tag"
    if lg.exists():
        assert TAG_LINE.fullmatch(lg.read_text()), f"last_good_tag is not whole: {lg.read_bytes()!r}"
    if good is not None:
        assert root.last_good() in good, (root.last_good(), good)
    hist = root.path / "state" / "history.jsonl"
    if hist.exists():
        data = hist.read_text()
        assert data.endswith("\n"), "history.jsonl ends with a torn line"
        for line in data.splitlines():
            if line in known_torn:  # put there by the test; the agent skips it on read
                continue
            rec = json.loads(line)
            assert {"action", "tag", "result", "started_at"} <= set(rec), rec
    # Archives are written as NAME.partial and renamed: whatever is named like an archive
    # must be a whole one (a killed writer may leave a .partial, which `list` never shows).
    for b in sorted((root.path / "backups").glob("backup-*.tar")):
        with tarfile.open(b) as tar:
            tar.getmembers()


def serving(root: AgentRootDir) -> str | None:
    h = root.health()
    return None if h is None else str(h.get("version"))


def running_tags(root: AgentRootDir) -> list[str]:
    """The release of each running container of the project, from the `obsdeploy.release`
    label the agent puts on it (an image reference may be a digest, or another tag of the same
    image: it does not say which release runs)."""
    docker_host = getattr(root, "docker_host", None)
    base = ["docker"] + (["-H", docker_host] if docker_host else [])
    out = subprocess.run(
        [*base, "ps", "--filter", f"label=com.docker.compose.project={root.project}",
         "--format", '{{.Label "obsdeploy.release"}}'], capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    return sorted(out)


def assert_serving_good(root: AgentRootDir, expected: str | None) -> None:
    """The release that passed the gate is serving (and only it), or nothing on a first deploy."""
    assert root.last_good() == expected
    if expected is None:
        assert serving(root) is None and running_tags(root) == []
    else:
        wait_for(lambda: serving(root) == expected, 10, f"{expected} to answer")
        assert running_tags(root) == [expected]


def assert_next_deploy_works(root: AgentRootDir, tag: str,
                             known_torn: frozenset[str] = frozenset()) -> None:
    res = root.agent("deploy", tag)
    no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
    assert serving(root) == tag and root.last_good() == tag
    assert history(root)[0]["result"] == "success"
    assert_state_whole(root, known_torn=known_torn)
