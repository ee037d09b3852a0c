"""The measuring parts of bench/: a 10 ms health prober, and the three "sides" that deploy the
same fixture images on the same engine — obs-agent, the baseline shell script, Docker Swarm.

Every wait here is bounded in time; every side knows how to clean up after itself.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import parts

BENCH = Path(__file__).resolve().parent
SCRIPT = BENCH / "baseline" / "server_deploy.sh"
AGENT = parts.VENV_BIN / "obs-agent"

# The same Docker healthcheck for every side: it reads the body, so an error-answering release is
# `unhealthy` for Docker too (a bare `wget -q` passes any 2xx). Interval 1 s, 3 retries.
HEALTH_SHELL = "wget -q -O - http://127.0.0.1:8000/health | grep -q '\"status\":\"healthy\"'"
# Docker runs the first check one interval after the start (engine 20.10 has no start_interval):
# no release is `healthy` to Docker sooner.
HEALTH_INTERVAL_S = 1
HEALTHCHECK = (
    "    healthcheck:\n"
    f"      test: [\"CMD-SHELL\", {json.dumps(HEALTH_SHELL)}]\n"
    f"      interval: {HEALTH_INTERVAL_S}s\n      timeout: 1s\n      retries: 3\n"
)
REQUIRED_ENV = {"QTS_OBSERVER_STANDALONE": "1", "PYTHONPATH": "/app/src"}


# --- prober ------------------------------------------------------------------------------------
@dataclass
class Sample:
    t: float  # time.monotonic() when the probe was sent
    wall: float  # time.time() at the same moment, to line up with Docker events
    ok: bool  # 2xx and {"status": "healthy"}
    version: str | None
    seconds: float = 0.0  # how long the probe took
    error: str = ""


class Prober:
    """GET /health every `interval` (10 ms) as independent clients do: each request is sent on
    schedule from its own thread on its own connection, whether or not the earlier ones were
    answered (a stalled request hides nothing that others would have seen meanwhile). A
    request that is refused, reset, not answered within `timeout`, not 2xx or not `healthy`
    counts as failed at the moment it was sent. The timeout is 5 s: a user waits that long,
    and a busy moment of this shared 2-core machine (load ~10) is not a failed request.
    Bounded: at most `max_seconds`."""

    def __init__(self, port: int, interval: float = 0.01, timeout: float = 5.0,
                 max_seconds: float = 300) -> None:
        self.port = port
        self.interval = interval
        self.timeout = timeout
        self.max_seconds = max_seconds
        self._done: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._clients: list[threading.Thread] = []

    @property
    def samples(self) -> list[Sample]:
        with self._lock:
            return sorted(self._done, key=lambda s: s.t)

    def probe(self) -> Sample:
        t, wall = time.monotonic(), time.time()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request("GET", "/health", headers={"Connection": "close"})
            resp = conn.getresponse()
            body = resp.read(4096)
            doc = json.loads(body) if 200 <= resp.status < 300 else {}
            ok = isinstance(doc, dict) and doc.get("status") == "healthy"
            return Sample(t, wall, ok, doc.get("version") if isinstance(doc, dict) else None,
                          time.monotonic() - t, "" if ok else f"HTTP {resp.status} {body[:60]!r}")
        except (OSError, ValueError, http.client.HTTPException) as exc:
            return Sample(t, wall, False, None, time.monotonic() - t, type(exc).__name__)
        finally:
            conn.close()

    def _client(self) -> None:
        smp = self.probe()
        with self._lock:
            self._done.append(smp)

    def _run(self) -> None:
        t0 = time.monotonic()
        n = 0
        while not self._stop.is_set() and n * self.interval < self.max_seconds:
            delay = t0 + n * self.interval - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            client = threading.Thread(target=self._client, daemon=True)
            client.start()
            self._clients.append(client)
            if n % 500 == 0:  # finished clients need no join: keep the list short
                self._clients = [c for c in self._clients if c.is_alive()]
            n += 1

    def start(self) -> Prober:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for c in self._clients:
            c.join(self.timeout + 5)

    def wait_for(self, version: str | None, deadline: float) -> bool:
        """Keep probing until the last answer is healthy (from `version` when given)."""
        while time.monotonic() < deadline:
            samples = self.samples
            if samples:
                s = samples[-1]
                if s.ok and (version is None or s.version == version):
                    return True
            time.sleep(0.02)
        return False


def outage_windows(samples: list[Sample]) -> list[tuple[float, float, bool]]:
    """(first failed probe, first healthy probe after it, closed) for every outage."""
    out: list[tuple[float, float, bool]] = []
    start: float | None = None
    for s in samples:
        if not s.ok and start is None:
            start = s.t
        elif s.ok and start is not None:
            out.append((start, s.t, True))
            start = None
    if start is not None and samples:
        out.append((start, samples[-1].t, False))
    return out


def longest_outage(samples: list[Sample]) -> float:
    """The longest all-failed window: from the first failed request to the next one that
    was answered, by send time."""
    return max((b - a for a, b, _ in outage_windows(samples)), default=0.0)


def failed_requests(samples: list[Sample]) -> int:
    return sum(1 for s in samples if not s.ok)


CUTOVER_BEFORE, CUTOVER_AFTER = 0.5, 1.0


def cutover_p99(samples: list[Sample], old: str | None, target: str) -> float | None:
    """p99 latency around the moment the answering release changed from `old` to `target`
    (behind a proxy: its one config change), None when it did not change."""
    if target == old:
        return None
    cut = next((x.t for x in samples if x.ok and x.version == target), None)
    if cut is None:
        return None
    return p99([x.seconds for x in samples if cut - CUTOVER_BEFORE <= x.t <= cut + CUTOVER_AFTER])


def p99(values: list[float]) -> float | None:
    vals = sorted(values)
    return vals[int(0.99 * (len(vals) - 1))] if vals else None


def restored_after(samples: list[Sample], version: str) -> float | None:
    """From the first failed probe to the first healthy answer of `version` after it: 0.0 when
    the service never failed, None when `version` never answered again."""
    first_fail = next((s.t for s in samples if not s.ok), None)
    if first_fail is None:
        return 0.0
    back = next((s.t for s in samples if s.t > first_fail and s.ok and s.version == version), None)
    return None if back is None else back - first_fail


class EventRecorder:
    """Docker events of one side's containers while a deploy runs (a timeline for the profile)."""

    ACTIONS = ("create", "start", "kill", "die", "stop", "destroy", "restart")

    def __init__(self, label: str) -> None:
        import docker

        self.events: list[tuple[float, str, str]] = []
        self._client = docker.from_env(timeout=30)
        self._stream = self._client.api.events(
            decode=True, filters={"type": "container", "label": label}, since=int(time.time()) - 1)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(Exception):
            for ev in self._stream:
                action = str(ev.get("Action") or "")
                if action.split(":")[0] in self.ACTIONS or action.startswith("health_status"):
                    name = ((ev.get("Actor") or {}).get("Attributes") or {}).get("name", "?")
                    self.events.append((int(ev.get("timeNano") or 0) / 1e9, action, name))

    def stop(self) -> list[tuple[float, str, str]]:
        time.sleep(0.2)  # let the last events arrive
        with contextlib.suppress(Exception):
            self._stream.close()
        self._thread.join(2)
        with contextlib.suppress(Exception):
            self._client.close()
        return sorted(self.events)


