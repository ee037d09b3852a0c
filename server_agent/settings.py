"""Agent settings (SPEC §4-§5): environment > deployment_config.json > built-in defaults.

`AgentSettings` is the validated `"agent"` section (`AgentRoot.settings` loads it). Errors
name the field's path and where the bad value came from, so the operator knows what to edit.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .common.errors import UsageError
from .names import CONFIG_NAME, ENV_PREFIX, NON_SETTING_ENV
from .secrets import SecretSource


def _relative_path(value: str) -> str:
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or not value.strip():
        raise ValueError(f"{value!r} must be a path relative to the agent root, without '..'")
    return value


# The descriptions below are the users' reference: docs/settings.md and the JSON Schema of
# `obs-agent config schema` are generated from them (server_agent/reference.py), so they are
# written for users and never point outside the repository.


class VerifySettings(BaseModel):  # SPEC §6
    """Post-start success criteria, besides container health and health_url, checked on the
    release services that carry the path contract."""

    model_config = ConfigDict(extra="forbid")
    paths: list[str] = Field(
        default_factory=lambda: ["config/observer"],
        description="Paths, relative to the agent root, that must exist on the host before a "
                    "release passes its gate. The default is the observer's own: set [] for "
                    "another project.")
    log_pattern: str | None = Field(
        default=None, description="A regular expression that must appear in the release containers' "
                          "log before the release passes. null: none.")
    container_env: list[str] | None = Field(
        default=None, description="Variables that must be set, non-empty, inside the running "
                          "containers, under their standard names. null: the same as "
                          "required_env.")

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


_CHECK_NAME = "Shown in history, `verify` and notifications. null: the kind and its {what}."


class HttpCheck(BaseModel):
    """A smoke test: GET the URL; the answer's HTTP status and JSON fields must be as given.
    The service not answering is a failure, not inconclusive."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    kind: Literal["http"] = Field(description="`http`.")
    name: str | None = Field(None, description=_CHECK_NAME.format(what="url"))
    url: str = Field(description="The http:// or https:// URL to GET; `{tag}` is replaced "
                                 "with the release's tag. Proxies from the environment are "
                                 "not used.")
    status: int = Field(200, ge=100, le=599, description="The HTTP status the answer must have.")
    json_fields: dict[str, Any] = Field(
        default_factory=dict, alias="json",
        description="Keys of the JSON answer (or dotted paths, e.g. `build.commit`) and the "
                    "values they must have; `{tag}` in string values is replaced with the "
                    "release's tag.")
    timeout: float = Field(2, gt=0, le=30, description="Seconds to wait for the answer.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http(v)


class PrometheusCheck(BaseModel):
    """A PromQL query with one value: at or under `max`, and no more than `max_increase`
    above its value measured just before the switch. At least one of the two is required.
    No answer, an error answer, NaN, no series or several series are inconclusive."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["prometheus"] = Field(description="`prometheus`.")
    name: str | None = Field(None, description=_CHECK_NAME.format(what="query"))
    url: str = Field(description="Prometheus's base URL (http:// or https://); the check "
                                 "GETs URL/api/v1/query.")
    query: str = Field(min_length=1, description="PromQL whose answer is a scalar or a vector "
                                                 "of exactly one series.")
    max: float | None = Field(None, description="The value must be at or under this. null: no "
                                                "such limit.")
    max_increase: float | None = Field(
        None, ge=0,
        description="The value may be at most this much above its baseline, measured just "
                    "before the first step switches (no baseline: inconclusive). `verify` has "
                    "no switch: only `max` applies there. null: no such limit.")
    timeout: float = Field(3, gt=0, le=30, description="Seconds to wait for Prometheus's answer.")

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
    kind: Literal["log"] = Field(description="`log`.")
    name: str | None = Field(None, description=_CHECK_NAME.format(what="pattern"))
    pattern: str = Field(description="A regular expression matched against each line the "
                                     "release containers wrote (stdout and stderr) since the "
                                     "switch.")
    max_per_minute: float = Field(
        0, ge=0,
        description="Matching lines per minute allowed: the matches divided by the minutes "
                    "since the switch, never by less than one. `verify` counts the last minute.")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        return _regex(v)


WatchCheck = Annotated[HttpCheck | PrometheusCheck | LogCheck, Field(discriminator="kind")]


class WatchSettings(BaseModel):  # SPEC §16
    """The probation of a deploy after its gate: the checks are measured every `interval`
    for `seconds`; too many failed measurements roll the release back like a failed gate,
    and only a passed watch makes it the last good release. `seconds: 0` turns it off.
    A rollback is never watched."""

    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(default=0, ge=0, description="How long the probation lasts; 0 turns "
                                                        "the watch off.")
    interval: float = Field(default=5, gt=0, description="Seconds between rounds of checks "
                                                         "(the first round is one interval "
                                                         "after the gate).")
    failure_limit: int = Field(
        default=1, ge=1, description="Failed measurements (each check of each round counts "
                                     "one) that roll the release back.")
    checks: list[WatchCheck] = Field(
        default_factory=list,
        description="What each round measures, one after the other: objects of kind `http`, "
                    "`prometheus` or `log`. Also what `obs-agent verify` measures. Without "
                    "checks, the watch still fails a release whose containers exit or restart.")
    inconclusive: Literal["fail", "pass"] = Field(
        default="fail", description="What a measurement that could not be made (e.g. Prometheus not "
                            "answering) counts as: `fail` counts it as a failed measurement, "
                            "`pass` does not. It is reported either way.")


class CanaryStep(BaseModel):
    """One step of a canary: `weight` percent of the requests go to the new release for
    `seconds`."""

    model_config = ConfigDict(extra="forbid")
    weight: int = Field(gt=0, lt=100, description="The percent of requests sent to the new "
                                                  "release during this step (1-99).")
    seconds: float = Field(gt=0, description="How long the step lasts with every check passing.")


class SuccessRateCheck(BaseModel):
    """The share of the new release's answers that are not 5xx (or unanswered), measured by
    the agent from the proxy's access log over the step."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["success_rate"] = Field(description="`success_rate`.")
    name: str | None = Field(None, description="Shown in history and status. null: `success_rate`.")
    min: float = Field(ge=0, le=1, description="The lowest share allowed, e.g. 0.999.")


class LatencyCheck(BaseModel):
    """A quantile of the new release's answer times, measured by the agent from the proxy's
    access log over the step: at or under `max_ms`, and at most `max_ratio` times the same
    quantile of the stable release's answers in the same window. At least one of the two."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["latency"] = Field(description="`latency`.")
    name: str | None = Field(None, description="Shown in history and status. null: `latency pQ`.")
    quantile: float = Field(0.95, gt=0, lt=1, description="The quantile, e.g. 0.95 for P95.")
    max_ms: float | None = Field(None, gt=0, description="The quantile must be at or under this, "
                                                          "in milliseconds. null: no such limit.")
    max_ratio: float | None = Field(
        None, gt=0, description="The quantile may be at most this many times the stable "
                                "release's (too few stable answers: this limit is not judged). "
                                "null: no such limit.")

    @model_validator(mode="after")
    def _a_limit(self) -> LatencyCheck:
        if self.max_ms is None and self.max_ratio is None:
            raise ValueError("a latency check needs `max_ms`, `max_ratio` or both")
        return self


CanaryCheck = Annotated[SuccessRateCheck | LatencyCheck | HttpCheck | PrometheusCheck | LogCheck,
                        Field(discriminator="kind")]


class CanarySettings(BaseModel):  # SPEC §20
    """A deploy of the proxied service by weight: after its gate, the proxy sends each step's
    `weight` percent of the requests to the new release and the rest to the one that served
    (both run); every `interval` the checks are measured against the new release; after the
    last step it receives 100 % and becomes the last good release. A failed check sends 100 %
    back to the release that served, in one proxy change (exit 20). A rollback has no canary."""

    model_config = ConfigDict(extra="forbid")
    steps: list[CanaryStep] = Field(min_length=1, description="The weights in order, e.g. "
                                    "[{\"weight\": 5, \"seconds\": 900}, {\"weight\": 25, "
                                    "\"seconds\": 900}, {\"weight\": 50, \"seconds\": 900}].")
    interval: float = Field(10, gt=0, description="Seconds between rounds of checks.")
    min_requests: int = Field(
        100, ge=0, description="Answers of the new release a step needs for `success_rate` and "
                               "`latency` to be judged; fewer at the end of a step make it "
                               "inconclusive.")
    inconclusive: Literal["hold", "fail", "pass"] = Field(
        "hold", description="An inconclusive step: `hold` extends it (up to max_hold_seconds, "
                            "then it fails), `fail` fails it, `pass` passes it.")
    max_hold_seconds: float = Field(900, ge=0, description="How long `hold` may extend one step.")
    sticky: bool = Field(False, description="A client keeps the release it was first given "
                                            "(a cookie, obsdeploy_canary). Only traefik can do "
                                            "it; with caddy or nginx it is a preflight problem.")
    checks: list[CanaryCheck] = Field(
        default_factory=list,
        description="What each round measures: `success_rate` and `latency` (from the proxy's "
                    "access log, agent.proxy.access_log), and the watch's `http`, `prometheus` "
                    "and `log` (`{tag}` is the new release's tag, `{stable}` the other's).")

    @field_validator("steps")
    @classmethod
    def _rising(cls, v: list[CanaryStep]) -> list[CanaryStep]:
        for n, (a, b) in enumerate(zip(v, v[1:], strict=False), 1):
            if b.weight <= a.weight:
                raise ValueError(f"the weights must rise step after step: step {n + 1} has "
                                 f"{b.weight} after {a.weight}")
        return v


class ProxySettings(BaseModel):  # SPEC §15
    """The reverse proxy in front of one release service: that service's new containers
    start beside the old ones (start-first), are gated at their own addresses, then the
    proxy is pointed at them and the old ones drain and stop."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["caddy", "nginx", "traefik"] = Field(
        description="`caddy` (through its admin API), `nginx` (an upstream file and a reload) or "
                    "`traefik` (a dynamic-configuration file its file provider watches).")
    service: str = Field(min_length=1, description="The release service behind the proxy.")
    port: int = Field(gt=0, lt=65536, description="The service's container port the proxy "
                                                  "sends requests to.")
    admin_url: str = Field("http://127.0.0.1:2019", description="caddy: the base URL of its "
                                                               "admin API.")
    listen: list[str] = Field(
        default_factory=list,
        description="caddy, required: the listen addresses of the server the agent owns in "
                    "caddy's config (named obsdeploy-PROJECT), e.g. [\":80\", \":443\"].")
    hosts: list[str] = Field(default_factory=list, description="caddy: the host names that "
                                                               "server answers; empty: any host.")
    upstream_file: str | None = Field(
        None, description="nginx, required: the absolute path of the file of `server ...;` "
                          "lines the agent writes, which your upstream block includes.")
    reload_command: list[str] = Field(
        default_factory=lambda: ["nginx", "-s", "reload"], min_length=1,
        description="nginx: the command (a list: program and arguments) that reloads nginx "
                    "gracefully.")
    maintenance_file: str | None = Field(
        None, description="nginx, for `obs-agent maintenance`: the absolute path of the file the "
                          "agent writes the maintenance answer into (empty while it is off), which "
                          "your server block includes (`include /etc/nginx/obsdeploy/"
                          "observer.maintenance;`). null: maintenance is not available through "
                          "nginx.")
    dynamic_file: str | None = Field(
        None, description="traefik, required: the absolute path of the dynamic-configuration "
                          "file (.yml or .yaml) the agent owns and replaces whole on every switch; "
                          "traefik's file provider must watch it (providers.file.directory or "
                          "filename), and a traefik in a container must mount its directory, not "
                          "the file.")
    entrypoint: str = Field("web", min_length=1, description="traefik: the entrypoint of the "
                                                             "router the agent owns.")
    rule: str = Field("PathPrefix(`/`)", min_length=1,
                      description="traefik: the rule of that router, e.g. Host(`app.example.com`).")
    api_url: str | None = Field(
        None, description="traefik: the base URL of its API (api.insecure, or a router to "
                          "api@internal), e.g. http://127.0.0.1:8080. Set, the agent checks "
                          "traefik answers before a deploy and, after writing the file, waits "
                          "until traefik routes to the new containers before the old ones drain. "
                          "null: it cannot tell, and waits 5 s instead (traefik applies a file change "
                          "within its providersThrottleDuration, 2 s by default).")
    maintenance_listen: str = Field(
        "127.0.0.1:0", description="traefik, for `obs-agent maintenance`: HOST:PORT where the "
                                   "agent's maintenance answer server listens while maintenance "
                                   "is on, and where traefik sends every request then; port 0: "
                                   "a free one. An address of this host that traefik reaches: "
                                   "loopback when traefik runs on the host (or with host "
                                   "networking); in a container, e.g. its network's gateway "
                                   "(172.17.0.1:8399 on Docker's default bridge).")
    access_log: str | None = Field(
        None, description="The absolute path of the proxy's access log the agent reads for a "
                          "canary's `success_rate` and `latency` (on this host): caddy writes it "
                          "as the agent configures it; nginx and traefik as you configure them "
                          "(see the README's canary section). null: none.")
    version_command: list[str] | None = Field(
        None, min_length=1,
        description="caddy: the command that prints caddy's version, which preflight reads for "
                    "what needs caddy 2.8 or newer (a canary; holding a single writer's "
                    "requests), e.g. [\"docker\", \"exec\", \"observer-caddy-1\", \"caddy\", "
                    "\"version\"] when caddy runs in a container. null: `caddy version`.")
    drain_seconds: float | None = Field(
        None, ge=0, le=300,
        description="Seconds the old containers keep running after the proxy left them, for "
                    "the requests in flight. null: their stop timeout (the service's "
                    # proxy.DEFAULT_STOP_TIMEOUT and MAX_DRAIN_SECONDS (a test holds them equal)
                    "stop_grace_period, else 10), at most 30.")
    hold_seconds: float = Field(
        30, gt=0, le=300,
        description="caddy or traefik, a single-writer service (its switch is stop-first): how "
                    "long a request arriving while the old container stops and the new one is "
                    "gated waits for it before the proxy answers (caddy 502, traefik 418).")
    hold_file: str | None = Field(
        None, description="caddy, a single-writer service: the absolute path of the file the "
                          "agent writes the container's address into; caddy reads it on every "
                          "try of a request ({file.*} placeholder, caddy 2.8 or later). null: "
                          "DIR/state/proxy/upstream. Caddy must be able to read it.")
    caddy_hold_file: str | None = Field(
        None, description="caddy, a single-writer service: the same file as caddy sees it, "
                          "when caddy runs in a container that mounts its directory (mount the "
                          "directory, not the file: the agent replaces the file by a rename). "
                          "null: hold_file.")

    @field_validator("admin_url")
    @classmethod
    def _admin_url(cls, v: str) -> str:
        if not re.match(r"https?://[^/\s]+/?$", v):
            raise ValueError("must be the admin API's base URL, e.g. http://127.0.0.1:2019")
        return v.rstrip("/")

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"https?://[^/\s]+/?$", v):
            raise ValueError("must be traefik's API base URL, e.g. http://127.0.0.1:8080")
        return None if v is None else v.rstrip("/")

    @field_validator("maintenance_listen")
    @classmethod
    def _maintenance_listen(cls, v: str) -> str:
        # A concrete address: traefik dials the address the server listens on.
        m = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^\s:\[\]/]+):(\d{1,5})", v)
        if not m or int(m[2]) > 65535 or m[1] in ("0.0.0.0", "[::]"):
            raise ValueError("must be HOST:PORT of an address of this host that traefik reaches "
                             "(not a wildcard), e.g. 127.0.0.1:0 or 172.17.0.1:8399")
        return v

    @field_validator("upstream_file", "hold_file", "caddy_hold_file", "maintenance_file", "access_log")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is not None and not PurePosixPath(v).is_absolute():
            raise ValueError("must be an absolute path, e.g. /etc/nginx/obsdeploy/observer.upstream")
        return v

    @field_validator("dynamic_file")
    @classmethod
    def _dynamic_file(cls, v: str | None) -> str | None:
        # YAML only: traefik picks a file's format by its extension, and the agent writes YAML.
        if v is not None and not (PurePosixPath(v).is_absolute()
                                  and PurePosixPath(v).suffix in (".yml", ".yaml")):
            raise ValueError("must be an absolute path ending in .yml or .yaml, e.g. "
                             "/etc/traefik/dynamic/obsdeploy-observer.yml")
        return v

    @model_validator(mode="after")
    def _kind_needs(self) -> ProxySettings:
        if self.kind == "caddy" and not self.listen:
            raise ValueError("kind caddy needs listen: the addresses of the server the agent owns "
                             "in caddy's config, e.g. [\":80\"]")
        if self.kind == "nginx" and not self.upstream_file:
            raise ValueError("kind nginx needs upstream_file: the file of server lines your "
                             "upstream block includes")
        if self.kind == "traefik" and not self.dynamic_file:
            raise ValueError("kind traefik needs dynamic_file: the file traefik's file provider "
                             "watches, e.g. /etc/traefik/dynamic/obsdeploy-observer.yml")
        return self


