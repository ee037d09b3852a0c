"""The suite's own compose projects of the usual shapes (issue 29, tests/projects/), placed
in an agent root as a user would place theirs: a web app with a cache (counter), an app and a
database behind the project's own nginx (guestbook), an app with a database under another
user (inventory). Their images: tests/parts_images.py. Plain Python, no pytest."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import parts

PROJECTS = parts.HERE / "projects"
# Each project's releases: tag -> BROKEN build arg ("1": answers 500 to everything).
RELEASES = {"v1.0.0": "0", "v1.1.0": "0", "v1.2.0-broken": "1"}
# The accessories' images by the registry reference the compose files name (without the
# registry), from the images tests/parts_images.py builds.
ACCESSORY_IMAGES = {"redis:7": "redis", "mariadb:10.11": "mariadb", "postgres:15": "postgres",
                    "nginx:1.22": "nginx"}


def _run(argv: list[str], timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {(res.stdout + res.stderr)[-3000:]}")
    return res


def push(local: str, ref: str) -> str:
    _run(["docker", "tag", local, ref])
    _run(["docker", "push", "-q", ref])
    return ref


@dataclass(frozen=True)
class UserProject:
    name: str  # its directory under tests/projects and its compose `name:`
    app_dir: str  # the release image's build context, under the project
    repository: str  # the release image's repository in the registry
    release_service: str
    database: str  # the accessory whose data must survive every step
    accessories: tuple[str, ...]  # the accessory images it uses (keys of ACCESSORY_IMAGES)
    app_port: int  # the release service's port inside its container
    proxied: bool = False  # the published port is the project's nginx, not the app

    @property
    def source(self) -> Path:
        return PROJECTS / self.name

    def build_releases(self, registry: str, pyapp: str) -> dict[str, str]:
        """v1.0.0, v1.1.0 and v1.2.0-broken of the app, built on `pyapp` and pushed."""
        refs = {}
        for tag, broken in RELEASES.items():
            ref = f"{registry}/{self.repository}:{tag}"
            _run(["docker", "build", "-q", "--build-arg", f"BASE={pyapp}", "--build-arg",
                  f"VERSION={tag}", "--build-arg", f"BROKEN={broken}", "-t", ref,
                  str(self.source / self.app_dir)])
            refs[tag] = push(ref, ref)
        return refs


COUNTER = UserProject("counter", "web", "counter-web", "web", "cache", ("redis:7",), 8000)
GUESTBOOK = UserProject("guestbook", "app", "guestbook-app", "app", "db",
                        ("mariadb:10.11", "nginx:1.22"), 8000, proxied=True)
INVENTORY = UserProject("inventory", "app", "inventory-api", "api", "db", ("postgres:15",), 8080)
ALL = (COUNTER, GUESTBOOK, INVENTORY)


def push_accessories(registry: str, built: dict[str, str]) -> list[str]:
    """The accessory images under the names the compose files use, in the test registry."""
    return [push(built[name], f"{registry}/{ref}") for ref, name in ACCESSORY_IMAGES.items()]


@dataclass
class ProjectRoot:
    """A project copied into an agent root, with its .env (and secret file) written."""

    project: UserProject
    path: Path
    compose_name: str
    port: int
    password: str
    outputs: list[str] = field(default_factory=list)

    # --- running things ------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OBS_AGENT_", "COMPOSE_")) and k not in ("REGISTRY", "IMAGE_TAG")}
        env.update(OBS_AGENT_ROOT=str(self.path), **extra)
        return env

    def agent(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([str(parts.VENV_BIN / "obs-agent"), *args], env=self.env(),
                             capture_output=True, text=True, timeout=timeout)
        self.outputs.append(res.stdout + res.stderr)
        return res

    def compose(self, *args: str, tag: str | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`docker compose` in the root, as the user would run it (reads .env itself)."""
        env = self.env(**({"IMAGE_TAG": tag} if tag else {}))
        return subprocess.run(["docker", "compose", *args], cwd=self.path, env=env,
                              capture_output=True, text=True, timeout=timeout)

    # --- the app -------------------------------------------------------------------------
    def http(self, method: str, path: str, form: dict[str, str] | None = None) -> tuple[int, Any]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, _body(r.read())
        except urllib.error.HTTPError as e:
            return e.code, _body(e.read())

    def version(self) -> str | None:
        """The release the app says it is (None: no healthy answer)."""
        try:
            code, body = self.http("GET", "/health")
        except OSError:
            return None
        return body.get("version") if code == 200 and isinstance(body, dict) else None

    # --- the database accessory ----------------------------------------------------------
    def container(self, service: str) -> dict[str, Any] | None:
        """docker inspect of the service's one container, None when it has none."""
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.compose_name}",
             "--filter", f"label=com.docker.compose.service={service}"],
            capture_output=True, text=True, check=True).stdout.split()
        if not ids:
            return None
        assert len(ids) == 1, f"{service} has {len(ids)} containers"
        return json.loads(_run(["docker", "inspect", ids[0]]).stdout)[0]  # type: ignore[no-any-return]

    # --- cleaning up ---------------------------------------------------------------------
    def secret_leaks(self) -> list[str]:
        """Where the database password shows up besides .env and the secret file."""
        found = [f"output #{i}" for i, out in enumerate(self.outputs) if self.password in out]
        for p in self.path.rglob("*"):
            if p.is_file() and p.name not in (".env", "db_password.txt"):
                if self.password.encode() in p.read_bytes():
                    found.append(str(p))
        return found

    def down(self) -> None:
        """Every container, network and volume of the project, whoever made them."""
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "5", tag="cleanup")
        label = f"label=com.docker.compose.project={self.compose_name}"
        for kind, ls in (("container", ["ps", "-aq"]), ("network", ["network", "ls", "-q"]),
                         ("volume", ["volume", "ls", "-q"])):
            ids = subprocess.run(["docker", *ls, "--filter", label], capture_output=True,
                                 text=True).stdout.split()
            if ids:
                rm = ["docker", "rm", "-f"] if kind == "container" else ["docker", kind, "rm", "-f"]
                subprocess.run([*rm, *ids], capture_output=True)