def timeline(t0_wall: float, samples: list[Sample], events: list[tuple[float, str, str]],
             end_wall: float) -> list[str]:
    """Offsets from the start of the deploy command: outages seen by the prober, the command's
    exit, and the Docker events of the side's containers."""
    items: list[tuple[float, str]] = [(0.0, "deploy command starts"),
                                      (end_wall - t0_wall, "deploy command exits")]
    start: Sample | None = None
    errors: dict[str, int] = {}
    for smp in samples:
        if not smp.ok:
            errors[smp.error] = errors.get(smp.error, 0) + 1
        if not smp.ok and start is None:
            start = smp
            items.append((smp.wall - t0_wall, "prober: outage begins"))
        elif smp.ok and start is not None:
            items.append((smp.wall - t0_wall,
                          f"prober: {smp.version} answers healthy "
                          f"(outage {smp.t - start.t:.3f}s; failed probes: {errors})"))
            start = None
            errors = {}
    items += [(w - t0_wall, f"docker: {name} {action}") for w, action, name in events
              if w >= t0_wall - 0.5]
    return [f"{t:+7.3f}s {what}" for t, what in sorted(items)]


# --- runs ----------------------------------------------------------------------------------------
@dataclass
class Run:
    side: str
    tag: str
    from_version: str | None
    exit_code: int
    wall_s: float
    downtime_s: float  # the longest all-failed window
    restored_s: float | None
    answering_after: str | None  # the version answering when probing stopped
    probes: int
    failed: int = 0  # failed requests
    latency_p99_s: float | None = None  # of the requests sent while the command ran
    # Of the requests sent from CUTOVER_BEFORE before to CUTOVER_AFTER after the first answer
    # of the release switched to; None when the answering release never changed.
    cutover_p99_s: float | None = None
    versions: list[str] = field(default_factory=list)  # the versions that answered
    steps: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    output_tail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 4) if vals else None


