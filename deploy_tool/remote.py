"""`obsdeploy deploy|rollback|status` (SPEC §10): run the agent on each host over SSH.

Building and running are kept apart: `HostSpec.parse` and `AgentCall.command` only build
(a host spec, a `shlex.join`ed command line: no tag, path or host is ever pasted unquoted);
`SshSession` runs one command on one host (fabric, host keys verified against known_hosts
with paramiko's `RejectPolicy`: an unknown or changed key is exit 30); `rollout` carries out
the fleet plan of `fleet.py` (batches, canary hosts, what a failure undoes) over SSH.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, Field

from server_agent.common.errors import NOTHING_CHANGED, ExitCode, SSHError, UsageError
from server_agent.common.redact import REDACTOR

from .fleet import (
    Action,
    FleetRollback,
    HostCall,
    HostResult,
    OnFailure,
    RolloutReport,
    carry_out,
    plan_fleet,
)

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_USER = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*")
_HOST_SPEC = re.compile(r"(?:(?P<user>[^@]+)@)?(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:@]+))"
                        r"(?::(?P<port>[0-9]+))?")

# The shell's "command not found": the agent is not installed (or not on the PATH).
AGENT_NOT_FOUND = 127


def result_name(code: int) -> str:
    """A host's `result` for the agent's exit code: the code's name (`ExitCode.result_name`),
    `agent_not_found` for 127, `failed` for any other code."""
    if code == AGENT_NOT_FOUND:
        return "agent_not_found"
    try:
        return ExitCode(code).result_name
    except ValueError:
        return "failed"


class HostSpec(BaseModel, frozen=True):
    """One server: `[user@]host[:port]`, `[v6addr]:port` for IPv6."""

    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str, *, user: str | None = None, port: int | None = None) -> HostSpec:
        m = _HOST_SPEC.fullmatch(text.strip())
        if not m:
            raise UsageError(f"invalid host {text!r}", hint="expected [user@]host[:port]")
        host = m.group("v6") or m.group("host")
        if not m.group("v6") and not _NAME.fullmatch(host):
            raise UsageError(f"invalid host name {host!r} in {text!r}",
                             hint="letters, digits, '.', '-' and '_' only; [user@]host[:port]")
        u = m.group("user") or user
        if u is not None and not _USER.fullmatch(u):
            raise UsageError(f"invalid user name {u!r} in {text!r}")
        p = int(m.group("port")) if m.group("port") else port
        if p is not None and not 1 <= p <= 65535:
            raise UsageError(f"invalid port {p} in {text!r}", hint="1-65535")
        return cls(host=host, user=u, port=p)

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user + '@' if self.user else ''}{host}{f':{self.port}' if self.port else ''}"


def parse_hosts(texts: Sequence[str], *, user: str | None, port: int | None) -> list[HostSpec]:
    hosts = [HostSpec.parse(t, user=user, port=port) for t in texts]
    if not hosts:
        raise UsageError("no host given", hint="pass --host (repeatable) or set OBSDEPLOY_HOSTS "
                                               "or [deploy].hosts in obsdeploy.toml")
    seen: set[tuple[str, int | None]] = set()
    for h in hosts:
        if (h.host, h.port) in seen:
            raise UsageError(f"host {h.label} is given twice")
        seen.add((h.host, h.port))
    return hosts


def read_secrets(names: Sequence[str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """Each NAME's value from obsdeploy's own environment; every name missing or empty is
    refused at once (exit 2), before any host is touched. The values are masked from here on."""
    env = os.environ if environ is None else environ
    missing = [n for n in dict.fromkeys(names) if not env.get(n)]
    if missing:
        raise UsageError(f"secret(s) {', '.join(missing)} not set or empty in obsdeploy's "
                         "environment", hint="export them (in CI: the job's env: from "
                                             "${{ secrets.NAME }}), or drop them from --secret, "
                                             "OBSDEPLOY_SECRETS or [deploy].secrets")
    unfit = [n for n in names if "${" in env[n] or any(c in env[n] for c in "\r\n\0")]
    if unfit:
        # A .env entry is one line, and `${` in it is expanded by whoever reads it.
        raise UsageError(f"secret(s) {', '.join(unfit)} hold '${{', a line break or NUL, which "
                         "a host's .env cannot keep as given",
                         hint="rotate the secret to a value without them")
    values = {n: env[n] for n in dict.fromkeys(names)}
    REDACTOR.add(values.values())
    return values


class AgentCall(BaseModel):
    """How to invoke the agent on a server; builds command lines and its standard input,
    runs nothing. `secrets` go only to the standard input (`--secrets-stdin`)."""

    agent_command: str = "obs-agent"
    agent_root: str | None = None
    secrets: dict[str, str] = Field(default_factory=dict, repr=False, exclude=True)
    # `obsdeploy rollback --force`: past a migration job labelled obsdeploy.reversible "false"
    # (the agent refuses such a rollback with exit 2 otherwise). Never for a fleet's way back.
    force: bool = False

    def stdin(self) -> str | None:
        """NAME=VALUE lines for `--secrets-stdin`, or None when there is nothing to send."""
        if not self.secrets:
            return None
        return "".join(f"{k}={v}\n" for k, v in self.secrets.items())

    def argv(self, *args: str) -> list[str]:
        try:
            program = shlex.split(self.agent_command)
        except ValueError as exc:
            raise UsageError(f"--agent-command {self.agent_command!r}: {exc}") from None
        root = ["--root", self.agent_root] if self.agent_root else []
        return [*program, *root, *args]

    def command(self, *args: str) -> str:
        return shlex.join(self.argv(*args))


class SshOptions(BaseModel):
    identity: str | None = None
    known_hosts: str | None = None
    connect_timeout: float = 15

    def check(self) -> None:
        for name, value in (("--identity", self.identity), ("--known-hosts", self.known_hosts)):
            if value and not Path(value).expanduser().is_file():
                raise UsageError(f"{name} {value}: no such file")


class _PrefixWriter:
    """A stream for invoke: writes whole lines as `label | line` under a shared lock."""

    lock = threading.Lock()

    def __init__(self, label: str, target: IO[str]) -> None:
        self.label, self.target, self.buf = label, target, ""

    def write(self, data: str) -> None:
        self.buf += data
        *lines, self.buf = self.buf.split("\n")
        if lines:
            with self.lock:
                # The agent masks its own output; masked here too, in case it is an old one.
                self.target.write("".join(f"{self.label} | {REDACTOR(line)}\n" for line in lines))
                self.target.flush()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.buf:
            self.write("\n")


class SshSession:
    """One fabric connection to one host, host key checked before anything is sent."""

    def __init__(self, host: HostSpec, opts: SshOptions) -> None:
        self.host, self.opts = host, opts
        self.conn: Any = None

    def __enter__(self) -> SshSession:
        import paramiko
        from fabric import Connection

        connect_kwargs: dict[str, Any] = {}
        if self.opts.identity:
            connect_kwargs["key_filename"] = str(Path(self.opts.identity).expanduser())
        conn = Connection(self.host.host, user=self.host.user, port=self.host.port,
                          connect_timeout=int(self.opts.connect_timeout),
                          connect_kwargs=connect_kwargs)
        # Fabric trusts any key by default (AutoAddPolicy); we never do: neither for the host
        # nor for the ProxyJump bastions fabric builds from ~/.ssh/config (each its own
        # Connection, each with fabric's default policy until set here).
        hop: Any = conn
        while isinstance(hop, Connection):
            self._verify_host_keys(hop.client)
            hop = hop.gateway
        try:
            conn.open()
        except paramiko.BadHostKeyException as exc:
            raise SSHError(
                f"{self.host.label}: the host key has CHANGED (server offers "
                f"{exc.key.get_name()} {exc.key.fingerprint}); refusing to connect",
                hint="if the server was reinstalled, verify the new key and update known_hosts",
            ) from None
        except paramiko.AuthenticationException as exc:
            raise SSHError(f"{self.host.label}: SSH authentication failed ({exc})",
                           hint="check --user and --identity") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                where = self.opts.known_hosts or "~/.ssh/known_hosts"
                server = re.search(r"Server '([^']+)'", str(exc))
                whose = f" of {server.group(1)}" if server else ""
                if isinstance(conn.gateway, Connection) and server and server.group(1) != _key_name(conn):
                    whose += " (a ProxyJump bastion)"
                raise SSHError(
                    f"{self.host.label}: unknown host key{whose} (not in {where}); refusing to connect",
                    hint="verify the server's fingerprint, then add its line to known_hosts "
                         "(--known-hosts FILE, env OBSDEPLOY_KNOWN_HOSTS)",
                ) from None
            raise SSHError(f"{self.host.label}: SSH failure: {exc}") from None
        except (OSError, EOFError) as exc:
            raise SSHError(f"{self.host.label}: cannot connect: {exc}") from None
        self.conn = conn
        return self

    def _verify_host_keys(self, client: Any) -> None:
        import paramiko

        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        if self.opts.known_hosts:
            client.load_host_keys(str(Path(self.opts.known_hosts).expanduser()))
        else:
            client.load_system_host_keys()
            if Path("/etc/ssh/ssh_known_hosts").is_file():
                client.load_system_host_keys("/etc/ssh/ssh_known_hosts")

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.conn.close()


    def run(self, command: str, *, out: IO[str] | None = None,
            err: IO[str] | None = None, stdin: str | None = None) -> tuple[int, str]:
        """Run `command`; returns (exit code, stdout). Given `err`, its stderr is streamed
        there line by line, prefixed with the host; given `out` too, its stdout as well.
        `stdin` is written to the command's standard input, which is then closed (never
        echoed: it carries secrets)."""
        import paramiko

        streams: list[_PrefixWriter] = []
        kwargs: dict[str, Any] = {"warn": True, "pty": False, "hide": True, "echo_stdin": False,
                                  "in_stream": io.StringIO(stdin) if stdin is not None else False}
        if err is not None:
            e = _PrefixWriter(self.host.label, err)
            streams.append(e)
            kwargs.update(hide="out", err_stream=e)
            if out is not None:
                o = _PrefixWriter(self.host.label, out)
                streams.append(o)
                kwargs.update(hide=False, out_stream=o)
        try:
            res = self.conn.run(command, **kwargs)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHError(f"{self.host.label}: connection lost: {exc}") from None
        finally:
            for s in streams:
                s.close()
        return int(res.exited), str(res.stdout)

    def put(self, local: str, remote: str) -> None:
        self.conn.put(local, remote)


class SshSessions:
    """The run's sessions, one per host, kept open from the host's deploy to its fleet
    rollback: opening one costs a key exchange and an authentication (0.1-0.5 s per host on
    the bench's loopback hosts, paid again by every host of a fleet's way back otherwise).
    A session whose connection dropped is opened again; one that fails is forgotten."""

    def __init__(self, opts: SshOptions) -> None:
        self.opts = opts
        self._open: dict[str, SshSession] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> SshSessions:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            sessions, self._open = list(self._open.values()), {}
        for s in sessions:
            s.__exit__()

    @contextlib.contextmanager
    def session(self, host: HostSpec) -> Iterator[SshSession]:
        with self._lock:
            kept = self._open.pop(host.label, None)
        if kept is not None and not kept.conn.is_connected:
            kept.__exit__()
            kept = None
        session = kept or SshSession(host, self.opts).__enter__()
        try:
            yield session
        except BaseException:
            session.__exit__()
            raise
        with self._lock:
            self._open[host.label] = session


def batches(hosts: Sequence[HostSpec], size: int) -> list[list[HostSpec]]:
    return [list(hosts[i:i + size]) for i in range(0, len(hosts), size)]


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def run_on_host(host: HostSpec, action: Action, version: str | None, call: AgentCall,
                opts: SshOptions, out: IO[str], err: IO[str],
                sessions: SshSessions | None = None) -> HostResult:
    """One agent run on `host`, in the run's session to it (`sessions`) or in one of its own.
    `deploy|rollback --json` answers with its outcome (from and to tags included), so a
    deploy costs one agent run; `status --json` is asked only when the agent stopped before
    it could answer."""
    started = time.monotonic()
    try:
        with (sessions.session(host) if sessions is not None
              else SshSession(host, opts)) as session:
            if action == "status":
                code, stdout = session.run(call.command("status", "--json"))
                return HostResult(host=host.label, result=result_name(code),
                                  exit_code=code, status=_json_object(stdout) if code == 0 else None,
                                  seconds=round(time.monotonic() - started, 2))
            stdin = call.stdin()
            args = [action, "--json", *(["--secrets-stdin"] if stdin else []),
                    *(["--force"] if call.force and action == "rollback" else []),
                    *([version] if version else [])]
            code, stdout = session.run(call.command(*args), err=err, stdin=stdin)
            outcome = _json_object(stdout)
            message = None
            if outcome is not None:
                before, after = outcome.get("from_tag"), outcome.get("current_tag")
                _PrefixWriter(host.label, out).write(f"{outcome.get('message', '')}\n")
                if code != 0:
                    message = str(outcome.get("message") or "") or None
            else:
                scode, sout = session.run(call.command("status", "--json"))
                after = (_json_object(sout) or {}).get("current_tag") if scode == 0 else None
                before = after if code in NOTHING_CHANGED else None
    except SSHError as exc:
        _PrefixWriter(host.label, err).write(f"error: {exc}\n")
        return HostResult(host=host.label, result="ssh_error", exit_code=int(exc.exit_code),
                          message=str(exc), seconds=round(time.monotonic() - started, 2))
    if code == AGENT_NOT_FOUND:
        message = f"agent command not found ({call.agent_command!r}): run `obsdeploy setup`"
    return HostResult(host=host.label, result=result_name(code), exit_code=code,
                      from_tag=before, to_tag=after, message=message,
                      seconds=round(time.monotonic() - started, 2))


def rollout(hosts: Sequence[HostSpec], action: Action, version: str | None, call: AgentCall,
            opts: SshOptions, *, batch: int, out: IO[str], err: IO[str],
            canary_hosts: int = 0, on_failure: OnFailure = "rollback-fleet",
            runner: Callable[..., HostResult] | None = None) -> RolloutReport:
    """The fleet plan (`fleet.plan_fleet`) carried out over SSH: the hosts of a batch run in
    parallel, one `runner` call each (by default `run_on_host` in the run's sessions)."""
    opts.check()
    plan = plan_fleet(hosts, action, version, batch=batch, canary_hosts=canary_hosts,
                      on_failure=on_failure)

    def say(line: str) -> None:
        with _PrefixWriter.lock:
            err.write(f"obsdeploy: {line}\n")
            err.flush()

    with SshSessions(opts) as sessions:
        run = runner or functools.partial(run_on_host, sessions=sessions)

        def run_batch(calls: Sequence[HostCall[HostSpec]]) -> list[HostResult]:
            with ThreadPoolExecutor(max_workers=len(calls)) as pool:
                futures = [pool.submit(run, c.host, c.action, c.version, call, opts, out, err)
                           for c in calls]
            return [f.result() for f in futures]

        return carry_out(plan, run_batch, say)


def _note(message: str | None) -> str:
    """The report's note column: the first line only (the full message went to stderr)."""
    return message.splitlines()[0] if message else ""


def render_report(report: RolloutReport, console: Any) -> None:
    from rich.table import Table

    if report.action == "status":
        table = Table(title="status", title_justify="left")
        for col in ("host", "current", "last good", "healthy", "last action", "note"):
            table.add_column(col)
        for r in report.hosts:
            s = r.status or {}
            la = s.get("last_action") or {}
            table.add_row(
                r.host, s.get("current_tag") or "-", s.get("last_good_tag") or "-",
                "-" if not s else ("yes" if s.get("healthy") else "NO"),
                f"{la.get('action')} {la.get('tag')} -> {la.get('result')}" if la else "-",
                _note(r.message) or ("" if r.exit_code == 0 else f"exit {r.exit_code}"))
        console.print(table)
        return
    what = report.version or ("(previous)" if report.action == "rollback" else "")
    title = f"{report.action} {what}".rstrip() + f": exit {report.exit_code}"
    table = Table(title=title, title_justify="left")
    fleet = any(r.fleet_rollback for r in report.hosts)
    for col in ("host", "from", "to", "result", "exit", "seconds",
                *(["fleet rollback"] if fleet else []), "note"):
        table.add_column(col)
    for r in report.hosts:
        table.add_row(r.host, r.from_tag or "-", r.to_tag or "-", r.result,
                      "-" if r.exit_code is None else str(r.exit_code),
                      "-" if r.seconds is None else f"{r.seconds:.1f}",
                      *([fleet_cell(r.fleet_rollback)] if fleet else []), _note(r.message))
    console.print(table)
    if report.fleet_result is not None and len(report.hosts) > 1:
        line = f"fleet: {report.fleet_result}"
        console.print(line + (f" ({report.fleet_message})" if report.fleet_message else ""),
                      markup=False)


def fleet_cell(back: FleetRollback | None) -> str:
    """A host's fleet rollback in one cell: `-> v1.0.0 ok`, or `-` when it had none."""
    if back is None:
        return "-"
    code = "" if back.exit_code in (0, None) else f" (exit {back.exit_code})"
    return f"-> {back.to or '?'} {back.result}{code}"


def _key_name(conn: Any) -> str:
    """How known_hosts names a connection's server: host, or [host]:port off port 22."""
    return conn.host if conn.port == 22 else f"[{conn.host}]:{conn.port}"