def _body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def place(project: UserProject, dest: Path, registry: str) -> ProjectRoot:
    """Copy the project to `dest` as a user's checkout, with a unique compose `name:` (tests
    run side by side on one engine), and write what a user keeps out of git: .env with the
    registry, the published port and the database password, and the secret file."""
    shutil.copytree(project.source, dest)
    compose_file = dest / "compose.yaml"
    name = f"{project.name}-{uuid.uuid4().hex[:8]}"
    text, n = re.subn(r"^name: .*$", f"name: {name}", compose_file.read_text(), count=1, flags=re.M)
    assert n == 1, f"{compose_file} has no top-level name:"
    compose_file.write_text(text)
    port = parts.free_port()
    password = f"{project.name}-pw-SENTINEL-{uuid.uuid4().hex[:10]}"
    env = {"REGISTRY": registry, "WEB_PORT": str(port)}
    if project is INVENTORY:
        env["DB_PASSWORD"] = password
    if project is GUESTBOOK:
        secret = dest / "secrets" / "db_password.txt"
        secret.parent.mkdir()
        secret.write_text(password + "\n")
        # A compose file secret is a bind mount with the file's own mode: the database and
        # the app run as other users, who must be able to read it.
        secret.chmod(0o644)
    env_file = dest / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    env_file.chmod(0o600)
    return ProjectRoot(project, dest, name, port, password)


# --- writing and reading each project's data through its app ---------------------------
# write(root, step) stores something through the app; read(root) returns all of it, so a
# test can compare what it wrote with what survives.
def _counter_write(root: ProjectRoot, step: int) -> None:
    for _ in range(step):
        code, body = root.http("GET", "/")
        assert code == 200, body


def _counter_read(root: ProjectRoot) -> Any:
    code, body = root.http("GET", "/hits")
    assert code == 200, body
    return body["hits"]


def _guestbook_write(root: ProjectRoot, step: int) -> None:
    code, body = root.http("POST", "/entries", {"text": f"signed at step {step}"})
    assert code == 201, body


def _guestbook_read(root: ProjectRoot) -> Any:
    code, body = root.http("GET", "/entries")
    assert code == 200, body
    return body["entries"]


def _inventory_write(root: ProjectRoot, step: int) -> None:
    code, body = root.http("PUT", f"/items/widget-{step}", {"count": str(step * 10)})
    assert code == 200, body


def _inventory_read(root: ProjectRoot) -> Any:
    code, body = root.http("GET", "/items")
    assert code == 200, body
    return body["items"]


DATA: dict[str, tuple[Callable[[ProjectRoot, int], None], Callable[[ProjectRoot], Any]]] = {
    "counter": (_counter_write, _counter_read),
    "guestbook": (_guestbook_write, _guestbook_read),
    "inventory": (_inventory_write, _inventory_read),
}