def sh(argv: list[str], timeout: float = 120, env: dict[str, str] | None = None,
       check: bool = False) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}... exited {res.returncode}: {res.stderr[-800:]}")
    return res


def tail(text: str, n: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


# --- sides ---------------------------------------------------------------------------------------
class Side:
    name = "?"
    port: int
    event_label: str

    def deploy(self, tag: str, env: dict[str, str] | None = None,
               timeout: float = 180) -> tuple[int, str, dict[str, Any]]:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError

    def details(self, extra: dict[str, Any]) -> None:
        """After the timed deploy: gather what the side recorded about it (untimed)."""

    def current_version(self) -> str | None:
        return Prober(self.port, timeout=2).probe().version

    def settle(self, timeout: float = 40) -> str | None:
        """Wait until the service answers healthy for 0.3 s in a row; the answering version."""
        deadline = time.monotonic() + timeout
        p = Prober(self.port, timeout=1)
        since: float | None = None
        while time.monotonic() < deadline:
            s = p.probe()
            if s.ok:
                since = since or s.t
                if s.t - since >= 0.3:
                    return s.version
            else:
                since = None
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: the service on port {self.port} is not healthy "
                           f"after {timeout:.0f}s")

    def measure(self, tag: str, *, expect_back: str | None = None,
                env: dict[str, str] | None = None, after: float = 20) -> Run:
        """Deploy `tag` with the prober running. Afterwards keep probing (at most `after` s)
        until the expected release answers: `tag`, or `expect_back` for a failing release."""
        old = self.settle()
        recorder = EventRecorder(self.event_label)
        prober = Prober(self.port).start()
        time.sleep(0.3)
        t0, t0_wall = time.monotonic(), time.time()
        try:
            code, output, extra = self.deploy(tag, env=env)
            wall = time.monotonic() - t0
            end_wall = time.time()
            prober.wait_for(expect_back or tag, time.monotonic() + after)
            time.sleep(0.1)
        finally:
            prober.stop()
            events = recorder.stop()
        self.details(extra)
        samples = prober.samples
        extra["timeline"] = timeline(t0_wall, samples, events, end_wall)
        restored = restored_after(samples, expect_back) if expect_back else None
        return Run(
            side=self.name, tag=tag, from_version=old, exit_code=code, wall_s=wall,
            downtime_s=longest_outage(samples), restored_s=restored,
            answering_after=samples[-1].version if samples and samples[-1].ok else None,
            probes=len(samples), failed=failed_requests(samples),
            latency_p99_s=p99([x.seconds for x in samples if t0 <= x.t <= t0 + wall]),
            cutover_p99_s=cutover_p99(samples, old, expect_back or tag),
            versions=sorted({x.version for x in samples if x.ok and x.version}),
            steps=extra.pop("steps", {}), detail=extra, output_tail=tail(output),
        )


