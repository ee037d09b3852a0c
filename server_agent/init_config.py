"""`obs-agent init`: a deployment_config.json for a compose project as its users wrote it.

Compose reads the file (`docker compose config`, the one chokepoint, compose.py): once as
written (`--no-interpolate`, where the `${VAR:?}` it requires show), once resolved (the
ports, healthchecks and mounts, and which images follow IMAGE_TAG). Every decision on what
compose gave is a plain function of values here (`decide`), tested as such; `write_config`
is the only part that touches the disk.

    compose_file   the given file, else the first compose finds (root.COMPOSE_FILE_NAMES)
    release        services whose image uses ${IMAGE_TAG} (or label obsdeploy.role: release);
                   none: exit 2, saying how to mark one
    required_env   every ${VAR:?} / ${VAR?} the file requires (IMAGE_TAG is the agent's own)
    secret_env     those among them named *_KEY, *_SECRET, *_TOKEN or *_PASSWORD
    contract       mounts, verify.paths and env_aliases are the observer's; they are set
                   empty unless a release service mounts the observer's path contract
    health_url     the release service's published port with the path of its healthcheck's
                   URL; else none, and the README says what to choose
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common.errors import CommandError, UsageError
from .common.runner import run
from .compose import ComposeConfig, ComposeProject
from .names import CONFIG_NAME
from .plan import role_of
from .root import COMPOSE_FILE_NAMES
from .settings import DEFAULT_MOUNTS

# `${VAR:?message}` and `${VAR?message}`, not the escaped `$${VAR?...}`.
_REQUIRED = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*):?\?")
SECRET_SUFFIXES = ("_KEY", "_SECRET", "_TOKEN", "_PASSWORD")
# A healthcheck that asks the service itself over HTTP (curl, wget, python's urllib...).
_LOCAL_URL = re.compile(r"https?://(?:localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(?::(\d+))?(/[^\s'\"\\)]*)?")
PLACEHOLDER = "obsdeploy-init-placeholder"  # stands in for what .env does not set yet
TAG = "v0.0.0"  # any tag: init reads the file's shape, not a release


@dataclass(frozen=True)
class HealthChoice:
    """health_url for one release service: the URL, else what the user may choose."""

    url: str | None
    note: str


@dataclass(frozen=True)
class InitChoice:
    """What init writes, and why, as values."""

    compose_file: str  # relative to the agent root
    release_services: tuple[str, ...]
    accessories: tuple[str, ...]
    required_env: tuple[str, ...]  # not secret
    secret_env: tuple[str, ...]
    observer_contract: tuple[str, ...]  # release services that mount the observer's contract
    health: HealthChoice

    def agent(self) -> dict[str, Any]:
        """The "agent" object of deployment_config.json."""
        agent: dict[str, Any] = {
            "compose_file": self.compose_file,
            "required_env": list(self.required_env),
            "secret_env": list(self.secret_env),
        }
        if not self.observer_contract:
            # The observer's defaults (its path contract, its checks, its alias) would stand in
            # the way of every other project: set empty, as a user would.
            agent.update(mounts={}, verify={"paths": []}, env_aliases={})
        if self.health.url:
            agent["health_url"] = self.health.url
        return agent

    def readme(self, config_file: str) -> list[str]:
        """What init prints: what it found, what it wrote, what to do next."""
        lines = [f"wrote {config_file} for {self.compose_file}",
                 f"  release services: {', '.join(self.release_services)} (deploy and rollback "
                 "switch these; their image follows ${IMAGE_TAG})",
                 "  accessories:      " + (", ".join(self.accessories) or "-")
                 + " (started when missing, never restarted by a deploy)"]
        lines.append("  required_env:     " + (", ".join(self.required_env) or "-")
                     + " (the ${VAR:?} the compose file requires; set them in .env)")
        lines.append("  secret_env:       " + (", ".join(self.secret_env) or "-")
                     + " (required too; their values are never shown)")
        if self.observer_contract:
            lines.append(f"  path contract:    {', '.join(self.observer_contract)} mount the observer's "
                         "directories: mounts and verify.paths keep their defaults")
        else:
            lines.append("  path contract:    none (mounts {}, verify.paths [], env_aliases {})")
        lines.append(f"  health_url:       {self.health.url or 'not set'}")
        lines += ["", *self.health.note.splitlines()] if self.health.note else []
        lines += ["", "next: obs-agent check, then obs-agent deploy TAG"]
        return lines


# --- decisions on values ---------------------------------------------------------------
def required_vars(written: Any) -> list[str]:
    """The variables the compose file requires (`${VAR:?}`), from its text as written."""
    return sorted({m.group(1) for s in _strings(written) for m in _REQUIRED.finditer(s)} - {"IMAGE_TAG"})


def is_secret(name: str) -> bool:
    return name.upper().endswith(SECRET_SUFFIXES)


def observer_contract(root: Path, binds: dict[str, str]) -> bool:
    """The service bind-mounts one of the observer's contract directories where it expects it."""
    wanted = {(str((root / host).resolve()), target) for host, target in DEFAULT_MOUNTS.items()}
    return bool(wanted & {(str(Path(h).resolve()), t) for h, t in binds.items()})


