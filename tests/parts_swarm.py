"""A real multi-node Docker Swarm on this one machine, for the swarm suite (SPEC §17, issue 16).

    netns obsw<id>s ("switch"): bridge br0 .1, docker-registry on .1:5000
      ├─veth─ netns obsw<id>n1: eth0 .2, dockerd (manager)
      └─veth─ netns obsw<id>n2: eth0 .3, dockerd (worker)

Each node is a dockerd in a network namespace of its own (own data root, exec root, pidfile,
socket, and its own docker0 inside that namespace), on a /24 of faults.PRIVATE_RANGES that
nothing on the machine routes. The registry listens on the bridge's address only; every
engine of the lab marks it insecure. The host engine and the host's networks are never touched:
the host netns gets nothing (its firewall, Docker's FORWARD DROP, never sees the lab's traffic).

`SwarmLab.destroy()` removes all of it (processes by pid, namespaces, bridge, directories), and
runs even when `start()` failed half-way.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import parts, runs
from tests.faults import BRIDGE_LOCK, free_subnet, ip
from tests.parts import VENV_BIN, AgentRootDir, no_traceback

REGISTRY_PORT = 5000


@dataclass
class Node:
    name: str  # the network namespace's name
    address: str
    base: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.base / "d.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def docker(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["docker", "-H", self.host, *args], capture_output=True, text=True,
                             timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} on {self.name}: {res.stderr.strip()[-2000:]}")
        return res

    @property
    def hostname(self) -> str:
        return "node" + self.name[-1]  # node1 (the manager), node2

    def netns_argv(self, *argv: str) -> list[str]:
        """`argv` in the node's network namespace. nsenter, not `ip netns exec`: that one also
        makes a mount namespace with a fresh /sys, where dockerd finds no cgroup mounted."""
        return ["nsenter", f"--net=/run/netns/{self.name}", *argv]


@dataclass
class SwarmLab:
    nodes_wanted: int = 2
    lab_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="obsw-", dir="/tmp")))
    nodes: list[Node] = field(default_factory=list)
    net: ipaddress.IPv4Network | None = None
    registry_proc: subprocess.Popen[bytes] | None = None
    namespaces: list[str] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"obsw{self.lab_id}s"  # interface names made from it stay <= 15 characters

    @property
    def gateway(self) -> str:
        assert self.net is not None
        return str(self.net[1])

    @property
    def registry(self) -> str:
        return f"{self.gateway}:{REGISTRY_PORT}"

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    # --- bring-up ------------------------------------------------------------------------------
    def start(self) -> SwarmLab:
        runs.record("dir", str(self.base))
        self._network()
        self._registry()
        for node in self.nodes:
            self._dockerd(node)
        self._swarm()
        return self

    def _network(self) -> None:
        """The lab's "switch" is a namespace of its own holding the bridge: on the host, Docker's
        FORWARD policy (DROP, br_netfilter) would drop the traffic between the nodes, and the
        host's firewall is not ours to change."""
        with open(BRIDGE_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            net = free_subnet("the swarm lab")
            runs.record("netns", self.switch)
            ip("netns", "add", self.switch)
            self.namespaces.append(self.switch)
            self.net = net
        for args in (("link", "set", "lo", "up"), ("link", "add", "br0", "type", "bridge"),
                     ("addr", "add", f"{net[1]}/{net.prefixlen}", "dev", "br0"),
                     ("link", "set", "br0", "up")):
            ip("-n", self.switch, *args)
        for i in range(1, self.nodes_wanted + 1):
            ns = f"{self.switch[:-1]}n{i}"
            runs.record("netns", ns)
            ip("netns", "add", ns)
            self.namespaces.append(ns)
            # Both ends are made on the host under unique names, then moved out of it at once.
            switch_end, node_end = f"{self.switch[:-1]}h{i}", f"{self.switch[:-1]}p{i}"
            ip("link", "add", switch_end, "type", "veth", "peer", "name", node_end)
            ip("link", "set", switch_end, "netns", self.switch)
            ip("link", "set", node_end, "netns", ns)
            ip("-n", self.switch, "link", "set", switch_end, "master", "br0")
            ip("-n", self.switch, "link", "set", switch_end, "up")
            address = str(net[1 + i])
            for args in (("link", "set", "lo", "up"), ("link", "set", node_end, "name", "eth0"),
                         ("addr", "add", f"{address}/{net.prefixlen}", "dev", "eth0"),
                         ("link", "set", "eth0", "up"), ("route", "add", "default", "via", self.gateway)):
                ip("-n", ns, *args)
            base = self.base / f"n{i}"
            base.mkdir()
            self.nodes.append(Node(ns, address, base))

    def in_switch(self, *argv: str) -> list[str]:
        """`argv` in the switch's namespace, from where every node's address is reachable."""
        return ["nsenter", f"--net=/run/netns/{self.switch}", *argv]

    def http_get(self, url: str, timeout: float = 3) -> tuple[int, str]:
        """GET `url` from the switch (curl): (HTTP status, body), or (0, why nothing answered)."""
        res = subprocess.run(self.in_switch("curl", "-sS", "--noproxy", "*", "-m", str(timeout),
                                            "-w", "\n%{http_code}", url),
                             capture_output=True, text=True, timeout=timeout + 5)
        if res.returncode != 0:
            return 0, res.stderr.strip()
        body, _, code = res.stdout.rpartition("\n")
        return int(code), body

    def _registry(self) -> None:
        work = self.base / "registry"
        work.mkdir()
        cfg = work / "config.yml"
        cfg.write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {work / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.registry}\n"
        )
        log = open(work / "registry.log", "wb")  # noqa: SIM115 (lives with the process)
        self.registry_proc = subprocess.Popen(self.in_switch("docker-registry", "serve", str(cfg)),
                                              stdout=log, stderr=log, start_new_session=True)
        runs.record_process(self.registry_proc.pid, "the swarm lab's registry")
        _wait(lambda: self.http_get(f"http://{self.registry}/v2/")[0] == 200, 15, "the lab's registry")

    def _dockerd(self, node: Node) -> None:
        log = open(node.base / "dockerd.log", "ab")  # noqa: SIM115 (lives with the process)
        node.proc = subprocess.Popen(
            # A UTS namespace of its own too, so each node has its own hostname in the swarm.
            node.netns_argv("unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', node.hostname,
                            "dockerd", "--data-root", str(node.base / "data"),
                            "--exec-root", str(node.base / "x"), "--pidfile", str(node.base / "d.pid"),
                            "-H", node.host, "--insecure-registry", self.registry),
            stdout=log, stderr=log, start_new_session=True)
        runs.record_process(node.proc.pid, f"dockerd of {node.name}")
        deadline = time.monotonic() + 60
        while node.docker("info", timeout=10, check=False).returncode != 0:
            if node.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd of {node.name} did not start: "
                                   + (node.base / "dockerd.log").read_text()[-2000:])
            time.sleep(0.2)

    def _swarm(self) -> None:
        m = self.manager
        m.docker("swarm", "init", "--advertise-addr", m.address, "--listen-addr", f"{m.address}:2377",
                 "--dispatcher-heartbeat", "1s")
        token = m.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        for node in self.nodes[1:]:
            node.docker("swarm", "join", "--token", token, "--advertise-addr", node.address,
                        "--listen-addr", f"{node.address}:2377", f"{m.address}:2377")
        _wait(lambda: self.ready_nodes() == len(self.nodes), 60, "every node ready in the swarm")

    def ready_nodes(self) -> int:
        out = self.manager.docker("node", "ls", "--format", "{{json .}}").stdout
        return sum(1 for line in out.splitlines() if json.loads(line)["Status"] == "Ready")

    def push_fixture_images(self) -> dict[str, str]:
        """Build the fixture releases on the manager (FROM scratch: nothing to pull) and push
        them to the lab's registry; every node pulls them from there."""
        import docker

        client = docker.DockerClient(base_url=self.manager.host, timeout=300)
        try:
            return parts.build_fixture_images(client, self.registry)
        finally:
            client.close()

    # --- faults -------------------------------------------------------------------------------
    def node_down(self, node: Node) -> None:
        """The node drops off the network, as a crashed VM does: its link goes down."""
        ip("-n", node.name, "link", "set", "eth0", "down")

    def node_up(self, node: Node) -> None:
        ip("-n", node.name, "link", "set", "eth0", "up")
        ip("-n", node.name, "route", "replace", "default", "via", self.gateway)

    # --- teardown -----------------------------------------------------------------------------
    def destroy(self) -> None:
        for node in reversed(self.nodes):
            if node.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.send_signal(signal.SIGTERM)
                try:
                    node.proc.wait(30)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(10)
        for ns in self.namespaces:  # containerd, shims and containers the dockerd left behind
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
            for pid in pids.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    import os

                    os.kill(int(pid), signal.SIGKILL)
        if self.registry_proc is not None:
            self.registry_proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.registry_proc.wait(10)
        time.sleep(0.5 if self.namespaces else 0)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.net = None
        _unmount_under(self.base)
        shutil.rmtree(self.base, ignore_errors=True)