def last_record(root: parts.AgentRootDir) -> dict[str, Any]:
    """The agent's newest history record; {} when there is none (a benchmark reports what it
    found, it does not assert)."""
    res = root.agent("history", "--json", "--limit", "1")
    try:
        return dict(json.loads(res.stdout)[0])
    except (ValueError, IndexError, TypeError, KeyError):
        return {}


def write_compose(root: parts.AgentRootDir) -> None:
    """parts' compose file with the body-reading healthcheck above (same for every side)."""
    f = root.path / "docker-compose.server.yml"
    text = f.read_text()
    new = re.sub(r"    healthcheck:\n(      .*\n)+", HEALTHCHECK, text)
    assert new != text, "healthcheck block not found in the compose template"
    f.write_text(new)


class AgentSide(Side):
    name = "obs-agent"

    def __init__(self, path: Path, registry: str, project: str, settings: dict[str, Any]) -> None:
        self.root = parts.make_agent_root(path, registry, project, **settings)
        write_compose(self.root)
        self.port = self.root.port
        self.event_label = f"com.docker.compose.project={project}"

    def deploy(self, tag: str, env: dict[str, str] | None = None,
               timeout: float = 180) -> tuple[int, str, dict[str, Any]]:
        res = self.root.agent("deploy", tag, env=self.root.env(**(env or {})), timeout=timeout)
        return res.returncode, res.stdout + res.stderr, {"log": _timed_log_lines(res.stderr)}

    def details(self, extra: dict[str, Any]) -> None:
        """The attempt's history record: the agent's own step timings."""
        rec = last_record(self.root)
        if rec:
            extra.update(steps=rec.get("steps") or {}, duration_s=rec.get("duration_s"),
                         result=rec.get("result"), backup=rec.get("backup"))

    def backup_write_seconds(self) -> float | None:
        """From the agent log: the last `backup NAME written (N s)` line."""
        log = self.root.path / "state" / "agent.log"
        if not log.exists():
            return None
        found = re.findall(r"backup \S+ written \(([0-9.]+)s\)", log.read_text(errors="replace"))
        return float(found[-1]) if found else None

    def cleanup(self) -> None:
        self.root.down()


class ProxiedAgentSide(AgentSide):
    """obs-agent behind a real caddy, nginx or traefik on loopback (SPEC §15): the observer publishes an
    ephemeral port, the prober goes through the proxy. `deploy("rollback")` rolls back."""

    def __init__(self, path: Path, registry: str, project: str, settings: dict[str, Any],
                 kind: str, *, single_writer: bool = False) -> None:
        from tests.parts_proxy import behind_a_proxy, start_proxy

        self.proxy = start_proxy(kind, path.parent)
        super().__init__(path, registry, project, {
            **settings, "health_url": f"{self.proxy.url}/health",
            "proxy": self.proxy.proxy_settings(drain_seconds=1)})
        self.name = f"obs-agent + {kind}"
        # The start-first cutover (scenario 7) labels the observer out of being a single
        # writer; scenario 10 measures it as one (stop-first, held).
        behind_a_proxy(self.root.path / "docker-compose.server.yml", self.root.port,
                       single_writer=single_writer)
        self.port = self.proxy.listen_port

    def deploy(self, tag: str, env: dict[str, str] | None = None,
               timeout: float = 180) -> tuple[int, str, dict[str, Any]]:
        args = ("rollback",) if tag == "rollback" else ("deploy", tag)
        res = self.root.agent(*args, env=self.root.env(**(env or {})), timeout=timeout)
        return res.returncode, res.stdout + res.stderr, {"log": _timed_log_lines(res.stderr)}

    def steady_p99(self, seconds: float = 2.0) -> float | None:
        """p99 latency through the proxy with nothing happening, the same load."""
        prober = Prober(self.port).start()
        time.sleep(seconds)
        prober.stop()
        return p99([x.seconds for x in prober.samples])

    def cleanup(self) -> None:
        super().cleanup()
        self.proxy.stop()


