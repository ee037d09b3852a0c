"""The Docker engine through the SDK: pulls with retries, the project's containers, the swap.

Containers are read into `ContainerInfo` (pydantic) from the engine's inspect data, so the
rest of the agent never digs through raw dicts.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import docker.errors
import requests
from pydantic import BaseModel
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from .errors import ImageError, ObsError
from .redact import REDACTOR

log = logging.getLogger("obs.engine")

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
ONEOFF_LABEL = "com.docker.compose.oneoff"

# Pull retries: transient registry errors (5xx, connection resets) back off 0.5 s, 1 s, 2 s...
PULL_ATTEMPTS = 5


class ContainerInfo(BaseModel):
    id: str
    name: str
    service: str
    number: int
    image: str  # the reference it was created from, e.g. ghcr.io/x/observer:v1.2.3
    state: str  # created | running | restarting | exited | paused | dead
    health: str | None  # starting | healthy | unhealthy, None without a healthcheck
    exit_code: int
    restart_count: int
    env_names: frozenset[str]
    stop_timeout: int | None

    @property
    def tag(self) -> str:
        ref = self.image.rsplit("/", 1)[-1]
        return ref.split(":", 1)[1] if ":" in ref else "latest"

    @classmethod
    def from_inspect(cls, a: dict[str, Any]) -> ContainerInfo:
        cfg = a.get("Config") or {}
        labels = cfg.get("Labels") or {}
        st = a.get("State") or {}
        env_names = {
            e.split("=", 1)[0] for e in cfg.get("Env") or [] if "=" in e and e.split("=", 1)[1]
        }
        return cls(
            id=a["Id"],
            name=a.get("Name", "").lstrip("/"),
            service=labels.get(SERVICE_LABEL, ""),
            number=int(labels.get(NUMBER_LABEL, "0") or 0),
            image=cfg.get("Image", ""),
            state=st.get("Status", "unknown"),
            health=(st.get("Health") or {}).get("Status"),
            exit_code=int(st.get("ExitCode") or 0),
            restart_count=int(a.get("RestartCount") or 0),
            env_names=frozenset(env_names),
            stop_timeout=cfg.get("StopTimeout"),
        )


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, docker.errors.NotFound):
        return False
    if isinstance(exc, docker.errors.APIError):
        text = str(exc).lower()
        if any(s in text for s in ("manifest unknown", "not found", "unauthorized", "denied")):
            return False
        return exc.status_code is None or exc.status_code >= 500
    return isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout)


class Engine:
    def __init__(self, client: docker.DockerClient | None = None) -> None:
        self._client = client

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.from_env(timeout=120)
            except docker.errors.DockerException as exc:
                raise ObsError(f"cannot reach the Docker engine: {exc}",
                               hint="is dockerd running? is DOCKER_HOST right?") from None
        return self._client

    def ping(self) -> None:
        self.client.ping()

    def root_dir(self) -> str:
        return str(self.client.info().get("DockerRootDir", "/var/lib/docker"))

    # --- images ----------------------------------------------------------------------------
    def has_image(self, ref: str) -> bool:
        try:
            self.client.images.get(ref)
            return True
        except docker.errors.ImageNotFound:
            return False

    def pull(self, refs: list[str]) -> None:
        for ref in refs:
            self._pull_one(ref)

    def _pull_one(self, ref: str) -> None:
        @retry(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(PULL_ATTEMPTS),
            wait=wait_exponential(multiplier=0.5, max=8),
            reraise=True,
            before_sleep=lambda rs: log.warning(
                "pull %s failed (%s); retrying", ref, REDACTOR(str(rs.outcome.exception()))[:200]
                if rs.outcome else ""),
        )
        def attempt() -> None:
            repo, _, tag = ref.rpartition(":")
            if "/" in tag or not repo:
                repo, tag = ref, "latest"
            self.client.api.pull(repo, tag=tag)
            # The API answers 200 and reports some errors only in the stream; confirm.
            self.client.images.get(ref)

        log.info("pulling %s", ref)
        try:
            attempt()
        except (docker.errors.APIError, docker.errors.ImageNotFound,
                requests.exceptions.RequestException) as exc:
            raise ImageError(
                f"cannot pull {ref}: {REDACTOR(str(exc))[:300]}",
                hint="check that the tag was released (obsdeploy release) and that this server "
                     "is logged in to the registry (docker login)",
            ) from None

    # --- containers ------------------------------------------------------------------------
    def project_containers(self, project: str) -> list[ContainerInfo]:
        api = self.client.api
        listed = api.containers(all=True, filters={"label": f"{PROJECT_LABEL}={project}"})
        out = []
        for c in listed:
            try:
                info = ContainerInfo.from_inspect(api.inspect_container(c["Id"]))
            except docker.errors.NotFound:
                continue
            if (c.get("Labels") or {}).get(ONEOFF_LABEL) == "True":
                continue
            out.append(info)
        return sorted(out, key=lambda c: (c.service, c.number))

    def inspect(self, cid: str) -> ContainerInfo:
        return ContainerInfo.from_inspect(self.client.api.inspect_container(cid))

    def stop(self, containers: list[ContainerInfo]) -> None:
        """Stop in parallel, each with its own stop_grace_period (compose's StopTimeout)."""
        def one(c: ContainerInfo) -> None:
            self.client.api.stop(c.id, timeout=c.stop_timeout if c.stop_timeout is not None else 10)
        _parallel(one, containers)

    def start(self, containers: list[ContainerInfo]) -> None:
        _parallel(lambda c: self.client.api.start(c.id), containers)

    def remove(self, containers: list[ContainerInfo]) -> None:
        def one(c: ContainerInfo) -> None:
            try:
                self.client.api.remove_container(c.id, force=True)
            except docker.errors.NotFound:
                pass
        _parallel(one, containers)

    def logs_tail(self, cid: str, lines: int = 50) -> str:
        try:
            raw = self.client.api.logs(cid, tail=lines, stdout=True, stderr=True)
        except docker.errors.APIError:
            return ""
        return REDACTOR(raw.decode("utf-8", errors="replace"))

    def logs_contain(self, cid: str, pattern: Any) -> bool:
        raw = self.client.api.logs(cid, stdout=True, stderr=True)
        return bool(pattern.search(raw.decode("utf-8", errors="replace")))

    def health_log(self, cid: str) -> list[dict[str, Any]]:
        try:
            st = self.client.api.inspect_container(cid).get("State") or {}
        except docker.errors.APIError:
            return []
        entries = (st.get("Health") or {}).get("Log") or []
        return [
            {"exit_code": e.get("ExitCode"), "output": REDACTOR(str(e.get("Output", "")))[-500:]}
            for e in entries[-5:]
        ]


def _parallel(fn: Any, items: list[ContainerInfo]) -> None:
    if len(items) <= 1:
        for i in items:
            fn(i)
        return
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        list(pool.map(fn, items))
