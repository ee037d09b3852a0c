"""obsdeploy.toml (SPEC §10): a pydantic model, overridden by `OBSDEPLOY_*` environment variables.

Precedence: command-line option > `OBSDEPLOY_<KEY>` > obsdeploy.toml > built-in default.
Every key, top-level or of the `[deploy]` table, has one flat env name (`OBSDEPLOY_IMAGE`,
`OBSDEPLOY_HOSTS`, `OBSDEPLOY_BATCH`...). `OBSDEPLOY_HOSTS`, `OBSDEPLOY_SECRETS` are comma-separated and
`OBSDEPLOY_BUILD_ARGS` is a JSON object. Unknown keys, unknown `OBSDEPLOY_*` variables and
bad values are refused (exit 2) with the field and where its value came from.

Paths: `context` is relative to the directory of obsdeploy.toml (the app's repository);
`dockerfile` is relative to the context, as with `docker build`. The same holds for each
`[[images]]` entry, and `images_from` (a compose file) is relative to obsdeploy.toml.

What is built: `image` (the one-image form, with the top-level `dockerfile`, `context`,
`build_args`), or a list of `[[images]]`, or `images_from`; one of the three.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from server_agent.common.errors import UsageError

from .fleet import OnFailure

ENV_PREFIX = "OBSDEPLOY_"
CONFIG_NAME = "obsdeploy.toml"
CONFIG_ENV = "OBSDEPLOY_CONFIG"
# Env vars with our prefix that are not settings: CLI options of their own and the test hook.
NON_SETTING_ENV = {CONFIG_ENV, "OBSDEPLOY_VERBOSE", "OBSDEPLOY_DIE_AFTER"}

SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    r"(?:[a-z0-9.-]+(?::[0-9]+)?/)?"  # optional registry host[:port]/
    rf"{_COMPONENT}(?:/{_COMPONENT})*"  # path components, no tag, no digest
)
IMAGE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_IMAGE_HINT = "must be an image repository without tag or digest, e.g. ghcr.io/tawbury/observer (lowercase)"


def check_image(v: str | None) -> str | None:
    if v is not None and not _IMAGE.fullmatch(v):
        raise ValueError(_IMAGE_HINT)
    return v


class ImageConfig(BaseModel):
    """One `[[images]]` entry: an image the release builds and pushes as `image:VERSION`."""

    model_config = ConfigDict(extra="forbid")

    name: str
    image: str
    dockerfile: str = "Dockerfile"
    context: str = "."
    target: str | None = None
    build_args: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not IMAGE_NAME.fullmatch(v):
            raise ValueError(f"{v!r}: write lowercase letters, digits, '.', '_', '-'")
        return v

    @field_validator("image")
    @classmethod
    def _image_repository(cls, v: str) -> str:
        return check_image(v) or v


class DeployConfig(BaseModel):
    """The `[deploy]` table: where and how `deploy|rollback|status|setup` reach the servers."""

    model_config = ConfigDict(extra="forbid")

    hosts: list[str] = Field(default_factory=list)
    user: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    identity: str | None = None
    known_hosts: str | None = None
    agent_root: str | None = None
    agent_command: str = "obs-agent"
    batch: int = Field(default=1, ge=1)
    # The first N hosts go first, as one batch, and the others only once each of them succeeded.
    canary_hosts: int = Field(default=0, ge=0)
    # When a host fails: send every host this run switched back to its release, or leave them.
    on_failure: OnFailure = "rollback-fleet"
    connect_timeout: float = Field(default=15, gt=0)
    # Names of variables of obsdeploy's own environment whose values go to every host's .env
    # (over the SSH session's standard input, never a command line).
    secrets: list[str] = Field(default_factory=list)

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not SECRET_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a variable name (letters, digits, _)")
        return v

    @field_validator("agent_command")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name the agent program, e.g. obs-agent")
        return v


class ObsdeployConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str | None = None
    dockerfile: str = "Dockerfile"
    context: str = "."
    git_remote: str = "origin"
    build_args: dict[str, str] = Field(default_factory=dict)
    # Several images: listed here, or read from a compose file (its services with a `build:`
    # section and an `image:` of `${IMAGE_TAG}`).
    images: list[ImageConfig] = Field(default_factory=list)
    images_from: str | None = None
    # What `release` builds for (docker buildx --platform); the first is the one a
    # multi-platform index is read for.
    platforms: list[str] = Field(default_factory=lambda: ["linux/amd64"], min_length=1)
    # The OCI `source` label; default: the git remote's URL without credentials.
    source: str | None = None
    # Off a terminal, one progress line per this many seconds of a build or a push.
    progress_seconds: float = Field(default=5, gt=0)
    deploy: DeployConfig = Field(default_factory=lambda: DeployConfig())
    # Where the file was read from (not a key): relative paths are resolved against it.
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    @field_validator("platforms")
    @classmethod
    def _platform_names(cls, v: list[str]) -> list[str]:
        for p in v:
            if not re.fullmatch(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?", p):
                raise ValueError(f"{p!r} is not a platform; write OS/ARCH[/VARIANT], e.g. linux/amd64")
        return v

    @field_validator("image")
    @classmethod
    def _image_repository(cls, v: str | None) -> str | None:
        return check_image(v)

    @model_validator(mode="after")
    def _one_form(self) -> ObsdeployConfig:
        given = [k for k, v in (("image", self.image), ("images", self.images),
                                ("images_from", self.images_from)) if v]
        if len(given) > 1:
            raise ValueError(f"set one of image, [[images]] and images_from, not {' and '.join(given)}")
        for key in ("name", "image"):
            values = [getattr(i, key) for i in self.images]
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise ValueError(f"images: the {key} {', '.join(twice)} is used twice")
        return self

    @property
    def context_dir(self) -> Path:
        return (self.base_dir / self.context).resolve()

    def require_image(self) -> str:
        if not self.image:
            raise UsageError(
                "no image configured",
                hint=f"set `image = \"ghcr.io/OWNER/NAME\"` in {CONFIG_NAME} or {ENV_PREFIX}IMAGE "
                     "(or [[images]], or images_from = \"compose.yaml\")",
            )
        return self.image


def _split_hosts(v: Any) -> Any:
    if isinstance(v, str):
        return [h.strip() for h in v.split(",") if h.strip()]
    return v


class _EnvOverrides(BaseSettings):
    """Reads `OBSDEPLOY_<KEY>` for every key; None means "not set"."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    image: str | None = None
    dockerfile: str | None = None
    context: str | None = None
    git_remote: str | None = None
    build_args: dict[str, str] | None = None
    images_from: str | None = None
    platforms: Annotated[list[str] | None, NoDecode] = None
    source: str | None = None
    progress_seconds: float | None = None
    hosts: Annotated[list[str] | None, NoDecode] = None
    user: str | None = None
    port: int | None = None
    identity: str | None = None
    known_hosts: str | None = None
    agent_root: str | None = None
    agent_command: str | None = None
    batch: int | None = None
    canary_hosts: int | None = None
    on_failure: str | None = None
    connect_timeout: float | None = None
    secrets: Annotated[list[str] | None, NoDecode] = None

    @field_validator("hosts", "platforms", "secrets", mode="before")
    @classmethod
    def _comma_separated(cls, v: Any) -> Any:
        return _split_hosts(v)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings,)