def _timed_log_lines(stderr: str) -> list[str]:
    """The agent's own timestamped lines (HH:MM:SS LEVEL message), as a coarse profile."""
    return [ln for ln in stderr.splitlines() if re.match(r"\d\d:\d\d:\d\d ", ln)][-20:]


class ScriptSide(Side):
    name = "script"

    def __init__(self, path: Path, registry: str, project: str, health_timeout: float) -> None:
        self.root = parts.make_agent_root(path, registry, project)
        write_compose(self.root)
        with open(self.root.path / ".env", "a") as f:
            f.write("".join(f"{k}={v}\n" for k, v in REQUIRED_ENV.items()))
        for d in ("data", "logs", "config"):
            (self.root.path / d).mkdir(exist_ok=True)
        self.port = self.root.port
        self.event_label = f"com.docker.compose.project={project}"
        self.health_timeout = health_timeout

    def deploy(self, tag: str, env: dict[str, str] | None = None,
               timeout: float = 180) -> tuple[int, str, dict[str, Any]]:
        e = {k: v for k, v in os.environ.items() if not k.startswith("OBS_AGENT_")}
        e.update(PROJECT=self.root.project, HEALTH_TIMEOUT=f"{self.health_timeout:g}", **(env or {}))
        res = sh(["bash", str(SCRIPT), str(self.root.path), tag], timeout=timeout, env=e)
        steps = _script_steps(res.stdout)
        return res.returncode, res.stdout + res.stderr, {"steps": steps}

    def cleanup(self) -> None:
        self.root.down()


def _script_steps(stdout: str) -> dict[str, float]:
    """Seconds between the script's own log lines: pull, backup, up (+ health poll)."""
    stamps = []
    for ln in stdout.splitlines():
        m = re.match(r"(\d\d):(\d\d):(\d\d\.\d+) (\S+)", ln)
        if m:
            stamps.append((int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]), m[4]))
    steps: dict[str, float] = {}
    for (t, what), (t2, _) in zip(stamps, stamps[1:], strict=False):
        if what in ("pull", "backup", "up"):
            steps[what] = round(t2 - t, 3)
    return steps