class HttpHookAction(BaseModel):
    """An HTTP request; an answer 2xx is success. The body sent is the attempt as JSON:
    action, tag, from_tag, result (null until known)."""

    model_config = ConfigDict(extra="forbid")
    http: str = Field(description="The http:// or https:// URL. Parts long enough to be tokens "
                                  "(16 characters or more) and a password are masked in output "
                                  "and history. Proxies from the environment are not used.")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = Field("POST", description="The "
                                                                     "HTTP method.")
    timeout: float = Field(10, gt=0, le=300, description="Seconds to wait for the answer.")

    @field_validator("http")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http(v)


class ExecTarget(BaseModel):
    """Where and what an exec action runs."""

    model_config = ConfigDict(extra="forbid")
    service: str = Field(min_length=1, description="A service of the compose project; the "
                                                   "command runs in its running container.")
    argv: list[str] = Field(min_length=1, description="The program and its arguments (a list, "
                                                      "never a shell string).")


class ExecHookAction(BaseModel):
    """A command run inside a running container of the project (docker exec); exit 0 is
    success."""

    model_config = ConfigDict(extra="forbid")
    exec: ExecTarget = Field(description="`{\"service\": NAME, \"argv\": [...]}`.")
    timeout: float = Field(60, gt=0, le=3600, description="Seconds the command may run.")