DEPLOY_KEYS = set(DeployConfig.model_fields)
ALL_KEYS = set(_EnvOverrides.model_fields)


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def _describe(exc: ValidationError, *, from_env: set[str], shown: str) -> str:
    """One line per error: `env OBSDEPLOY_PORT: ...` or `obsdeploy.toml: deploy.port: ...`."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = loc[1] if len(loc) > 1 and loc[0] == "deploy" else (loc[0] if loc else "")
        where = (f"env {env_name(key)}" if key in from_env
                 else f"{shown}: {'.'.join(loc)}" if loc else shown)
        msg = "unknown key (check the spelling)" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def find_config(path: str | os.PathLike[str] | None) -> Path | None:
    """`--config FILE` (or OBSDEPLOY_CONFIG) must exist; else ./obsdeploy.toml when present."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"config file {p} does not exist",
                             hint="check --config / OBSDEPLOY_CONFIG")
        return p
    default = Path.cwd() / CONFIG_NAME
    return default if default.is_file() else None


def load_config(path: str | os.PathLike[str] | None = None) -> ObsdeployConfig:
    file = find_config(path)
    data: dict[str, Any] = {}
    if file is not None:
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{file} is not valid TOML: {exc}") from None
        if "deploy" in data and not isinstance(data["deploy"], dict):
            raise UsageError(f"{file}: `deploy` must be a table ([deploy])")

    unknown = sorted(
        k for k in os.environ
        if k.startswith(ENV_PREFIX) and k not in NON_SETTING_ENV
        and k[len(ENV_PREFIX):].lower() not in ALL_KEYS
    )
    if unknown:
        raise UsageError(
            f"unknown setting(s) in the environment: {', '.join(unknown)}",
            hint=f"{ENV_PREFIX}<KEY> must name a key of {CONFIG_NAME}: "
                 + ", ".join(sorted(ALL_KEYS)),
        )
    try:
        env = _EnvOverrides()
    except ValidationError as exc:
        detail = _describe(exc, from_env=ALL_KEYS, shown="env")
        raise UsageError(f"invalid configuration: {detail}") from None

    from_env: set[str] = set()
    deploy = dict(data.get("deploy", {}))
    for key, value in env.model_dump(exclude_none=True).items():
        from_env.add(key)
        if key in DEPLOY_KEYS:
            deploy[key] = value
        else:
            data[key] = value
    data["deploy"] = deploy
    shown = str(file) if file else CONFIG_NAME
    try:
        return ObsdeployConfig(**data, base_dir=(file.parent if file else Path.cwd()).absolute())
    except ValidationError as exc:
        raise UsageError(
            f"invalid configuration: {_describe(exc, from_env=from_env, shown=shown)}",
            hint=f"edit {shown} or the {ENV_PREFIX}* variable named above",
        ) from None