class SwarmSide(Side):
    """A Swarm service on this engine: host-mode published port, the same healthcheck and
    mounts, stop-first updates with `--update-failure-action rollback`; Swarm defaults otherwise
    (update monitor 5 s, restart delay 5 s)."""

    name = "swarm"

    def __init__(self, path: Path, registry: str, name: str, *, order: str = "stop-first",
                 publish_mode: str = "host") -> None:
        self.order = order  # --update-order and --rollback-order
        self.publish_mode = publish_mode  # host, or ingress (the routing mesh)
        self.root = parts.make_agent_root(path, registry, name)
        with open(self.root.path / ".env", "a") as f:
            f.write("".join(f"{k}={v}\n" for k, v in REQUIRED_ENV.items()))
        for d in ("data", "logs", "config"):
            (self.root.path / d).mkdir(exist_ok=True)
        self.port = self.root.port
        self.service = name
        self.event_label = f"com.docker.swarm.service.name={name}"
        self.image = f"{registry}/{parts.REPOSITORY}"
        self.network = f"{name}-net"
        self.initialized_swarm = False
        self.created = False
        self.net_created = False

    @staticmethod
    def swarm_state() -> str:
        return sh(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"], 30).stdout.strip()

    def init(self) -> None:
        if self.swarm_state() != "active":
            sh(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], 60, check=True)
            self.initialized_swarm = True

    def create(self, tag: str) -> None:
        """The service on its own overlay network: a host-mode port is published through the
        container's gateway network, and this engine has no default bridge (docker0)."""
        p = self.root.path
        sh(["docker", "network", "create", "-d", "overlay", self.network], 60, check=True)
        self.net_created = True
        argv = [
            "docker", "service", "create", "--name", self.service, "--detach=true", "--quiet",
            "--network", self.network,
            "--publish", f"mode={self.publish_mode},target=8000,published={self.port}",
            "--mount", f"type=bind,source={p / 'data'},target=/app/data/observer",
            "--mount", f"type=bind,source={p / 'logs'},target=/app/logs",
            "--mount", f"type=bind,source={p / 'config'},target=/app/config",
            "--env-file", str(p / ".env"),
            "--health-cmd", HEALTH_SHELL, "--health-interval", f"{HEALTH_INTERVAL_S}s", "--health-timeout", "1s",
            "--health-retries", "3", "--stop-grace-period", "5s",
            "--update-order", self.order, "--update-parallelism", "1",
            "--update-failure-action", "rollback", "--rollback-order", self.order,
            f"{self.image}:{tag}",
        ]
        self.created = True
        sh(argv, 60, check=True)
        try:
            self.settle(60)
        except RuntimeError:
            tasks = sh(["docker", "service", "ps", "--no-trunc", "--format",
                        "{{.CurrentState}} {{.Error}}", self.service], 30).stdout
            raise RuntimeError(f"swarm service {self.service} is not healthy after 60s; "
                               f"tasks:\n{tail(tasks, 5)}") from None

    def deploy(self, tag: str, env: dict[str, str] | None = None,
               timeout: float = 180) -> tuple[int, str, dict[str, Any]]:
        """`docker service update --image`; "rollback" is `docker service rollback`."""
        argv = (["docker", "service", "rollback", "--detach=false", self.service] if tag == "rollback"
                else ["docker", "service", "update", "--detach=false", "--image",
                      f"{self.image}:{tag}", self.service])
        res = sh(argv, timeout=timeout)
        return res.returncode, res.stdout + res.stderr, {}

    def cleanup(self) -> None:
        if self.created:
            sh(["docker", "service", "rm", self.service], 60)
            deadline = time.monotonic() + 30
            flt = f"label=com.docker.swarm.service.name={self.service}"
            while time.monotonic() < deadline:
                if not sh(["docker", "ps", "-aq", "--filter", flt], 30).stdout.split():
                    break
                time.sleep(0.5)
        if self.net_created:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the network is busy until the tasks are gone
                if sh(["docker", "network", "rm", self.network], 30).returncode == 0:
                    break
                time.sleep(1)
        if self.initialized_swarm:
            sh(["docker", "swarm", "leave", "--force"], 60)
            # `swarm init` created docker_gwbridge and `leave` does not remove it: the host
            # engine is left as the run found it.
            sh(["docker", "network", "rm", "docker_gwbridge"], 30)