class CommandHookAction(BaseModel):
    """A command run on the host, as the agent's user; exit 0 is success."""

    model_config = ConfigDict(extra="forbid")
    command: list[str] = Field(min_length=1, description="The program and its arguments (a "
                                                         "list, never a shell string).")
    timeout: float = Field(60, gt=0, le=3600, description="Seconds the command may run.")


HOOK_KINDS = ("http", "exec", "command")
HOOK_NAMES = ("pre_switch", "post_switch", "post_deploy", "on_rollback")


def _hook_kind(value: Any) -> str | None:
    """Which kind an action is: the one of http, exec or command it holds (None: not one)."""
    if isinstance(value, dict):
        kinds = [k for k in HOOK_KINDS if k in value]
        return kinds[0] if len(kinds) == 1 else None
    return next((k for k in HOOK_KINDS if hasattr(value, k)), None)


HookAction = Annotated[
    Annotated[HttpHookAction, Tag("http")] | Annotated[ExecHookAction, Tag("exec")]
    | Annotated[CommandHookAction, Tag("command")],
    Discriminator(_hook_kind, custom_error_type="hook_action",
                  custom_error_message="an action is an object with exactly one of `http`, `exec` "
                                       "or `command`, e.g. {\"http\": \"http://127.0.0.1:8000/pause\"}"),
]


