"""The real parts the tests (and bench/ and the demo) run against: a registry, fixture
images, sshd instances and agent roots. Plain Python, no pytest, so bench/ can use it too."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import runs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
IMAGE_DIR = HERE / "fixtures" / "image"
VENV_BIN = Path(sys.executable).parent
REPOSITORY = "obs/observer"
FIXTURE_BASE = "obs-fixture-base:latest"  # busybox and observer.sh; every release builds on it

# Fixture releases: tag -> behaviour (tests/fixtures/image/observer.sh).
RELEASES = {
    "v1.0.0": "healthy",
    "v1.1.0": "healthy",
    "v1.2.0": "healthy",
    "v2.0.0-error": "error",
    "v2.0.0-crash": "crash",
    "v2.0.0-slow": "slow",
    "v2.0.0-wrongpath": "wrongpath",
    "v2.0.0-flaky": "flaky",  # its API fails 10 % of requests, its health stays healthy
    "v2.0.0-sluggish": "sluggish",  # its API answers after 0.5 s
}
# Everything any agent printed in this test session, for the secret scan.
OUTPUTS: list[str] = []
SECRETS = {"KIS_API_KEY": "kis-key-SENTINEL-7f3a9c", "KIS_API_SECRET": "kis-secret-SENTINEL-d41e08"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Registry:
    """`docker-registry serve` on a free loopback port, optionally with htpasswd auth."""

    workdir: Path
    htpasswd: Path | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Registry:
        self.workdir.mkdir(parents=True, exist_ok=True)
        auth = (
            f"auth:\n  htpasswd:\n    realm: obs\n    path: {self.htpasswd}\n" if self.htpasswd else ""
        )
        cfg = self.workdir / "config.yml"
        cfg.write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {self.workdir / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.address}\n{auth}"
        )
        log = open(self.workdir / "registry.log", "wb")  # noqa: SIM115 (lives with the process)
        self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log, stderr=log)
        runs.record_process(self.proc.pid, "docker-registry")
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)


def build_fixture_images(client, registry: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Build the fixture releases once and push them; returns tag -> image reference."""
    with tempfile.TemporaryDirectory() as ctx:
        for name in ("Dockerfile", "observer.sh"):
            shutil.copy(IMAGE_DIR / name, ctx)
        shutil.copy("/bin/busybox", Path(ctx) / "busybox")
        client.images.build(path=ctx, tag=FIXTURE_BASE, rm=True)
    return {tag: build_release(client, registry, REPOSITORY, tag, mode) for tag, mode in RELEASES.items()}


def build_release(client, registry: str, repository: str, tag: str, mode: str) -> str:  # type: ignore[no-untyped-def]
    """One fixture release on the base image (observer.sh in MODE), pushed; its reference."""
    ref = f"{registry}/{repository}:{tag}"
    dockerfile = f"FROM {FIXTURE_BASE}\nENV MODE={mode} VERSION={tag} SLOW_SECONDS=3\n"
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=ref, rm=True)
    for line in client.api.push(f"{registry}/{repository}", tag=tag, stream=True, decode=True):
        if "error" in line:
            raise RuntimeError(f"push {ref}: {line['error']}")
    return ref


def interfaces() -> set[str]:
    """The network interfaces of this process's network namespace."""
    return {name for _, name in socket.if_nameindex()}


def default_bridge_name() -> str | None:
    """The interface of the engine's default network "bridge" (docker0 unless dockerd was
    started with --bridge=NAME), or None when the engine has no such network."""
    res = subprocess.run(["docker", "network", "inspect", "bridge", "--format",
                          '{{index .Options "com.docker.network.bridge.name"}}'],
                         capture_output=True, text=True, timeout=30)
    return (res.stdout.strip() or "docker0") if res.returncode == 0 else None