def _unmount_under(base: Path) -> None:
    """Unmount whatever a killed engine left mounted under `base` (its overlays, netns files),
    deepest first."""
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for target in sorted((m for m in mounts if m.startswith(str(base) + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, timeout=30)


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


# --- an agent root whose engine is the lab's swarm ------------------------------------------
SWARM_COMPOSE = """\
services:
  observer:
    image: {registry}/{repository}:${{IMAGE_TAG:?IMAGE_TAG required}}
    stop_grace_period: 5s
    # One replica per node, each writing its own node's ./data: not one archive written twice.
    labels:
      obsdeploy.single_writer: "false"
{ports}    environment:
      QTS_OBSERVER_STANDALONE: ${{QTS_OBSERVER_STANDALONE}}
      PYTHONPATH: ${{PYTHONPATH}}
      KIS_API_KEY: ${{KIS_API_KEY}}
      KIS_API_SECRET: ${{KIS_API_SECRET}}
    volumes:
      - ./data:/app/data/observer
      - ./logs:/app/logs
      - ./config:/app/config
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8000/health"]
      interval: 0.5s
      timeout: 1s
      retries: 3
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
"""
HOST_PORT = """\
    ports:
      - target: 8000
        published: {port}
        mode: host
"""



@dataclass
class SwarmRoot(AgentRootDir):
    lab: SwarmLab | None = None

    def env(self, **extra: str) -> dict[str, str]:
        assert self.lab is not None
        return super().env(**{"DOCKER_HOST": self.lab.manager.host, **extra})

    def argv(self, *args: str) -> list[str]:
        assert self.lab is not None
        return self.lab.manager.netns_argv(str(VENV_BIN / "obs-agent"), *args)

    def agent(self, *args: str, env: dict[str, str] | None = None,
              timeout: float = 240) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(self.argv(*args), env=env or self.env(), capture_output=True,
                             text=True, timeout=timeout)
        parts.OUTPUTS.append(res.stdout + res.stderr)
        return res

    def down(self) -> None:
        assert self.lab is not None
        self.lab.manager.docker("stack", "rm", self.project, check=False)

    def tasks(self) -> list[dict[str, Any]]:
        """status --json's release tasks."""
        res = self.agent("status", "--json")
        no_traceback(res)
        assert res.returncode == 0, res.stdout + res.stderr
        return [s for s in json.loads(res.stdout)["services"] if s["role"] == "release"]

    def answers(self) -> dict[str, str | None]:
        """The version each node's task answers on the published port."""
        assert self.lab is not None
        out: dict[str, str | None] = {}
        for node in self.lab.nodes:
            code, body = self.lab.http_get(f"http://{node.address}:{self.port}/health")
            out[node.address] = json.loads(body)["version"] if code == 200 else None
        return out



def make_swarm_root(path: Path, lab: SwarmLab, *, published: bool = True, **agent: object) -> SwarmRoot:
    project = f"obsw-{uuid.uuid4().hex[:8]}"
    base = parts.make_agent_root(path, lab.registry, project)
    port = base.port
    (path / "docker-compose.server.yml").write_text(SWARM_COMPOSE.format(
        registry=lab.registry, repository=parts.REPOSITORY,
        ports=HOST_PORT.format(port=port) if published else ""))
    for d in ("data", "logs", "config/observer"):
        (path / d).mkdir(parents=True, exist_ok=True)
    cfg = json.loads((path / "deployment_config.json").read_text())
    cfg["agent"].update({"engine": "swarm", "health_timeout": 60, "stabilize_seconds": 0.5, **agent})
    if not published:
        cfg["agent"].pop("health_url")
    (path / "deployment_config.json").write_text(json.dumps(cfg, indent=2))
    return SwarmRoot(path, port, lab.registry, project, lab)


