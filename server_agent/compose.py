"""ComposeProject: builds `docker compose` command lines (pure values) and runs them.

Compose is the source of truth for *what* a release is (`config` resolves the image refs,
mounts and environment with IMAGE_TAG) and it *creates* the containers, so they carry
compose's labels and `docker compose ps` shows them. Starting and stopping is left to the
engine module, which swaps containers faster than `compose up` can (see README, "How it works").
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from .common.errors import CommandError, ObsError
from .common.runner import run
from .names import RELEASE_LABEL

# Where the docker CLI looks for its plugins, in its order ($DOCKER_CONFIG/cli-plugins, which
# is ~/.docker/cli-plugins by default, comes first).
_PLUGIN_DIRS = (
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)


def _plugin_dirs() -> list[str]:
    config = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return [os.path.join(config, "cli-plugins"), *_PLUGIN_DIRS]


@cache
def compose_command() -> tuple[str, ...]:
    """The compose v2 binary: the docker CLI's compose plugin where it is installed, else a
    `docker-compose` v2 binary on PATH.

    The plugin is run directly, as the standalone binary it also is, not as `docker compose`:
    the docker CLI spends ~90 ms (median of 10 here: 197 ms against 107 ms for the same
    `config`) starting up and asking the plugin for its metadata before it runs it, on each
    of the compose commands a deploy runs. Run standalone, compose reads the same
    DOCKER_HOST, DOCKER_CONTEXT and config.json as it does as a plugin."""
    if shutil.which("docker"):
        for d in _plugin_dirs():
            plugin = os.path.join(d, "docker-compose")
            if os.path.isfile(plugin) and os.access(plugin, os.X_OK):
                return (plugin,)
    binary = shutil.which("docker-compose")
    if binary:
        return (binary,)
    raise ObsError(
        "compose v2 not found",
        hint="install the docker compose plugin (docker-compose-plugin) or a docker-compose v2 binary",
    )


@dataclass(frozen=True)
class ServiceSpec:
    """One service as compose resolved it, with what the rollout needs to know of it."""

    name: str
    image: str
    image_template: str  # the image as written, before interpolation (e.g. repo:${IMAGE_TAG})
    binds: dict[str, str]  # absolute host path -> container path
    environment: dict[str, str | None]
    has_healthcheck: bool
    labels: dict[str, str]
    replicas: int
    update_order: str  # stop-first | start-first (deploy.update_config.order)
    container_name: str | None
    published_ports: list[str]  # fixed host ports ("127.0.0.1:8000"); ephemeral ones are not listed
    container_ports: list[str]  # every port the service publishes, as "target/protocol"
    depends_on: list[str]
    user: str | None = None  # compose's `user:`, e.g. "1000:1000"
    exposed: list[str] = field(default_factory=list)  # `expose:` ports, as "8000/tcp"
    # Where compose `secrets:` and `configs:` land in the container (compose bind-mounts
    # file-based ones there): not the service's own mounts.
    file_targets: frozenset[str] = frozenset()
    build: bool = False  # has a `build:` section: its image can be built here


@dataclass(frozen=True)
class ComposeConfig:
    """What `docker compose config --format json` resolved for one tag, plus the image
    references as written (`--no-interpolate`), which tell the release services apart."""

    raw: dict[str, Any]
    templates: dict[str, str] = field(default_factory=dict)  # service -> image as written

    @property
    def services(self) -> list[ServiceSpec]:
        return [_service_spec(name, svc, self.templates.get(name, ""))
                for name, svc in self.raw.get("services", {}).items()]

    def service(self, name: str) -> ServiceSpec:
        return _service_spec(name, self.raw["services"][name], self.templates.get(name, ""))


def _service_spec(name: str, svc: dict[str, Any], template: str) -> ServiceSpec:
    binds = {
        str(v["source"]): str(v["target"])
        for v in svc.get("volumes", []) or []
        if v.get("type") == "bind"
    }
    hc = svc.get("healthcheck") or {}
    deploy = svc.get("deploy") or {}
    ports = svc.get("ports") or []
    return ServiceSpec(
        name=name,
        image=str(svc.get("image", "")),
        image_template=template,
        binds=binds,
        environment=dict(svc.get("environment") or {}),
        has_healthcheck=bool(hc) and not hc.get("disable", False),
        labels={str(k): str(v) for k, v in (svc.get("labels") or {}).items()},
        replicas=int(deploy.get("replicas", 1) if deploy.get("replicas") is not None else 1),
        update_order=str((deploy.get("update_config") or {}).get("order") or "stop-first"),
        container_name=svc.get("container_name"),
        published_ports=[
            f"{p.get('host_ip') or '0.0.0.0'}:{p['published']}"
            for p in ports if str(p.get("published") or "") not in ("", "0")
        ],
        container_ports=[f"{p.get('target')}/{p.get('protocol') or 'tcp'}" for p in ports],
        depends_on=sorted((svc.get("depends_on") or {}).keys()),
        user=str(svc["user"]) if svc.get("user") not in (None, "") else None,
        exposed=[p if "/" in str(p) else f"{p}/tcp" for p in (svc.get("expose") or [])],
        file_targets=frozenset(
            [str(x.get("target") or f"/run/secrets/{x.get('source')}") for x in svc.get("secrets") or []]
            + [str(x.get("target") or f"/{x.get('source')}") for x in svc.get("configs") or []]),
        build=bool(svc.get("build")),
    )



class ComposeProject:
    def __init__(self, root: Path, compose_file: Path, project: str) -> None:
        self.root = root
        self.compose_file = compose_file
        self.project = project

    # --- builders: plain values, tested as such --------------------------------------------
    def _base(self) -> list[str]:
        return [
            *compose_command(),
            "--project-directory", str(self.root),
            "-f", str(self.compose_file),
            "-p", self.project,
        ]

    def config_argv(self, *, interpolate: bool = True) -> list[str]:
        return [*self._base(), "config", "--format", "json",
                *([] if interpolate else ["--no-interpolate"])]

    def hash_argv(self, services: list[str]) -> list[str]:
        return [*self._base(), "config", "--hash", ",".join(services)]

    def create_argv(self, scales: dict[str, int], override: Path) -> list[str]:
        # --no-recreate keeps the running release's containers as they are; scaling each
        # service above its current count makes compose create the new release's containers
        # beside them, under compose's own names and labels. Only the named services are
        # created; the override (release_override) cuts their depends_on, so compose leaves
        # every other service alone (it would otherwise converge them: scale a switched
        # service back down, create a job as a service).
        argv = [*self._base(), "-f", str(override), "create", "--no-recreate", "--pull", "never"]
        for service, n in sorted(scales.items()):
            argv += ["--scale", f"{service}={n}"]
        return argv + sorted(scales)

    def up_argv(self, services: list[str]) -> list[str]:
        """Start accessories that are missing or stopped, touching nothing else."""
        return [*self._base(), "up", "--detach", "--no-recreate", "--no-deps", "--pull", "never",
                *sorted(services)]

    def build_argv(self, services: list[str]) -> list[str]:
        """Build these services' images from their `build:` sections, and nothing else."""
        return [*self._base(), "build", *sorted(services)]

    def run_argv(self, job: str, container_name: str, tag: str) -> list[str]:
        return [*self._base(), "run", "--rm", "--no-TTY", "--no-deps", "--pull", "never",
                "--name", container_name, "--label", f"{RELEASE_LABEL}={tag}", job]

    # --- running ---------------------------------------------------------------------------
    def config(self, env: dict[str, str]) -> ComposeConfig:
        """What compose resolves for env's IMAGE_TAG, in one `compose config` run.

        The image templates (which services use ${IMAGE_TAG}) used to come from a second run
        with --no-interpolate: ~0.1-0.25 s more on every preflight (each run is a compose
        start-up). Instead IMAGE_TAG is set to a marker no compose file contains: an image
        holding the marker is built from IMAGE_TAG (the role rule, plan.role_of), and the
        marker is then put back to the tag everywhere, so `raw` is what compose resolves for
        the tag itself. Unlike --no-interpolate, an image that mentions IMAGE_TAG without
        following it (`${OTHER:-${IMAGE_TAG}}` with OTHER set) counts as not built from it.
        A file the marker cannot stand in for (an env_file named after the tag) fails that
        run: it is resolved again the old way, which also reports compose's own error."""
        tag = env.get("IMAGE_TAG")
        if tag:
            marker = f"obsdeploy-image-tag-{os.urandom(12).hex()}"
            try:
                res = run(self.config_argv(), env={**env, "IMAGE_TAG": marker}, cwd=self.root)
            except CommandError:
                pass
            else:
                raw = json.loads(res.stdout)
                templates = {name: str(svc.get("image", "")).replace(marker, "${IMAGE_TAG}")
                             for name, svc in raw.get("services", {}).items()}
                return ComposeConfig(_put_back(raw, marker, tag), templates)
        res = run(self.config_argv(), env=env, cwd=self.root)
        no_interp = run(self.config_argv(interpolate=False), env=env, cwd=self.root)
        templates = {name: str(svc.get("image", ""))
                     for name, svc in json.loads(no_interp.stdout).get("services", {}).items()}
        return ComposeConfig(json.loads(res.stdout), templates)

    def config_hashes(self, services: list[str], env: dict[str, str]) -> dict[str, str]:
        """Compose's hash of each service's definition, as it labels the containers it makes
        (com.docker.compose.config-hash): a differing hash means a changed definition."""
        if not services:
            return {}
        res = run(self.hash_argv(services), env=env, cwd=self.root)
        return dict(line.split(None, 1) for line in res.stdout.splitlines() if " " in line)

    def create(self, scales: dict[str, int], override: Path, env: dict[str, str]) -> None:
        run(self.create_argv(scales, override), env=env, cwd=self.root)

    def build(self, services: list[str], env: dict[str, str]) -> None:
        run(self.build_argv(services), env=env, cwd=self.root)

    def up(self, services: list[str], env: dict[str, str]) -> None:
        run(self.up_argv(services), env=env, cwd=self.root)


def _put_back(value: Any, marker: str, tag: str) -> Any:
    """`value` (parsed JSON) with `marker` replaced by `tag` in every string, keys too."""
    if isinstance(value, str):
        return value.replace(marker, tag)
    if isinstance(value, list):
        return [_put_back(v, marker, tag) for v in value]
    if isinstance(value, dict):
        return {_put_back(k, marker, tag): _put_back(v, marker, tag) for k, v in value.items()}
    return value


def release_override(tag: str, services: list[ServiceSpec]) -> str:
    """The compose override file for creating `tag`'s containers of `services`: the release
    label (release identity, SPEC §14), no depends_on (see create_argv), and no
    container_name (a new container is created beside the one holding the name, and takes
    the name when the old one is stopped). JSON strings are valid YAML scalars; `!reset`
    is compose's way to drop a key."""
    lines = ["services:"]
    for svc in services:
        lines.append(f"  {json.dumps(svc.name)}:")
        lines.append(f"    labels: {{{json.dumps(RELEASE_LABEL)}: {json.dumps(tag)}}}")
        lines.append("    depends_on: !reset {}")
        if svc.container_name:
            lines.append("    container_name: !reset null")
    return "\n".join(lines) + "\n"
