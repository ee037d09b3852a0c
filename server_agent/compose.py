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
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .errors import ObsError
from .runner import run

_PLUGIN_DIRS = (
    "~/.docker/cli-plugins",
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)


@cache
def compose_command() -> tuple[str, ...]:
    """`docker compose` where the plugin is installed, else a `docker-compose` v2 binary."""
    if shutil.which("docker"):
        for d in _PLUGIN_DIRS:
            if os.access(os.path.join(os.path.expanduser(d), "docker-compose"), os.X_OK):
                return ("docker", "compose")
    binary = shutil.which("docker-compose")
    if binary:
        return (binary,)
    raise ObsError(
        "compose v2 not found",
        hint="install the docker compose plugin (docker-compose-plugin) or a docker-compose v2 binary",
    )


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    image: str
    binds: dict[str, str]  # absolute host path -> container path
    environment: dict[str, str | None]
    has_healthcheck: bool


@dataclass(frozen=True)
class ComposeConfig:
    """What `docker compose config --format json` resolved for one tag."""

    raw: dict[str, Any]

    @property
    def services(self) -> list[ServiceSpec]:
        out = []
        for name, svc in self.raw.get("services", {}).items():
            binds = {
                str(v["source"]): str(v["target"])
                for v in svc.get("volumes", []) or []
                if v.get("type") == "bind"
            }
            env = svc.get("environment") or {}
            hc = svc.get("healthcheck") or {}
            out.append(ServiceSpec(
                name=name,
                image=str(svc.get("image", "")),
                binds=binds,
                environment=dict(env),
                has_healthcheck=bool(hc) and not hc.get("disable", False),
            ))
        return out

    @property
    def images(self) -> list[str]:
        return sorted({s.image for s in self.services if s.image})


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

    def config_argv(self) -> list[str]:
        return [*self._base(), "config", "--format", "json"]

    def create_argv(self, scales: dict[str, int]) -> list[str]:
        # --no-recreate keeps the running release's containers as they are; scaling each
        # service one above its current count makes compose create the new release's
        # containers beside them, under compose's own names and labels.
        argv = [*self._base(), "create", "--no-recreate", "--pull", "never"]
        for service, n in sorted(scales.items()):
            argv += ["--scale", f"{service}={n}"]
        return argv

    # --- running ---------------------------------------------------------------------------
    def config(self, env: dict[str, str]) -> ComposeConfig:
        res = run(self.config_argv(), env=env, cwd=self.root)
        return ComposeConfig(json.loads(res.stdout))

    def create(self, scales: dict[str, int], env: dict[str, str]) -> None:
        run(self.create_argv(scales), env=env, cwd=self.root)
