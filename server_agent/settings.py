"""Agent settings (SPEC §3-§5): environment > deployment_config.json > built-in defaults.

`AgentSettings` is the validated `"agent"` section. `AgentRoot` ties it to a directory and
knows where every file of the agent root lives. Errors name the field's path and where the
bad value came from, so the operator knows what to edit.
"""

from __future__ import annotations

import json
import os
import re
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import UsageError
from .redact import REDACTOR

ENV_PREFIX = "OBS_AGENT_"
CONFIG_NAME = "deployment_config.json"
DEFAULT_ROOT = "/opt/observer"
# Env vars with our prefix that are not settings: the CLI's own, and the test hook.
_NON_SETTING_ENV = {"OBS_AGENT_ROOT", "OBS_AGENT_DIE_AT", "OBS_AGENT_VERBOSE"}


def _relative_path(value: str) -> str:
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or not value.strip():
        raise ValueError(f"{value!r} must be a path relative to the agent root, without '..'")
    return value


class VerifySettings(BaseModel):
    """Post-start success criteria beyond container health (SPEC §6)."""

    model_config = ConfigDict(extra="forbid")
    paths: list[str] = Field(default_factory=lambda: ["config/observer"])
    log_pattern: str | None = None
    # None means "the same as required_env".
    container_env: list[str] | None = None

    @field_validator("paths")
    @classmethod
    def _paths_relative(cls, v: list[str]) -> list[str]:
        return [_relative_path(p) for p in v]

    @field_validator("log_pattern")
    @classmethod
    def _regex_compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return v


DEFAULT_MOUNTS = {
    "./data": "/app/data/observer",
    "./logs": "/app/logs",
    "./config": "/app/config",
}


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    compose_file: str = "docker-compose.server.yml"
    project_name: str | None = None
    health_timeout: float = Field(60, gt=0)
    stabilize_seconds: float = Field(2, ge=0)
    health_url: str | None = None
    allow_degraded: bool = False
    backup_keep: int = Field(5, ge=1)
    backup_paths: list[str] = Field(default_factory=lambda: ["config", "logs"])
    min_free_mb: int = Field(1024, ge=0)
    # Seconds a pull may go without progress before the attempt is retried (registry hangs).
    pull_timeout: float = Field(120, gt=0)
    required_env: list[str] = Field(
        default_factory=lambda: ["QTS_OBSERVER_STANDALONE", "PYTHONPATH"]
    )
    secret_env: list[str] = Field(default_factory=lambda: ["KIS_API_KEY", "KIS_API_SECRET"])
    env_aliases: dict[str, str] = Field(
        default_factory=lambda: {"OBSERVER_STANDALONE": "QTS_OBSERVER_STANDALONE"}
    )
    verify: VerifySettings = Field(default_factory=VerifySettings)
    mounts: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_MOUNTS))

    @field_validator("compose_file")
    @classmethod
    def _compose_relative(cls, v: str) -> str:
        return _relative_path(v)

    @field_validator("backup_paths")
    @classmethod
    def _backup_relative(cls, v: list[str]) -> list[str]:
        return [_relative_path(p) for p in v]

    @field_validator("project_name")
    @classmethod
    def _project_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", v):
            raise ValueError("must be lowercase letters, digits, '-' or '_' (a compose project name)")
        return v

    @field_validator("health_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:8000/health")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Env first (wins), then the JSON "agent" section passed as init kwargs.
        return (env_settings, init_settings)


def _describe_errors(exc: ValidationError, json_keys: set[str]) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        top = str(err["loc"][0]) if err["loc"] else ""
        env_name = ENV_PREFIX + top.upper()
        if env_name in os.environ:
            where = f"env {env_name}"
        elif top in json_keys:
            where = f"{CONFIG_NAME}: agent.{loc}"
        else:
            where = f"agent.{loc}"
        msg = "unknown key (check the spelling; see the README's settings table)" if (
            err["type"] == "extra_forbidden"
        ) else err["msg"]
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


class AgentRoot:
    """The agent root directory (SPEC §3) and the configuration read from it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        if not self.path.is_dir():
            raise UsageError(f"agent root {self.path} does not exist",
                             hint="pass --root DIR or set OBS_AGENT_ROOT (default /opt/observer)")
        self.raw_config = self._read_config()
        self.settings = self._load_settings()
        self.project = self.settings.project_name or _default_project(self.path)
        REDACTOR.add(self.secret_values())

    # --- files -----------------------------------------------------------------------------
    @property
    def compose_file(self) -> Path:
        return self.path / self.settings.compose_file

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_NAME

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

    def _load_settings(self) -> AgentSettings:
        unknown_env = sorted(
            k for k in os.environ
            if k.startswith(ENV_PREFIX) and k not in _NON_SETTING_ENV
            and k[len(ENV_PREFIX):].lower() not in AgentSettings.model_fields
        )
        if unknown_env:
            raise UsageError(
                f"unknown setting(s) in the environment: {', '.join(unknown_env)}",
                hint="OBS_AGENT_<NAME> must name a key of the settings table in the README",
            )
        agent = self.raw_config.get("agent", {})
        try:
            return AgentSettings(**agent)
        except ValidationError as exc:
            raise UsageError(
                f"invalid configuration: {_describe_errors(exc, set(agent))}",
                hint=f"edit {self.config_file} or the OBS_AGENT_* variable named above",
            ) from None

    # --- environment -----------------------------------------------------------------------
    @cached_property
    def dotenv(self) -> dict[str, str]:
        if not self.env_file.exists():
            return {}
        return {k: v or "" for k, v in dotenv_values(self.env_file).items()}

    def merged_env(self) -> dict[str, str]:
        """JSON "environment" < .env < the agent's own environment (later wins, SPEC §4)."""
        json_env = {k: str(v) for k, v in self.raw_config.get("environment", {}).items()}
        return {**json_env, **self.dotenv, **os.environ}

    def secret_values(self) -> list[str]:
        env = self.merged_env()
        values = [env[k] for k in self.settings.secret_env if env.get(k)]
        values += [v for v in self.dotenv.values() if v]
        return values

    def compose_env(self, tag: str) -> dict[str, str]:
        return {**self.merged_env(), "IMAGE_TAG": tag}


def _default_project(path: Path) -> str:
    name = re.sub(r"[^a-z0-9_-]", "", path.name.lower()).lstrip("-_")
    return name or "observer"
