"""Agent settings (SPEC §4-§5): environment > deployment_config.json > built-in defaults.

`AgentSettings` is the validated `"agent"` section (`AgentRoot.settings` loads it). Errors
name the field's path and where the bad value came from, so the operator knows what to edit.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .common.errors import UsageError
from .names import CONFIG_NAME, ENV_PREFIX, NON_SETTING_ENV


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
        return None if v is None else _regex(v)


def _regex(v: str) -> str:
    try:
        re.compile(v)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return v


def _http(v: str) -> str:
    if not re.match(r"https?://[^/\s]+", v):
        raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:8000/health")
    return v


class HttpCheck(BaseModel):
    """The seed's smoke test: the answer's status and JSON fields ({tag}: the release's tag)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    kind: Literal["http"]
    name: str | None = None
    url: str
    status: int = Field(200, ge=100, le=599)
    # Top-level keys (or dotted paths) of the JSON answer and the values they must have.
    json_fields: dict[str, Any] = Field(default_factory=dict, alias="json")
    timeout: float = Field(2, gt=0, le=30)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http(v)


class PrometheusCheck(BaseModel):
    """A PromQL query with one value: at or under `max`, and no more than `max_increase`
    above its value measured just before the switch."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["prometheus"]
    name: str | None = None
    url: str
    query: str = Field(min_length=1)
    max: float | None = None
    max_increase: float | None = Field(None, ge=0)
    timeout: float = Field(3, gt=0, le=30)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http(v)

    @model_validator(mode="after")
    def _a_limit(self) -> PrometheusCheck:
        if self.max is None and self.max_increase is None:
            raise ValueError("a prometheus check needs `max`, `max_increase` or both")
        return self


class LogCheck(BaseModel):
    """Matching lines per minute in the release containers' logs."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["log"]
    name: str | None = None
    pattern: str
    max_per_minute: float = Field(0, ge=0)

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        return _regex(v)


WatchCheck = Annotated[HttpCheck | PrometheusCheck | LogCheck, Field(discriminator="kind")]


class WatchSettings(BaseModel):
    """The probation after the gate (SPEC §16); `seconds: 0` turns it off."""

    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(default=0, ge=0)
    interval: float = Field(default=5, gt=0)
    failure_limit: int = Field(default=1, ge=1)
    checks: list[WatchCheck] = Field(default_factory=list)
    inconclusive: Literal["fail", "pass"] = "fail"


class ProxySettings(BaseModel):
    """The reverse proxy in front of one release service (SPEC §15)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["caddy", "nginx"]
    service: str = Field(min_length=1)
    port: int = Field(gt=0, lt=65536)
    # caddy: the admin API, and the server the agent owns in caddy's config.
    admin_url: str = "http://127.0.0.1:2019"
    listen: list[str] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)
    # nginx: the file of `server ...;` lines the user's upstream block includes, and the
    # command that reloads nginx gracefully.
    upstream_file: str | None = None
    reload_command: list[str] = Field(default_factory=lambda: ["nginx", "-s", "reload"], min_length=1)
    # None: the service's stop_grace_period, at most MAX_DRAIN_SECONDS.
    drain_seconds: float | None = Field(None, ge=0, le=300)

    @field_validator("admin_url")
    @classmethod
    def _admin_url(cls, v: str) -> str:
        if not re.match(r"https?://[^/\s]+/?$", v):
            raise ValueError("must be the admin API's base URL, e.g. http://127.0.0.1:2019")
        return v.rstrip("/")

    @field_validator("upstream_file")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is not None and not PurePosixPath(v).is_absolute():
            raise ValueError("must be an absolute path, e.g. /etc/nginx/obsdeploy/observer.upstream")
        return v

    @model_validator(mode="after")
    def _kind_needs(self) -> ProxySettings:
        if self.kind == "caddy" and not self.listen:
            raise ValueError("kind caddy needs listen: the addresses of the server the agent owns "
                             "in caddy's config, e.g. [\":80\"]")
        if self.kind == "nginx" and not self.upstream_file:
            raise ValueError("kind nginx needs upstream_file: the file of server lines your "
                             "upstream block includes")
        return self


DEFAULT_MOUNTS = {
    "./data": "/app/data/observer",
    "./logs": "/app/logs",
    "./config": "/app/config",
}


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    compose_file: str = "docker-compose.server.yml"
    # compose: a compose project on this host; swarm: a stack on the swarm this node manages.
    engine: Literal["compose", "swarm"] = "compose"
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
    # Off a terminal (CI logs, obsdeploy over SSH): one progress line per this many seconds
    # of a long pull or backup (server_agent/common/progress.py).
    progress_seconds: float = Field(5, gt=0)
    required_env: list[str] = Field(
        default_factory=lambda: ["QTS_OBSERVER_STANDALONE", "PYTHONPATH"]
    )
    secret_env: list[str] = Field(default_factory=lambda: ["KIS_API_KEY", "KIS_API_SECRET"])
    env_aliases: dict[str, str] = Field(
        default_factory=lambda: {"OBSERVER_STANDALONE": "QTS_OBSERVER_STANDALONE"}
    )
    verify: VerifySettings = Field(default_factory=VerifySettings)
    mounts: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_MOUNTS))
    # Seconds a job (label obsdeploy.role: job) may run before the deploy stops with exit 13.
    job_timeout: float = Field(300, gt=0)
    # The release services that carry the path contract, health_url and verify (SPEC §14).
    # None: the release services that bind-mount a host directory of `mounts`.
    contract_services: list[str] | None = None
    # The probation after the gate: checks every `interval` for `seconds` (SPEC §16).
    watch: WatchSettings = Field(default_factory=WatchSettings)
    # apprise URLs told after every deploy and rollback; they hold tokens (redacted as secrets).
    notify: list[str] = Field(default_factory=list)
    # Prometheus text file rewritten after every attempt (node_exporter's textfile collector);
    # relative paths are relative to the agent root.
    metrics_file: str | None = None
    # The reverse proxy in front of one release service (SPEC §15); None: no proxy.
    proxy: ProxySettings | None = None

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
        return None if v is None else _http(v)

    @field_validator("notify")
    @classmethod
    def _apprise_urls(cls, v: list[str]) -> list[str]:
        for n, url in enumerate(v):
            if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://\S", url):
                # Never echo the value: a notification URL holds its service's token.
                raise ValueError(f"item {n} is not an apprise URL (SCHEMA://...), e.g. "
                                 "tgram://BOT_TOKEN/CHAT_ID or json://host:port/path")
        return v

    @field_validator("metrics_file")
    @classmethod
    def _metrics_path(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or v.endswith("/")):
            raise ValueError("must be a file path, e.g. /var/lib/prometheus/node-exporter/obsdeploy.prom")
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
            where = f"env {env_name}" + (f" (at {loc})" if len(err["loc"]) > 1 else "")
        elif top in json_keys:
            where = f"{CONFIG_NAME}: agent.{loc}"
        else:
            where = f"agent.{loc}"
        msg = "unknown key (check the spelling; see the README's settings table)" if (
            err["type"] == "extra_forbidden"
        ) else err["msg"]
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def load_settings(agent: dict[str, Any], config_file: str) -> AgentSettings:
    """Validate the JSON's "agent" section merged under the OBS_AGENT_* environment."""
    unknown_env = sorted(
        k for k in os.environ
        if k.startswith(ENV_PREFIX) and k not in NON_SETTING_ENV
        and k[len(ENV_PREFIX):].lower() not in AgentSettings.model_fields
    )
    if unknown_env:
        raise UsageError(
            f"unknown setting(s) in the environment: {', '.join(unknown_env)}",
            hint="OBS_AGENT_<NAME> must name a key of the settings table in the README",
        )
    try:
        return AgentSettings(**agent)
    except ValidationError as exc:
        raise UsageError(
            f"invalid configuration: {_describe_errors(exc, set(agent))}",
            hint=f"edit {config_file} or the OBS_AGENT_* variable named above",
        ) from None
