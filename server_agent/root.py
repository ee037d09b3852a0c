"""The agent root: where every file lives, the raw configuration and environment.

Light on purpose (no pydantic): `status` and `history` load only this. The validated
settings (`settings.AgentSettings`) are loaded on first use of `AgentRoot.settings`.
"""

from __future__ import annotations

import json
import os
import re
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common.errors import UsageError
from .common.redact import REDACTOR, url_secrets
from .names import CONFIG_NAME, ENV_PREFIX

if TYPE_CHECKING:
    from .secrets import SourcedEnv
    from .settings import AgentSettings

KEPT_COMPOSE = "compose.yml"  # a kept release's compose file, under state/releases/TAG/


class AgentRoot:
    """The agent root directory and the configuration read from it.

    `kept`: the directory where a good release's compose file and deployment_config.json
    were kept (`keep_release`); such a root judges and re-creates that release as it passed,
    with today's .env and secrets ("a release is its image and its configuration"): see
    `as_released`, the only maker of such a root. Nothing of a root changes once it is made.

    `incoming`: secrets sent with `--secrets-stdin`, seen as .env entries from the start (so
    preflight checks them) and written into .env by `write_incoming` once preflight passed."""

    def __init__(self, path: str | os.PathLike[str], kept: Path | None = None, *,
                 today_env: dict[str, str] | None = None,
                 host_agent: dict[str, Any] | None = None,
                 incoming: dict[str, str] | None = None,
                 today: AgentRoot | None = None) -> None:
        self.path = Path(path).absolute()
        if not self.path.is_dir():
            raise UsageError(f"agent root {self.path} does not exist",
                             hint="pass --root DIR or set OBS_AGENT_ROOT (default /opt/observer)")
        self.kept = kept
        raw = self._read_config()
        if host_agent is not None:
            # The proxy and the secret stores are the host's, not the release's: today's drive
            # and shape every gate.
            host_keys = ("proxy", "secret_sources")
            agent = {k: v for k, v in raw.get("agent", {}).items() if k not in host_keys}
            agent.update({k: host_agent[k] for k in host_keys if k in host_agent})
            raw = {**raw, "agent": agent}
        self.raw_config = raw
        # A kept root: today's JSON "environment" fills in the secrets its copy lacks.
        self.today_env = dict(today_env or {})
        self.incoming = dict(incoming or {})
        self._today = today  # a kept root reads the secret sources through today's root
        # The same raw value the settings validate; `status` needs no more than this.
        # project_name, else the compose file's top-level `name:` (so `docker compose ps` in
        # the root finds the project), else the root's base name.
        self.project = str(self.raw_setting("project_name") or self._compose_name()
                           or _default_project(self.path))

    @cached_property
    def settings(self) -> AgentSettings:
        """The validated settings, loaded on first use: read-only commands (status, history)
        do without them, and without the pydantic import they cost. Loading them registers
        the secrets with the redactor."""
        from .settings import load_settings

        settings = load_settings(self.raw_config.get("agent", {}), str(self.config_file))
        REDACTOR.add(self.secret_values(settings.secret_env))
        REDACTOR.add(url_secrets(settings.notify))
        REDACTOR.add(settings.hooks.url_secrets())
        return settings

    def validate(self) -> None:
        """Load the settings now, so a bad configuration is reported before anything runs."""
        _ = self.settings

    def raw_setting(self, name: str) -> Any:
        """One setting as given, unvalidated: env OBS_AGENT_<NAME>, else the JSON, else None."""
        env = os.environ.get(ENV_PREFIX + name.upper())
        return env if env is not None else self.raw_config.get("agent", {}).get(name)

    # --- files -----------------------------------------------------------------------------
    @property
    def compose_file(self) -> Path:
        if self.kept:
            return self.kept / KEPT_COMPOSE
        if "compose_file" in self.settings.model_fields_set:
            return self.path / self.settings.compose_file
        return self.path / default_compose_file(self.path)

    def compose_file_unvalidated(self) -> Path:
        """The compose file as `status` finds it, without validating the settings."""
        if self.kept:
            return self.kept / KEPT_COMPOSE
        return self.path / str(self.raw_setting("compose_file") or default_compose_file(self.path))

    def _compose_doc(self) -> dict[str, Any]:
        """The compose file as written (YAML, not resolved by compose); {} when it cannot
        be read. For what is known without running compose (the project name, `status`)."""
        import yaml

        try:
            doc = yaml.safe_load(self.compose_file_unvalidated().read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _compose_name(self) -> str | None:
        name = self._compose_doc().get("name")
        return name if isinstance(name, str) and re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name) else None

    def compose_services(self) -> dict[str, Any]:
        """The compose file's services as written; {} when it cannot be read."""
        services = self._compose_doc().get("services")
        return {str(k): v for k, v in services.items() if isinstance(v, dict)} if isinstance(services, dict) else {}

    @property
    def config_file(self) -> Path:
        return (self.kept or self.path) / CONFIG_NAME

    @property
    def releases_dir(self) -> Path:
        return self.state_dir / "releases"

    # --- releases kept with their configuration --------------------------------------------
    def as_released(self, tag: str | None) -> AgentRoot:
        """This root as `tag` passed its gate: its kept configuration, else today's."""
        kept = self.releases_dir / tag if tag else None
        if kept is None or not (kept / KEPT_COMPOSE).is_file():
            return self
        return AgentRoot(self.path, kept=kept, today_env=self.json_env(),
                         host_agent=self.raw_config.get("agent", {}), incoming=self.incoming,
                         today=self)

    def keep_release(self, tag: str, keep: list[str]) -> None:
        """Keep the compose file and deployment_config.json `tag` passed with, never .env nor
        the values of secret_env; drop the kept configurations of tags not in `keep`."""
        import shutil
        import tempfile

        from .state import atomic_write

        self.releases_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.releases_dir, prefix=".keep-"))
        shutil.copyfile(self.compose_file, tmp / KEPT_COMPOSE)
        if self.config_file.exists():
            config = dict(self.raw_config)
            secret = set(self.settings.secret_env)
            config["environment"] = {k: v for k, v in config.get("environment", {}).items()
                                     if k not in secret}
            atomic_write(tmp / CONFIG_NAME, json.dumps(config, indent=2) + "\n", mode=0o600)
        target = self.releases_dir / tag
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        for old in self.releases_dir.iterdir():
            if old.name not in keep and old.name != tag:
                shutil.rmtree(old, ignore_errors=True)

    @property
    def env_file(self) -> Path:
        return self.path / ".env"

    @property
    def state_dir(self) -> Path:
        return self.path / "state"

    @property
    def backups_dir(self) -> Path:
        return self.path / "backups"

    # --- loading ---------------------------------------------------------------------------
    def _read_config(self) -> dict[str, Any]:
        if not self.config_file.exists():
            return {}
        try:
            data = json.loads(self.config_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"{self.config_file} is not valid JSON: {exc}",
                hint="fix the file (it must be one JSON object) or remove it to use the defaults",
            ) from None
        except OSError as exc:
            raise UsageError(f"cannot read {self.config_file}: {exc.strerror}") from None
        if not isinstance(data, dict):
            raise UsageError(f"{self.config_file} must hold a JSON object, not {type(data).__name__}")
        for key in ("agent", "environment"):
            if key in data and not isinstance(data[key], dict):
                raise UsageError(f"{CONFIG_NAME}: {key!r} must be an object")
        env = data.get("environment", {})
        bad = [k for k, v in env.items() if not isinstance(v, str | int | float | bool)]
        if bad:
            raise UsageError(f"{CONFIG_NAME}: environment.{bad[0]} must be a string")
        return data

    # --- environment -----------------------------------------------------------------------
    @cached_property
    def dotenv(self) -> dict[str, str]:
        """.env as it is once this attempt's incoming secrets are written into it."""
        from dotenv import dotenv_values

        if not self.env_file.exists():
            return dict(self.incoming)
        return {**{k: v or "" for k, v in dotenv_values(self.env_file).items()}, **self.incoming}

    def write_incoming(self) -> None:
        """Write the incoming secrets into .env (mode 0600, replaced atomically; every other
        line kept where it was). Only once preflight passed: a refused attempt leaves .env
        byte for byte as it was."""
        from .secrets import updated_dotenv
        from .state import atomic_write

        if not self.incoming:
            return
        current = self.env_file.read_text(encoding="utf-8") if self.env_file.exists() else ""
        text = updated_dotenv(current, self.incoming)
        if text != current:
            atomic_write(self.env_file, text, mode=0o600)

    @cached_property
    def sourced(self) -> SourcedEnv:
        """The values of agent.secret_sources (each read once per attempt), and why a source
        gave none."""
        from .secrets import read_sources

        if self._today is not None:
            return self._today.sourced
        return read_sources(self.settings.secret_sources, self.path, dict(os.environ))

    def json_env(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.raw_config.get("environment", {}).items()}

    def merged_env(self) -> dict[str, str]:
        """JSON "environment" < agent.secret_sources < .env < the agent's own environment
        (later wins). A kept release's JSON lacks the secrets: today's JSON fills them in."""
        return self._merged(self.sourced.values)

    def _merged(self, sourced: dict[str, str]) -> dict[str, str]:
        return {**self.today_env, **self.json_env(), **sourced, **self.dotenv, **os.environ}

    def secret_values(self, secret_env: list[str]) -> list[str]:
        """The values of `secret_env` and of every .env entry (incoming ones included): never
        to be shown. Without the sources (they need the settings this is called while
        loading); every value a source gives is masked as it is read."""
        env = self._merged({})
        values = [env[k] for k in secret_env if env.get(k)]
        values += [v for v in self.dotenv.values() if v]
        return values

    def compose_env(self, tag: str) -> dict[str, str]:
        return {**self.merged_env(), "IMAGE_TAG": tag}


# Where compose looks for its file, in its order; the agent's own name comes first.
COMPOSE_FILE_NAMES = ("docker-compose.server.yml", "compose.yaml", "compose.yml",
                      "docker-compose.yaml", "docker-compose.yml")


def default_compose_file(path: Path) -> str:
    """compose_file when the setting is unset: the first of COMPOSE_FILE_NAMES in `path`."""
    return next((n for n in COMPOSE_FILE_NAMES if (path / n).is_file()), COMPOSE_FILE_NAMES[0])


def _default_project(path: Path) -> str:
    name = re.sub(r"[^a-z0-9_-]", "", path.name.lower()).lstrip("-_")
    return name or "observer"