def healthcheck_url(service: dict[str, Any]) -> tuple[int, str] | None:
    """(container port, path) of the URL the service's healthcheck asks of itself."""
    hc = service.get("healthcheck") or {}
    if hc.get("disable"):
        return None
    test = hc.get("test") or []
    m = _LOCAL_URL.search(" ".join(test) if isinstance(test, list) else str(test))
    if m is None:
        return None
    return int(m.group(1) or 80), m.group(2) or "/"


def published_at(service: dict[str, Any], target: int) -> str | None:
    """host:port where the service publishes container port `target` (tcp), if it does."""
    for p in service.get("ports") or []:
        if int(p.get("target") or 0) == target and (p.get("protocol") or "tcp") == "tcp" and p.get("published"):
            host = p.get("host_ip") or "127.0.0.1"
            return f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{p['published']}"
    return None


def health_choice(name: str, service: dict[str, Any]) -> HealthChoice:
    """health_url from the published port and the healthcheck's path; else the choice."""
    asked = healthcheck_url(service)
    if asked is not None and (at := published_at(service, asked[0])):
        return HealthChoice(f"http://{at}{asked[1]}",
                            f"health_url: {name}'s healthcheck asks {asked[1]} on port {asked[0]}, "
                            f"published at {at}.")
    published = [f"{_host(p)}:{p['published']}" for p in service.get("ports") or [] if p.get("published")]
    listening = [str(p).split("/")[0] for p in service.get("expose") or []]
    where = (f"http://{published[0]}/health" if published else
             f"http://127.0.0.1:{listening[0]}/health" if listening else None)
    if where is None:
        return HealthChoice(None, f"health_url: {name} publishes and exposes no port; without "
                                  "an HTTP service the gate judges the containers alone.")
    how = ("at its published port" if published else
           "at each new container's own address (it is not published)")
    return HealthChoice(None, "\n".join([
        f"health_url: not chosen ({name} has no healthcheck asking it over HTTP). When {name} "
        f"answers HTTP, {how}, name a path that answers 2xx only when it works, in \"agent\":",
        f"    // \"health_url\": \"{where}\",",
        "  Without it, a release that answers errors passes when its containers stay up."]))


def _host(p: dict[str, Any]) -> str:
    host = p.get("host_ip") or "127.0.0.1"
    return "127.0.0.1" if host in ("0.0.0.0", "::") else str(host)