class HooksSettings(BaseModel):
    """Actions run at fixed moments of every deploy and rollback, each list in order. Every
    action gets OBSDEPLOY_ACTION, OBSDEPLOY_TAG, OBSDEPLOY_FROM_TAG and OBSDEPLOY_RESULT
    (empty until known) in its environment; each one's outcome and duration is in the
    history record (`hooks`)."""

    model_config = ConfigDict(extra="forbid")
    pre_switch: list[HookAction] = Field(
        default_factory=list,
        description="After the jobs, before the first step stops or starts anything (e.g. pause "
                    "trading). One that fails stops the attempt with exit 13: nothing is switched, "
                    "the actions after it do not run, and post_switch still runs.")
    post_switch: list[HookAction] = Field(
        default_factory=list,
        description="Once the switch is over, whatever its outcome (the resume of a pause): after "
                    "the last step's gate (before the watch), or after going back when the release "
                    "failed; also after a pre_switch that failed. Only in an attempt whose "
                    "pre_switch ran.")
    post_deploy: list[HookAction] = Field(
        default_factory=list,
        description="After every deploy or rollback attempt, once its result is known "
                    "(OBSDEPLOY_RESULT: success, rolled_back or failed).")
    on_rollback: list[HookAction] = Field(
        default_factory=list,
        description="After a release went back: a failed deploy rolled back to the previous "
                    "release (whether that worked or not), and every `rollback`; before "
                    "post_deploy.")

    def url_secrets(self) -> list[str]:
        """What to mask of the http actions' URLs: passwords and token-long parts (not the
        whole URL, so history still says which host was asked)."""
        from .common.redact import url_secrets

        urls = [a.http for name in HOOK_NAMES for a in getattr(self, name) if isinstance(a, HttpHookAction)]
        return [s for s in url_secrets(urls) if s not in urls]


