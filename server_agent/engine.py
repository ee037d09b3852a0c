"""The Docker engine: pulls with retries, the project's containers, stop/start/remove.

Containers are read into `ContainerInfo` from the engine's inspect data, so the rest of the
agent never digs through raw dicts. It is a plain dataclass, not a pydantic model: `status`
imports this module, and importing pydantic alone takes longer than `docker compose ps`.

Writes, pulls, logs and events go through the docker SDK. Reads (list, inspect, ping) go
through `EngineSocket`, plain HTTP on the engine's unix socket: importing the SDK alone takes
longer than `docker compose ps`, and `status` and the gate's polls need nothing else.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urlencode

from .common.errors import ImageError, ObsError
from .common.progress import LayerTally, track
from .common.redact import REDACTOR
from .names import RELEASE_LABEL, ROLE_LABEL

if TYPE_CHECKING:
    import docker

log = logging.getLogger("obs.engine")

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
ONEOFF_LABEL = "com.docker.compose.oneoff"
CONFIG_HASH_LABEL = "com.docker.compose.config-hash"

@dataclass(frozen=True)
class ExecResult:
    """How a command run in a container ended: its exit code (None: it did not finish in
    time), the bytes of its stdout written (or of its stdin read), its stderr's tail."""

    exit_code: int | None
    bytes: int
    stderr_tail: str


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a pipe or a full disk may take part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# A container in one of these states holds the release's ports and counts as running.
RUNNING_STATES = ("running", "restarting", "paused")

# Pull retries: transient registry errors (5xx, connection resets) back off 0.5 s, 1 s, 2 s...
PULL_ATTEMPTS = 5
# The one manifest request that tells whether a present image is up to date gives up after
# this long (or pull_timeout, when shorter): the pull that follows has its own retries.
DIGEST_CHECK_TIMEOUT = 10.0


@dataclass(frozen=True)
class ContainerInfo:
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
    restart_policy: dict[str, Any]
    tag: str | None  # the obsdeploy.release label: the release it belongs to; None for accessories
    role: str  # release | accessory | job, from the labels the agent and the compose file set
    config_hash: str  # compose's hash of the definition it was created from
    binds: frozenset[tuple[str, str]]  # (host path, container path)
    ports: frozenset[str]  # "8000/tcp" for each published container port
    # Where it is reached once running: ("8000/tcp", "127.0.0.1:32768") for each published
    # port bound on the host, and its address on each network.
    host_ports: tuple[tuple[str, str], ...] = ()
    ips: tuple[str, ...] = ()
    exposed: frozenset[str] = frozenset()  # "8000/tcp" for each port it listens on (EXPOSE, expose:, ports:)
    # The host paths of its writable bind mounts (not `:ro`, compose secrets or configs) and
    # its named volumes as (volume name, container path, writable).
    written_binds: frozenset[str] = frozenset()
    volumes: frozenset[tuple[str, str, bool]] = frozenset()

    def publishes(self, host_port: int) -> bool:
        """Host port `host_port` reaches one of its container ports."""
        return any(where.rpartition(":")[2] == str(host_port) for _, where in self.host_ports)

    def address(self, port: int) -> str | None:
        """host:port where container port `port` answers: its published host port (an
        unspecified host address is reached on loopback), else its address on its first
        network. None while it does not run."""
        for key, where in self.host_ports:
            if key == f"{port}/tcp":
                return where
        return f"{self.ips[0]}:{port}" if self.ips and self.running else None

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

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
            restart_policy=dict((a.get("HostConfig") or {}).get("RestartPolicy") or {"Name": "no"}),
            tag=labels.get(RELEASE_LABEL),
            role="release" if RELEASE_LABEL in labels else labels.get(ROLE_LABEL, "accessory"),
            config_hash=labels.get(CONFIG_HASH_LABEL, ""),
            binds=frozenset((str(m.get("Source")), str(m.get("Destination")))
                            for m in a.get("Mounts") or [] if m.get("Type") == "bind"),
            ports=frozenset(((a.get("HostConfig") or {}).get("PortBindings") or {}).keys()),
            host_ports=_host_ports(a),
            ips=tuple(n["IPAddress"] for n in
                      ((a.get("NetworkSettings") or {}).get("Networks") or {}).values()
                      if n.get("IPAddress")),
            exposed=frozenset((cfg.get("ExposedPorts") or {}).keys()),
            written_binds=frozenset(str(m.get("Source")) for m in a.get("Mounts") or []
                                    if m.get("Type") == "bind" and m.get("RW", True)),
            volumes=frozenset((str(m.get("Name")), str(m.get("Destination")), bool(m.get("RW", True)))
                              for m in a.get("Mounts") or [] if m.get("Type") == "volume"),
        )