def decide(compose_file: str, root: Path, written: dict[str, Any], resolved: ComposeConfig,
           service: str | None = None) -> InitChoice:
    specs = resolved.services
    releases = [s for s in specs if role_of(s) == "release"]
    if not releases:
        raise UsageError(
            f"{compose_file} has no release service: none of its images uses ${{IMAGE_TAG}}",
            hint="write the release's image as REPO:${IMAGE_TAG:?IMAGE_TAG required}, or label "
                 "the service `obsdeploy.role: release`, then run obs-agent init again")
    names = [s.name for s in releases]
    if service is not None and service not in names:
        known = [s.name for s in specs]
        raise UsageError(
            f"--service {service}: " + (f"not a service of {compose_file} (it has {', '.join(known)})"
                                        if service not in known else "not a release service"),
            hint=f"name one of {', '.join(names)}, or label {service} `obsdeploy.role: release` "
                 "(or write its image with ${IMAGE_TAG})")
    required = required_vars(written)
    raw = resolved.raw.get("services", {})
    candidates = [service] if service else names
    choices = [health_choice(n, raw[n]) for n in candidates]
    health = next((c for c in choices if c.url), choices[0])
    return InitChoice(
        compose_file=compose_file,
        release_services=tuple(names),
        accessories=tuple(s.name for s in specs if role_of(s) == "accessory"),
        required_env=tuple(v for v in required if not is_secret(v)),
        secret_env=tuple(v for v in required if is_secret(v)),
        observer_contract=tuple(s.name for s in releases if observer_contract(root, s.binds)),
        health=health,
    )


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


# --- reading and writing -----------------------------------------------------------------
def find_compose_file(root: Path, given: str | None) -> str:
    """The compose file relative to `root`: the given one, else the first compose finds."""
    if given is not None:
        path = (root / given).absolute()
        try:
            rel = path.resolve().relative_to(root.resolve())
        except ValueError:
            raise UsageError(f"--compose {given} is outside the agent root {root}",
                             hint="put the compose file in the agent root (the project's "
                                  "directory) and name it relative to it") from None
        if not path.is_file():
            raise UsageError(f"--compose {given}: no such file in {root}")
        return str(rel)
    found = next((n for n in COMPOSE_FILE_NAMES if (root / n).is_file()), None)
    if found is None:
        raise UsageError(f"no compose file in {root} (looked for {', '.join(COMPOSE_FILE_NAMES)})",
                         hint="obs-agent --root DIR init, with DIR the project's directory, or "
                              "obs-agent init --compose FILE")
    return found


def read_compose(root: Path, compose_file: str, project: str) -> tuple[dict[str, Any], ComposeConfig]:
    """The file as written and as compose resolves it. Variables it requires that neither
    .env nor the environment set yet get a placeholder: init reads the file's shape, and
    `check` then says what is missing."""
    from dotenv import dotenv_values

    compose = ComposeProject(root, root / compose_file, project)
    env = dict(os.environ)
    try:
        written = json.loads(run(compose.config_argv(interpolate=False), env=env, cwd=root).stdout)
        dotenv = dotenv_values(root / ".env") if (root / ".env").is_file() else {}
        missing = [v for v in required_vars(written) if not env.get(v) and not dotenv.get(v)]
        resolved = compose.config({**env, **dict.fromkeys(missing, PLACEHOLDER), "IMAGE_TAG": TAG})
    except CommandError as exc:
        raise UsageError(f"docker compose cannot read {compose_file}: {exc.stderr.strip()[-800:]}",
                         hint=f"fix {compose_file} until `docker compose config` reads it") from None
    return written, resolved


def refuse_overwrite(root: Path, *, force: bool) -> None:
    path = root / CONFIG_NAME
    if path.exists() and not force:
        raise UsageError(f"{path} exists; init does not overwrite it",
                         hint="obs-agent init --force replaces it (its \"environment\" and every "
                              "setting in it are lost)")


def write_config(root: Path, choice: InitChoice, *, force: bool) -> Path:
    from .state import atomic_write

    refuse_overwrite(root, force=force)
    path = root / CONFIG_NAME
    atomic_write(path, json.dumps({"agent": choice.agent()}, indent=2) + "\n")
    return path