DEFAULT_MOUNTS = {
    "./data": "/app/data/observer",
    "./logs": "/app/logs",
    "./config": "/app/config",
}


class AgentSettings(BaseSettings):
    """The "agent" object of deployment_config.json. Each key can also be set in the
    environment as OBS_AGENT_<KEY> (lists and objects as JSON), which wins over the file."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    compose_file: str = Field(
        "docker-compose.server.yml",
        description="The compose file, relative to the agent root. It writes the release's "
                    "image as REPO:${IMAGE_TAG:?IMAGE_TAG required}; the agent sets IMAGE_TAG.")
    engine: Literal["compose", "swarm"] = Field(
        "compose", description="`compose`: a compose project on this host; `swarm`: a stack on "
                               "the swarm this node manages (the stack's name is the project "
                               "name).")
    project_name: str | None = Field(
        None, description="The compose project: lowercase letters, digits, `-` and `_`. null: the "
                          "agent root's base name, lowercased, without other characters "
                          "(`observer` when nothing is left).")
    health_timeout: float = Field(60, gt=0, description="Seconds a release has to become healthy "
                                                        "in its gate.")
    stabilize_seconds: float = Field(2, ge=0, description="Seconds a healthy release must then "
                                                          "stay healthy to pass its gate.")
    health_url: str | None = Field(
        None, description="An http:// or https:// URL the gate probes, e.g. "
                          "http://127.0.0.1:8000/health: it must answer 2xx. A JSON body's "
                          "`status` of `healthy` passes, `initializing` or `starting` keeps "
                          "waiting (whatever the HTTP status), `degraded` passes only with "
                          "allow_degraded, anything else fails. null: no HTTP probe.")
    allow_degraded: bool = Field(False, description="A `degraded` health answer counts as "
                                                    "healthy.")
    backup_keep: int = Field(5, ge=1, description="Backup archives kept in backups/; older ones "
                                                  "are removed after every attempt.")
    backup_paths: list[str] = Field(
        default_factory=lambda: ["config", "logs"],
        description="What each backup archives, relative to the agent root, besides the compose "
                    "file, deployment_config.json and state/.")
    backup_timeout: float = Field(
        600, gt=0, description="Seconds an accessory's dump (its label obsdeploy.backup) may take "
                               "during a deploy, and its restore; a dump that fails or takes "
                               "longer stops the deploy before anything is switched (exit 13).")
    backup_volumes: list[str] = Field(
        default_factory=list,
        description="Named volumes archived with the files in every backup (under volumes/NAME/ "
                    "of the archive), by their compose name (the key under the compose file's "
                    "top-level `volumes:`) or their Docker name. A deploy takes each from a "
                    "stopped container of the old release at the moment it stopped (else from "
                    "the container that mounts it, e.g. a database accessory, which keeps running: "
                    "a copy of a live database's files is not a consistent backup of it); `backup "
                    "restore` puts the files back into the volume (files it does not hold are "
                    "left as they are).")
    min_free_mb: int = Field(
        1024, ge=0, description="Free disk space, in MB, needed under the agent root (also once "
                                "the backup is written) and under Docker's root directory.")
    pull_timeout: float = Field(
        120, gt=0, description="Seconds a pull may go without progress before the attempt is "
                               "retried (a registry that hangs); 5 attempts, with backoff.")
    progress_seconds: float = Field(
        5, gt=0, description="Off a terminal (CI logs, obsdeploy over SSH): one progress line per "
                             "this many seconds of a long pull or backup.")
    required_env: list[str] = Field(
        default_factory=lambda: ["QTS_OBSERVER_STANDALONE", "PYTHONPATH"],
        description="Variables that must be set, non-empty: in the \"environment\" object, in "
                    ".env or in the agent's own environment. The default is the observer's own: "
                    "set [] (or your own list) for another project.")
    secret_env: list[str] = Field(
        default_factory=lambda: ["KIS_API_KEY", "KIS_API_SECRET"],
        description="Variables required too, whose values are never shown: `***` in output, "
                    "logs, history and messages. Best kept in .env. The default is the "
                    "observer's own: set [] (or your own list) for another project.")
    secret_sources: list[SecretSource] = Field(
        default_factory=list,
        description="More places values may come from, read in order after the JSON's "
                    "\"environment\" and before .env: `{\"kind\": \"age\", \"file\": \".env.age\", "
                    "\"identity\": \"/etc/obsdeploy/age.key\"}` (an age-encrypted file of KEY=VALUE "
                    "lines, decrypted with the `age` program) or `{\"kind\": \"command\", \"argv\": "
                    "[\"op\", \"inject\", \"-i\", \"secrets.tpl\"]}` (a command that prints KEY=VALUE "
                    "lines). Every value they give is a secret; a source that fails is a preflight "
                    "problem naming it.")
    env_aliases: dict[str, str] = Field(
        default_factory=lambda: {"OBSERVER_STANDALONE": "QTS_OBSERVER_STANDALONE"},
        description="Non-standard name → standard name: a variable set under the non-standard "
                    "name (in the environment or the compose file) is a preflight problem that "
                    "names the standard one. The default is the observer's own: set {} for "
                    "another project.")
    verify: VerifySettings = Field(default_factory=lambda: VerifySettings(),
                                   description="Post-start success criteria; see below.")
    mounts: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_MOUNTS),
        description="The path contract, host directory (relative to the agent root) → container "
                    "path: the release services that carry the contract must bind-mount exactly "
                    "these. Missing host directories are created; they must be writable by the "
                    "user the service runs as. The default is the observer's own: set {} for "
                    "a project without a path contract.")
    job_timeout: float = Field(
        300, gt=0, description="Seconds a job (a service labelled obsdeploy.role: job) may run "
                               "before the deploy stops with exit 13.")
    contract_services: list[str] | None = Field(
        None, description="The release services that carry the path contract, health_url and "
                          "verify. null: the release services that bind-mount a host directory "
                          "of mounts.")
    watch: WatchSettings = Field(default_factory=lambda: WatchSettings(),
                                 description="The probation after the gate; see below.")
    notify: list[str] = Field(
        default_factory=list,
        description="apprise URLs (e.g. tgram://BOT_TOKEN/CHAT_ID) told the outcome of every "
                    "deploy and rollback that has a history record. They hold tokens: they are "
                    "masked like secrets.")
    metrics_file: str | None = Field(
        None, description="A Prometheus text file rewritten after every attempt, for "
                          "node_exporter's textfile collector (name it *.prom); a relative path "
                          "is relative to the agent root. null: none.")
    proxy: ProxySettings | None = Field(
        None, description="The reverse proxy in front of one release service; see below. null: "
                          "no proxy.")
    hooks: HooksSettings = Field(
        default_factory=lambda: HooksSettings(),
        description="Actions run before and after the switch, after every attempt and after a "
                    "rollback (e.g. pause and resume trading); see below. Failures other than "
                    "pre_switch's are recorded and never change the exit code.")
    canary: CanarySettings | None = Field(
        None, description="A deploy of the proxied service by weight, judged by the agent; see "
                          "below. Needs proxy. null: the proxy sends everything to the new "
                          "release at once.")

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

    @model_validator(mode="after")
    def _canary_needs(self) -> AgentSettings:
        if self.canary is None:
            return self
        if self.proxy is None:
            raise ValueError("canary needs proxy: the proxy splits the requests between the two "
                             "releases (set agent.proxy, or remove agent.canary)")
        measured = [c.kind for c in self.canary.checks if c.kind in ("success_rate", "latency")]
        if measured and self.proxy.access_log is None:
            raise ValueError(f"canary check {measured[0]} needs proxy.access_log: the proxy's access "
                             "log the agent measures the releases' answers from")
        return self

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
        parts = [str(p) for p in err["loc"]]
        if parts[:1] == ["hooks"] and len(parts) > 4 and parts[3] in HOOK_KINDS:
            del parts[3]  # the union's tag (the action's kind), not a key of the file
        loc = ".".join(parts)
        top = str(err["loc"][0]) if err["loc"] else ""
        env_name = ENV_PREFIX + top.upper()
        if env_name in os.environ:
            where = f"env {env_name}" + (f" (at {loc})" if len(err["loc"]) > 1 else "")
        elif top in json_keys:
            where = f"{CONFIG_NAME}: agent.{loc}"
        else:
            where = f"agent.{loc}" if loc else "agent"  # a rule across keys names them itself
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