def _host_ports(a: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    out = []
    for key, bindings in sorted(((a.get("NetworkSettings") or {}).get("Ports") or {}).items()):
        for b in bindings or []:
            ip = b.get("HostIp") or "0.0.0.0"
            if ":" in ip:  # the IPv6 twin of an IPv4 binding: the IPv4 one is enough
                continue
            ip = "127.0.0.1" if ip == "0.0.0.0" else ip
            out.append((key, f"{ip}:{b['HostPort']}"))
            break
    return tuple(out)


class EngineHTTPError(ObsError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Docker engine answered {status}: {message}")
        self.status = status

    @classmethod
    def from_body(cls, status: int, body: bytes) -> EngineHTTPError:
        try:
            message = str(json.loads(body).get("message", ""))
        except (ValueError, AttributeError):
            message = body.decode(errors="replace")[:200]
        return cls(status, message)


class EngineUnreachable(ObsError):
    pass


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class EngineSocket:
    """GET requests to the engine's API on its unix socket, one connection per thread use."""

    def __init__(self, path: str, timeout: float = 30) -> None:
        self.path = path
        self.timeout = timeout

    @classmethod
    def from_env(cls) -> EngineSocket | None:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return cls(host.removeprefix("unix://")) if host.startswith("unix://") else None

    def pull(self, repo: str, tag: str, auth_header: str | None, idle_timeout: float,
             on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        """POST /images/create and follow its progress stream. A stream that is silent for
        `idle_timeout` seconds raises TimeoutError: a stalled registry costs that, not the
        engine's own minutes (the SDK's pull runs without any timeout)."""
        conn = _UnixHTTPConnection(self.path, idle_timeout)
        try:
            conn.request("POST", "/images/create?" + urlencode({"fromImage": repo, "tag": tag}),
                         headers={"X-Registry-Auth": auth_header} if auth_header else {})
            resp = conn.getresponse()
            if resp.status >= 400:
                raise EngineHTTPError.from_body(resp.status, resp.read())
            for line in resp:
                if line.strip():
                    event = json.loads(line)
                    if event.get("error"):
                        raise PullStreamError(str(event["error"]))
                    if on_event is not None:
                        on_event(event)
        finally:
            conn.close()

    def distribution(self, ref: str, auth_header: str | None, timeout: float) -> dict[str, Any]:
        """GET /distribution/REF/json: the engine asks the registry for `ref`'s manifest (one
        manifest request) and answers its descriptor; nothing is pulled."""
        return dict(self.get(f"/distribution/{quote(ref, safe='')}/json", _timeout=timeout,
                             _headers={"X-Registry-Auth": auth_header} if auth_header else {}))

    def get(self, path: str, _timeout: float | None = None, _headers: dict[str, str] | None = None,
            **params: Any) -> Any:
        conn = _UnixHTTPConnection(self.path, self.timeout if _timeout is None else _timeout)
        try:
            conn.request("GET", path + ("?" + urlencode(params) if params else ""),
                         headers=_headers or {})
            resp = conn.getresponse()
            body = resp.read()
        except OSError as exc:
            denied = socket_denied(self.path) if isinstance(exc, PermissionError) else None
            if denied:
                raise EngineUnreachable(denied) from None
            raise EngineUnreachable(f"cannot reach the Docker engine at {self.path}: {exc}",
                                    hint="is dockerd running? is DOCKER_HOST right?") from None
        finally:
            conn.close()
        if resp.status >= 400:
            raise EngineHTTPError.from_body(resp.status, body)
        return json.loads(body) if body and body[:1] in b"[{" else body.decode()


def socket_denied(path: str) -> str | None:
    """Why the user the agent runs as may not use the engine's unix socket `path`, and what to
    do (join the socket's group); None when it may, or when there is no socket."""
    import grp
    import pwd
    import stat

    try:
        st = os.stat(path)
    except OSError:
        return None  # no socket: the engine is not running, which is another finding
    if os.access(path, os.R_OK | os.W_OK):
        return None
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = str(os.getuid())
    return (f"{user} (uid {os.getuid()}) may not use the Docker socket {path} (mode "
            f"{stat.S_IMODE(st.st_mode):04o}, group {group}): add {user} to the {group} group "
            f"(sudo usermod -aG {group} {user}), then open a new SSH session")


class PullStreamError(ObsError):
    """An error the engine reported inside the pull's progress stream."""


def _transient(exc: BaseException) -> bool:
    """Worth another pull attempt: timeouts, dropped connections, 5xx; not a missing tag or
    refused credentials."""
    import docker.errors
    import requests

    text = str(exc).lower()
    if any(s in text for s in ("manifest unknown", "not found", "unauthorized", "denied")):
        return False
    if isinstance(exc, docker.errors.NotFound):
        return False
    if isinstance(exc, EngineHTTPError):
        return exc.status >= 500
    if isinstance(exc, docker.errors.APIError):
        return exc.status_code is None or exc.status_code >= 500
    return isinstance(exc, PullStreamError | OSError | requests.exceptions.ConnectionError
                      | requests.exceptions.Timeout)


@contextlib.contextmanager
def importing_sdk_meanwhile() -> Iterator[None]:
    """Import the docker SDK and tenacity in a background thread while the caller's block
    runs, and wait for that import at the end of the block.

    A deploy needs them from its pull on (the registry's credentials, the retries, then the
    writes and the gate's event stream), and importing them takes ~0.1 s. Preflight runs
    `compose config` inside this block: the import runs while the main thread waits for
    that subprocess instead of after it. Measured: a deploy's preflight-to-switch time fell
    from 0.15 s to 0.065 s (median of 6 alternating runs each), the whole deploy by ~0.1 s.

    The block must import nothing itself, and the thread is joined before anything else
    runs: two threads importing one package at once can leave it half-initialised (seen in
    a first version that let the import run on into the pull: `module 'docker' has no
    attribute 'errors'`). An import that fails in the thread raises again where the module
    is first used, as it would have without this."""
    import sys
    import threading

    if "docker" in sys.modules and "tenacity" in sys.modules:
        yield
        return

    def load() -> None:
        try:
            import docker  # noqa: F401
            import tenacity  # noqa: F401
        except Exception:
            pass

    thread = threading.Thread(target=load, name="import-sdk", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


class Engine:
    def __init__(self, client: docker.DockerClient | None = None, timeout: float = 120) -> None:
        self._client = client
        self.timeout = timeout
        self.socket = EngineSocket.from_env() if client is None else None
        self._version: dict[str, Any] | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            if os.environ.get("DOCKER_HOST", "").startswith("ssh://"):
                raise EngineUnreachable(
                    "DOCKER_HOST is an ssh:// URL; obs-agent runs on the server and talks to "
                    "the Docker engine there", hint="unset DOCKER_HOST, or use unix:// or tcp://")
            import docker

            # The API version the engine answered already (version()): the SDK would ask
            # for it again with a /version of its own (10-25 ms here), as it does for
            # version="auto".
            known = (self._version or {}).get("ApiVersion")
            try:
                self._client = docker.from_env(timeout=self.timeout,
                                               **({"version": str(known)} if known else {}))
            except docker.errors.DockerException as exc:
                raise EngineUnreachable(f"cannot reach the Docker engine: {exc}",
                                        hint="is dockerd running? is DOCKER_HOST right?") from None
        return self._client

    def _get(self, path: str, **params: Any) -> Any:
        if self.socket is not None:
            return self.socket.get(path, **params)
        # A remote engine (tcp://, ssh://): the SDK's session, which knows its TLS and auth.
        resp = self.client.api.get(self.client.api.base_url + path, params=params)
        if resp.status_code >= 400:
            raise EngineHTTPError(resp.status_code, resp.text[:200])
        return resp.json() if resp.content[:1] in (b"[", b"{") else resp.text

    def ping(self) -> None:
        self._get("/_ping")

    def root_dir(self) -> str:
        return str(self._get("/info").get("DockerRootDir", "/var/lib/docker"))

    # --- images ----------------------------------------------------------------------------
    def has_image(self, ref: str) -> bool:
        try:
            self._get(f"/images/{quote(ref, safe='')}/json")
            return True
        except EngineHTTPError as exc:
            if exc.status == 404:
                return False
            raise

    def version(self) -> dict[str, Any]:
        """The engine's /version, asked once per Engine: dockerd 20.10 takes 10-25 ms to
        answer it (median 16 ms of 10 here, against 1 ms for /_ping), and a deploy needs it
        for the platform check, the SDK client's API version and the start_interval note."""
        if self._version is None:
            self._version = dict(self._get("/version"))
        return dict(self._version)

    def platform(self) -> str:
        """The engine's own platform, `os/arch` as images name it (linux/amd64)."""
        v = self.version()
        return f"{v.get('Os', 'linux')}/{v.get('Arch', 'unknown')}"

    def check_platform(self, refs: list[str]) -> None:
        """Refuse images built for another platform (an arm64 image built on a laptop for an
        amd64 VM): run, they would fail with `exec format error` after the old release
        stopped. Called after the pull, before anything running is touched."""
        host = self.platform()
        wrong = []
        for ref in refs:
            img = self._get(f"/images/{quote(ref, safe='')}/json")
            if not img.get("Architecture"):  # an image that does not say: not ours to refuse
                continue
            built = f"{img.get('Os') or 'linux'}/{img['Architecture']}"
            if built != host:
                wrong.append(f"{ref} is built for {built}")
        if wrong:
            raise ImageError(
                f"{'; '.join(wrong)}, but this host's engine runs {host}; nothing was changed",
                hint=f"build the image for {host} (obsdeploy.toml: platforms = [\"{host}\"]), "
                     "release it again, then deploy")

    def pull(self, refs: list[str]) -> None:
        """Pull each of `refs`, except those already here as the registry has them now."""
        for ref in refs:
            if not self._up_to_date(ref):
                self._pull_one(ref)

    def _up_to_date(self, ref: str) -> bool:
        """`ref` is present locally and is what the registry has under its tag now, so a
        pull would change nothing: the registry's manifest digest (one manifest request,
        through the engine's /distribution endpoint with the credentials a pull sends) is
        one of the local image's RepoDigests. A re-pushed tag has a new digest: it is
        pulled. A reference pinned by digest names its content: present, it is not asked
        for at all. Whatever goes wrong asking (no such image, registry away or answering
        5xx, an engine without the endpoint) answers False, and the pull runs as before,
        with its retries and its exit 11.

        What it buys: no pull stream to follow, no layer tally, no image `pull` event; on
        a remote registry, a pull of an up-to-date tag costs the same manifest round trip
        and then some. On this machine's loopback registry the two cost about the same
        (25 ms against 30 ms, median of 8)."""
        try:
            local = self._get(f"/images/{quote(ref, safe='')}/json")
            repo, tag = pull_reference(ref)
            if tag.startswith("sha256:"):
                log.info("%s is present (pinned by digest): not pulled", ref)
                return True
            if self.socket is not None:
                remote = self.socket.distribution(ref, _auth_header(repo),
                                                  min(self.timeout, DIGEST_CHECK_TIMEOUT))
            else:
                remote = self.client.api.inspect_distribution(ref)
            digest = str((remote.get("Descriptor") or {}).get("digest") or "")
        except Exception as exc:  # the pull that follows retries, and reports what fails
            if not (isinstance(exc, EngineHTTPError) and exc.status == 404):  # 404: not here
                log.debug("could not compare %s with the registry (%s): pulling it",
                          ref, REDACTOR(str(exc))[:200])
            return False
        local_digests = {d.rsplit("@", 1)[1] for d in local.get("RepoDigests") or [] if "@" in d}
        if digest and digest in local_digests:
            log.info("%s is up to date (%s, as the registry has it): not pulled", ref, digest[:19])
            return True
        return False

    def _pull_one(self, ref: str) -> None:
        import docker.errors
        import requests
        from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

        repo, tag = pull_reference(ref)

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
            # Each attempt starts its tally afresh: a retried pull reports its own progress.
            on_event = LayerTally().feed(tracker)
            if self.socket is not None:
                self.socket.pull(repo, tag, _auth_header(repo), self.timeout, on_event)
            else:
                for event in self.client.api.pull(repo, tag=tag, stream=True, decode=True):
                    if event.get("error"):
                        raise PullStreamError(str(event["error"]))
                    on_event(event)
            # The engine answers 200 and reports some errors only in the stream; confirm.
            if not self.has_image(ref):
                raise PullStreamError(f"{ref} is not present after the pull")

        log.info("pulling %s", ref)
        try:
            with track(f"pull {ref}") as tracker:
                attempt()
        except (ObsError, OSError, docker.errors.APIError, docker.errors.ImageNotFound,
                requests.exceptions.RequestException) as exc:
            raise ImageError(
                f"cannot pull {ref}: {REDACTOR(str(exc))[:300]}",
                hint="check that the tag was released (obsdeploy release) and that this server "
                     "is logged in to the registry (docker login)",
            ) from None

    # --- containers ------------------------------------------------------------------------
    def project_containers(self, project: str) -> list[ContainerInfo]:
        listed = self._get("/containers/json", all=1,
                           filters=json.dumps({"label": [f"{PROJECT_LABEL}={project}"]}))
        out = []
        for c in listed:
            if (c.get("Labels") or {}).get(ONEOFF_LABEL) == "True":
                continue
            try:
                out.append(self.inspect(c["Id"]))
            except EngineHTTPError as exc:
                if exc.status != 404:  # removed between list and inspect
                    raise
        return sorted(out, key=lambda c: (c.service, c.number))

    def inspect(self, cid: str) -> ContainerInfo:
        return ContainerInfo.from_inspect(self._get(f"/containers/{cid}/json"))

    def stop(self, containers: list[ContainerInfo]) -> None:
        """Stop in parallel, each with its own stop_grace_period (compose's StopTimeout)."""
        def one(c: ContainerInfo) -> None:
            self.client.api.stop(c.id, timeout=c.stop_timeout if c.stop_timeout is not None else 10)
        _parallel(one, containers)

    def start(self, containers: list[ContainerInfo]) -> None:
        def one(c: ContainerInfo) -> None:
            # No `ip neigh flush` of the started container's address: measured with
            # independent clients (issue 13), flushing the host's neighbour entry makes a swap
            # fail ~2.7x the requests of not touching it (73 vs 27 for the raw floor).
            self.client.api.start(c.id)
        _parallel(one, containers)

    def exec_streams(self, cid: str, argv: Sequence[str], *, timeout: float,
                     stdout_fd: int | None = None, stdin: IO[bytes] | None = None,
                     env: Mapping[str, str] | None = None) -> ExecResult:
        """Run `argv` in the running container `cid` (docker exec, no TTY), its standard output
        written to `stdout_fd` as it comes, and its standard input read from `stdin` to the
        end: a dump of any size passes through in pieces, never held in memory.
        Gives up after `timeout` seconds (exit_code None); the command may then still run
        in the container until its output pipe closes."""
        import threading

        from docker.utils.socket import STDOUT, frames_iter

        api = self.client.api
        created = api.exec_create(cid, list(argv), stdout=True, stderr=True, stdin=stdin is not None,
                                  environment=dict(env) if env else None)
        # The raw connection, the SDK's own way to feed an exec's stdin (its `_sock` is the
        # socket). The SDK's frame reader waits in poll() without a timeout, so the deadline
        # is a timer that shuts the socket down: the reader then sees the end of the stream.
        conn = api.exec_start(created["Id"], socket=True)
        raw = getattr(conn, "_sock", conn)
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)

        fed = 0

        def feed() -> None:  # beside the reader: a command that talks back must not block us
            nonlocal fed
            assert stdin is not None
            with contextlib.suppress(OSError):
                while chunk := stdin.read(1 << 16):
                    raw.sendall(chunk)
                    fed += len(chunk)
                raw.shutdown(socket.SHUT_WR)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        feeder = threading.Thread(target=feed, name="exec-stdin", daemon=True) if stdin else None
        written = 0
        stderr = bytearray()
        try:
            raw.settimeout(None)  # the timer bounds the whole exchange, not each read
            if feeder is not None:
                feeder.start()
            for stream, data in frames_iter(conn, tty=False):
                if stream == STDOUT and stdout_fd is not None:
                    write_all(stdout_fd, data)
                    written += len(data)
                else:
                    stderr += data
                    del stderr[:-8192]  # the tail is what a failure shows
            if feeder is not None:
                feeder.join()
        except OSError:
            if not expired.is_set():
                raise
        finally:
            timer.cancel()
            conn.close()
        tail = REDACTOR(stderr.decode(errors="replace"))
        if expired.is_set():
            return ExecResult(None, written + fed, tail)
        code = api.exec_inspect(created["Id"]).get("ExitCode")
        return ExecResult(code, written + fed, tail)

    # --- named volumes (backup_volumes) ----------------------------------------------------
    def compose_volume(self, project: str, key: str) -> str | None:
        """The Docker name of the project's compose volume `key` (compose labels the volumes
        it creates), else `key` itself when a volume has that name (an external one)."""
        listed = self._get("/volumes", filters=json.dumps(
            {"label": [f"{PROJECT_LABEL}={project}", f"com.docker.compose.volume={key}"]}))
        names = [v["Name"] for v in listed.get("Volumes") or []]
        if names:
            return str(names[0])
        try:
            return str(self._get(f"/volumes/{key}")["Name"])
        except EngineHTTPError as exc:
            if exc.status == 404:
                return None
            raise

    def get_archive(self, cid: str, path: str) -> Iterator[bytes]:
        """A tar stream of `path` in the container (running or stopped), in chunks."""
        stream, _ = self.client.api.get_archive(cid, path)
        return iter(stream)

    def put_archive(self, cid: str, path: str, data: BinaryIO) -> None:
        """Extract the tar `data` into `path` of the container (running or stopped)."""
        if not self.client.api.put_archive(cid, path, data):
            raise ObsError(f"the Docker engine refused the archive for {path} of container {cid[:12]}")

    def rename(self, cid: str, name: str) -> None:
        self.client.api.rename(cid, name)

    def kill(self, containers: list[ContainerInfo]) -> None:
        """SIGKILL, no grace period (a failed release); one that is not running is left as is."""
        import docker.errors

        def one(c: ContainerInfo) -> None:
            try:
                self.client.api.kill(c.id)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: not running
                    raise
        _parallel(one, containers)

    def remove(self, containers: list[ContainerInfo]) -> None:
        import docker.errors

        def one(c: ContainerInfo) -> None:
            try:
                self.client.api.remove_container(c.id, force=True)
            except docker.errors.NotFound:
                pass
        _parallel(one, containers)

    def remove_named(self, name: str) -> None:
        """Force-remove a container by name, if there is one (a job's, after its timeout)."""
        import docker.errors

        try:
            self.client.api.remove_container(name, force=True)
        except docker.errors.NotFound:
            pass

    def set_restart_policy(self, cid: str, policy: dict[str, Any]) -> None:
        import docker.errors

        try:
            self.client.api.update_container(cid, restart_policy=policy)
        except docker.errors.NotFound:
            pass

    def logs_tail(self, cid: str, lines: int = 50) -> str:
        """Diagnostics only: an engine that is gone or restarting gives an empty tail."""
        try:
            raw = self.client.api.logs(cid, tail=lines, stdout=True, stderr=True)
        except Exception as exc:
            return f"(log unavailable: {type(exc).__name__})"
        return REDACTOR(raw.decode("utf-8", errors="replace"))

    def logs_since(self, cid: str, since: float) -> str:
        """The container's log lines from Unix time `since` on (stdout and stderr)."""
        raw = self.client.api.logs(cid, stdout=True, stderr=True, since=max(since, 0.001))
        return raw.decode("utf-8", errors="replace")  # type: ignore[no-any-return]

    def logs_contain(self, cid: str, pattern: Any) -> bool:
        raw = self.client.api.logs(cid, stdout=True, stderr=True)
        return bool(pattern.search(raw.decode("utf-8", errors="replace")))

    def health_log(self, cid: str) -> list[dict[str, Any]]:
        try:
            st = self._get(f"/containers/{cid}/json").get("State") or {}
        except ObsError:
            return []
        entries = (st.get("Health") or {}).get("Log") or []
        return [
            {"exit_code": e.get("ExitCode"), "output": REDACTOR(str(e.get("Output", "")))[-500:]}
            for e in entries[-5:]
        ]


def pull_reference(ref: str) -> tuple[str, str]:
    """(repository, tag or digest) for the engine's pull API, as the docker CLI pulls `ref`:
    `img@sha256:…` and `img:tag@sha256:…` pull the digest (the tag of a digest-pinned
    reference only documents it), `img:tag` the tag, `img` `latest`. A registry's port
    (`host:5000/img`) is not a tag."""
    from docker.utils import parse_repository_tag

    name, digest = ref.rsplit("@", 1) if "@" in ref else (ref, None)
    repo, tag = parse_repository_tag(name)
    return repo, digest or tag or "latest"


def running_tag(containers: list[ContainerInfo]) -> str | None:
    """The release the running release containers belong to (their obsdeploy.release label);
    None when none runs, or when they disagree (a multi-step attempt that was killed)."""
    tags = {c.tag for c in containers if c.running and c.role == "release"}
    return tags.pop() if len(tags) == 1 else None


def newest_per_service(containers: list[ContainerInfo]) -> dict[str, ContainerInfo]:
    """The highest-numbered (newest) container of each service."""
    newest: dict[str, ContainerInfo] = {}
    for c in sorted(containers, key=lambda c: c.number):
        newest[c.service] = c
    return newest


def _auth_header(repo: str) -> str | None:
    """The X-Registry-Auth header the docker CLI would send, from ~/.docker/config.json."""
    from docker import auth

    registry, _ = auth.resolve_repository_name(repo)
    config = auth.resolve_authconfig(auth.load_config(), registry)
    return auth.encode_header(config).decode() if config else None


def _parallel(fn: Any, items: list[ContainerInfo]) -> None:
    if len(items) <= 1:
        for i in items:
            fn(i)
        return
    from concurrent.futures import ThreadPoolExecutor  # here: `status` never needs it

    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        list(pool.map(fn, items))


def engine_down(exc: BaseException) -> bool:
    """The Docker engine is unreachable (restarting), as opposed to refusing something."""
    import requests

    return isinstance(exc, EngineUnreachable | requests.exceptions.ConnectionError)