def default_bridge_problem(image: str = FIXTURE_BASE) -> str | None:
    """What is wrong with the engine's default bridge, or None: the engine (DOCKER_HOST, else
    the local socket) runs a container of `image` on network "bridge" and, when the engine is
    local, its bridge interface exists."""
    iface = default_bridge_name()
    if iface is None:
        return 'the engine has no default network "bridge"'
    local = os.environ.get("DOCKER_HOST", "unix://").startswith("unix://")
    if local and iface not in interfaces():
        return f"its bridge interface {iface} does not exist (`ip link show {iface}`)"
    run = subprocess.run(["docker", "run", "--rm", "--network", "bridge", image, "true"],
                         capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        return f"`docker run --network bridge {image} true` failed: {run.stderr.strip()[-1000:]}"
    return None


COMPOSE_TEMPLATE = """\
services:
  observer:
    image: {registry}/{repository}:${{IMAGE_TAG:?IMAGE_TAG required}}
    restart: unless-stopped
    stop_grace_period: 5s
    ports:
      - "127.0.0.1:{port}:8000"
    environment:
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
"""


@dataclass
class AgentRootDir:
    path: Path
    port: int
    registry: str
    project: str

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OBS_AGENT_")}
        env.update(OBS_AGENT_ROOT=str(self.path), **extra)
        return env

    def agent(self, *args: str, env: dict[str, str] | None = None,
              timeout: float = 180) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [str(VENV_BIN / "obs-agent"), *args],
            env=env or self.env(), capture_output=True, text=True, timeout=timeout,
        )
        OUTPUTS.append(res.stdout + res.stderr)
        return res

    def secret_leaks(self) -> list[str]:
        """Where a secret value shows up: agent output so far, or any file of the root other
        than .env itself (state, history, agent log, backups and what is inside them)."""
        found = [f"output #{i}" for i, out in enumerate(OUTPUTS) if any(v in out for v in SECRETS.values())]
        for p in self.path.rglob("*"):
            if p.is_file() and p.name != ".env":
                data = p.read_bytes()
                found += [str(p) for v in SECRETS.values() if v.encode() in data]
        return found

    def last_good(self) -> str | None:
        p = self.path / "state" / "last_good_tag"
        return p.read_text().strip() if p.exists() else None

    def health(self) -> dict | None:  # type: ignore[type-arg]
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except OSError:
            return None

    def down(self) -> None:
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}"],
            capture_output=True, text=True,
        ).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        subprocess.run(["docker", "network", "rm", f"{self.project}_default"], capture_output=True)


# --- running the agent ---------------------------------------------------------------------
def no_traceback(res: subprocess.CompletedProcess[str]) -> None:
    out = res.stdout + res.stderr
    assert "Traceback" not in out, out[-3000:]
    assert "internal error" not in out, out[-3000:]


def status(root: AgentRootDir, env: dict[str, str] | None = None) -> dict[str, Any]:
    res = root.agent("status", "--json", env=env)
    no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def history(root: AgentRootDir) -> list[dict[str, Any]]:
    res = root.agent("history", "--json")
    no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def make_agent_root(path: Path, registry: str, project: str, **agent: object) -> AgentRootDir:
    port = free_port()
    runs.record("project", project)
    path.mkdir(parents=True, exist_ok=True)
    (path / "docker-compose.server.yml").write_text(
        COMPOSE_TEMPLATE.format(registry=registry, repository=REPOSITORY, port=port)
    )
    settings: dict[str, object] = {
        "project_name": project,
        "health_url": f"http://127.0.0.1:{port}/health",
        "health_timeout": 20,
        "stabilize_seconds": 0.3,
        "min_free_mb": 10,
        **agent,
    }
    config = {
        "service": {"name": "observer"},
        "agent": settings,
        "environment": {"QTS_OBSERVER_STANDALONE": "1", "PYTHONPATH": "/app/src"},
    }
    (path / "deployment_config.json").write_text(json.dumps(config, indent=2))
    env_file = path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    env_file.chmod(0o600)
    return AgentRootDir(path, port, registry, project)
