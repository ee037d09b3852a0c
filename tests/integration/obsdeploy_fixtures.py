"""Fixtures of the obsdeploy integration tests: a registry with htpasswd auth, loopback sshd
instances standing in for VMs, a throwaway app repository, and a runner for the CLI.

Imported by the test modules (`from tests.integration.obsdeploy_fixtures import ...`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import parts
from tests.conftest import missing
from tests.parts_ssh import AGENT, SSHD, Sshd, write_htpasswd

OBSDEPLOY = parts.VENV_BIN / "obsdeploy"
REG_USER = "ci-bot"
REG_PASSWORD = "reg-pass-SENTINEL-5b1e7d"  # noqa: S105 (a test secret, checked never to leak)
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OBSDEPLOY_", "OBS_AGENT_", "GHCR_"))}
    env.update(GIT_ENV)
    env.update(extra)
    return env


def obsdeploy(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(OBSDEPLOY), *args], cwd=cwd, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout)


# --- registry with auth ------------------------------------------------------------------------
@pytest.fixture
def auth_registry(tmp_path: Path, docker_client) -> Iterator[parts.Registry]:  # type: ignore[no-untyped-def]
    """A fresh registry per test (it starts in ~0.1 s), so each test owns acme/observer."""
    if not shutil.which("docker-registry"):
        missing("docker-registry")
    htpasswd = write_htpasswd(tmp_path / "htpasswd", REG_USER, REG_PASSWORD)
    reg = parts.Registry(tmp_path / "auth-registry", htpasswd=htpasswd).start()
    yield reg
    reg.stop()


# --- the app repository --------------------------------------------------------------------------
@dataclass
class AppRepo:
    path: Path
    remote: Path
    image: str

    def git(self, *args: str) -> str:
        res = subprocess.run(["git", "-C", str(self.path), *args], env=clean_env(),
                             capture_output=True, text=True, check=True)
        return res.stdout.strip()

    def remote_git(self, *args: str) -> str:
        res = subprocess.run(["git", "-C", str(self.remote), *args], env=clean_env(),
                             capture_output=True, text=True)
        return res.stdout.strip()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def commit(self, name: str, content: str) -> str:
        (self.path / name).write_text(content)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", f"change {name}")
        return self.head()

    def release(self, version: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return obsdeploy("release", version, *args, cwd=self.path, env=clean_env(**env))


@pytest.fixture
def app_repo(tmp_path: Path, auth_registry: parts.Registry,
             docker_client) -> Iterator[AppRepo]:  # type: ignore[no-untyped-def]
    """A git repo with obsdeploy.toml and a FROM-scratch Dockerfile, and a bare `origin`."""
    remote = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True, env=clean_env())
    path = tmp_path / "app"
    path.mkdir()
    image = f"{auth_registry.address}/acme/observer"
    repo = AppRepo(path, remote, image)
    repo.git("init", "-q", "-b", "main")
    repo.git("remote", "add", "origin", str(remote))
    (path / "Dockerfile").write_text("FROM scratch\nCOPY app.txt /app.txt\n")
    (path / ".gitignore").write_text("build/\n")
    (path / "obsdeploy.toml").write_text(
        f'image = "{image}"\nsource = "https://github.com/acme/observer"\n'
        '[deploy]\nbatch = 1\n'
    )
    repo.commit("app.txt", f"app {uuid.uuid4().hex}\n")
    repo.git("push", "-q", "origin", "main")
    yield repo
    for img in docker_client.images.list(name=image):  # the built/pulled release images
        try:
            docker_client.images.remove(img.id, force=True)
        except Exception:  # noqa: BLE001 (best-effort cleanup)
            pass


# --- sshd "servers" ------------------------------------------------------------------------------
@dataclass
class Server:
    """One loopback sshd whose sessions see OBS_AGENT_ROOT = this server's agent root."""

    sshd: Sshd
    root: parts.AgentRootDir
    known_hosts: Path

    def ssh_args(self) -> list[str]:
        return ["--host", self.sshd.address, "--identity", str(self.sshd.client_key),
                "--known-hosts", str(self.known_hosts), "--agent-command", str(AGENT)]


@pytest.fixture
def make_server(tmp_path: Path, images: dict[str, str],
                registry: parts.Registry) -> Iterator[Callable[..., Server]]:
    if not SSHD.exists():
        missing("sshd (/usr/sbin/sshd, package openssh-server)")
    servers: list[Server] = []

    def make(name: str, env: dict[str, str] | None = None) -> Server:
        """`env`: more variables every SSH session (so the agent) of this server sees."""
        root = parts.make_agent_root(tmp_path / name / "observer", registry.address,
                                     f"obs-{name}-{uuid.uuid4().hex[:6]}")
        sshd = Sshd(tmp_path / name / "sshd",
                    env={"OBS_AGENT_ROOT": str(root.path), **(env or {})}).start()
        server = Server(sshd, root, sshd.write_known_hosts(tmp_path / name / "known_hosts"))
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.sshd.stop()
        s.root.down()


def known_hosts_for(servers: list[Server], path: Path) -> Path:
    path.write_text("".join(s.sshd.known_hosts_line for s in servers))
    return path