class FloorSide(Side):
    """The physical floor of an image swap with raw Docker calls (SDK): create the new container
    beside the old one, stop the old, start the new (and, for a crash release, start the old one
    again). With `flush_neighbour`, the host's ARP entry for the started container's address is
    flushed right after the start: the new container
    gets the address the old one just released, and the entry left INCOMPLETE by traffic sent
    to the stopped container delays the first packets by up to a second (neighbour retransmit
    timer)."""

    def __init__(self, registry: str, name: str, flush_neighbour: bool) -> None:
        import docker

        self.name = f"floor{' + neighbour flush' if flush_neighbour else ''}"
        self.client = docker.from_env(timeout=120)
        self.image = f"{registry}/{parts.REPOSITORY}"
        self.label = name
        self.event_label = f"obsbench.floor={name}"
        self.port = parts.free_port()
        self.flush = flush_neighbour
        self.network = self.client.networks.create(f"{name}-net", labels={"obsbench.floor": name})
        self.current: Any = None
        self.n = 0

    def _create(self, tag: str) -> Any:
        self.n += 1
        return self.client.containers.create(
            f"{self.image}:{tag}", name=f"{self.label}-{self.n}", network=self.network.name,
            ports={"8000/tcp": ("127.0.0.1", self.port)}, labels={"obsbench.floor": self.label},
            environment=REQUIRED_ENV, stop_signal="SIGTERM")

    def start_first(self, tag: str) -> None:
        self.current = self._create(tag)
        self.current.start()

    def deploy(self, tag: str, env: dict[str, str] | None = None,
               timeout: float = 180) -> tuple[int, str, dict[str, Any]]:
        """Swap to `tag`. A crash-at-start release (its process exits at once) is waited for
        and the old container started again: the floor of a data-safe way back, where the old
        release stops writing before the new one starts. Exit 20 then, as the agent's."""
        new = self._create(tag)
        t = time.monotonic()
        self.current.stop(timeout=5)
        t_stop = time.monotonic()
        new.start()
        t_start = time.monotonic()
        if not tag.endswith("-crash"):
            self._flush_neighbour(new)
            steps = {"stop": t_stop - t, "start": t_start - t_stop,
                     "flush": time.monotonic() - t_start}
            self.current.remove(force=True)
            self.current = new
            return 0, "", {"steps": {k: round(v, 3) for k, v in steps.items()}}
        new.wait(timeout=30)  # returns once Docker has cleaned the exited container up
        t_exited = time.monotonic()
        self.current.start()
        t_back = time.monotonic()
        self._flush_neighbour(self.current)
        steps = {"stop": t_stop - t, "start": t_start - t_stop, "exited": t_exited - t_start,
                 "start old": t_back - t_exited, "flush": time.monotonic() - t_back}
        new.remove(force=True)
        return 20, "", {"steps": {k: round(v, 3) for k, v in steps.items()}}

    def _flush_neighbour(self, container: Any) -> None:
        if not self.flush:
            return
        container.reload()
        for n in (container.attrs["NetworkSettings"]["Networks"] or {}).values():
            if n.get("IPAddress"):
                sh(["ip", "neigh", "flush", "to", n["IPAddress"]], 10)

    def cleanup(self) -> None:
        for c in self.client.containers.list(all=True, filters={"label": self.event_label}):
            with contextlib.suppress(Exception):
                c.remove(force=True)
        with contextlib.suppress(Exception):
            self.network.remove()


def write_archive(path: Path, size: int) -> None:
    """A JSONL archive of `size` bytes, lines like the observer's, appended (O_APPEND) so the
    running release can keep appending. A 16 MiB block of distinct lines is repeated: gzip's
    32 KiB window sees no repetition, so compression costs what it costs on real data."""
    import random

    rng = random.Random(42)
    lines = []
    total = 0
    block_size = min(size, 16 << 20)
    while total < block_size:
        ln = (f'{{"ts":"2026-11-22T09:{rng.randrange(60):02d}:{rng.randrange(60):02d}.'
              f'{rng.randrange(10**6):06d}Z","symbol":"{rng.randrange(10**6):06d}",'
              f'"price":{rng.uniform(1000, 90000):.2f},"volume":{rng.randrange(10**7)},'
              f'"bid":{rng.uniform(1000, 90000):.2f},"ask":{rng.uniform(1000, 90000):.2f},'
              f'"seq":{rng.randrange(10**9)}}}\n')
        lines.append(ln)
        total += len(ln)
    block = "".join(lines).encode()[:block_size]
    block = block[: block.rfind(b"\n") + 1]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        written = 0
        while written < size:
            chunk = block[: size - written]
            os.write(fd, chunk)
            written += len(chunk)
    finally:
        os.close(fd)


def drop_page_cache() -> bool:
    """Cold cache for the backup: needs root; returns whether it was done."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
