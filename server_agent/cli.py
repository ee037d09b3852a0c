"""obs-agent: click commands only. Parse, call the core, print text or --json, exit.

Heavy imports (docker, pydantic) happen inside the commands so `--help` stays instant.
`main()` is the one place that turns errors into SPEC §9 exit codes.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from .common.clikit import print_json
from .common.errors import ExitCode, exit_codes_help

if TYPE_CHECKING:
    from .root import AgentRoot

ROOT_HELP = "Agent root directory (env OBS_AGENT_ROOT, default /opt/observer)."


class Ctx:
    def __init__(self, root: str, verbose: bool) -> None:
        self.root_path = root
        self.verbose = verbose
        self.incoming: dict[str, str] = {}  # --secrets-stdin

    def load_root(self, *, preflight: bool = False, validate: bool = True,
                  create: bool | None = None) -> AgentRoot:
        """Load the agent root and, unless `validate` is False, its settings. For
        deploy/rollback/check a bad configuration is a preflight problem (exit 10); for the
        other commands it is invalid input (exit 2). status and history do not validate:
        they read only the project name and the state, so they answer even while the
        configuration is broken (and without the cost of pydantic). `create` (default: as
        `preflight`) lets it create the state directory for the agent log; check and plan
        create nothing."""
        from .common.errors import PreflightError, UsageError
        from .root import AgentRoot

        try:
            root = AgentRoot(self.root_path, incoming=self.incoming)
            if preflight:
                _check_access(root)
            if validate:
                root.validate()
                from .common.progress import configure

                configure(every=root.settings.progress_seconds)
        except UsageError as exc:
            if preflight:
                from .plan import Problem

                raise PreflightError([Problem("config", str(exc))]) from None
            raise
        _log_to_state_dir(root, create=preflight if create is None else create)
        return root


def _check_access(root: AgentRoot) -> None:
    """Before the lock, the log or .env are touched: can this user work in the root at all?"""
    from .common.errors import PreflightError
    from .preflight import access_problems, docker_socket_problem

    problems = access_problems(root.path)
    if problems:
        denied = docker_socket_problem()
        raise PreflightError(problems + ([denied] if denied else []))


def _log_to_state_dir(root: AgentRoot, create: bool) -> None:
    """Keep an agent log beside the state (redacted like stderr). Read-only commands write
    to it only where the state directory already exists."""
    if not create and not root.state_dir.is_dir():
        return
    try:
        root.state_dir.mkdir(exist_ok=True)
        handler = logging.FileHandler(root.state_dir / "agent.log")
    except OSError:
        return
    handler.setFormatter(logging.getLogger().handlers[0].formatter)
    logging.getLogger().addHandler(handler)


def _tag(value: str | None) -> str | None:
    from .common.versions import validate_version

    return None if value is None else validate_version(value)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=exit_codes_help())
@click.version_option(package_name="obsdeploy", prog_name="obs-agent")
@click.option("--root", envvar="OBS_AGENT_ROOT", default="/opt/observer", show_default=True,
              help=ROOT_HELP)
@click.option("-v", "--verbose", is_flag=True, envvar="OBS_AGENT_VERBOSE",
              help="Log every command run (env OBS_AGENT_VERBOSE).")
@click.pass_context
def cli(ctx: click.Context, root: str, verbose: bool) -> None:
    """obs-agent: deploy, check and roll back the service on this server.

    The README (sections "Using it", "Agent settings" and "How it works") describes every
    command and setting.
    """
    from .common.clikit import setup_logging

    setup_logging(verbose)
    ctx.obj = Ctx(root, verbose)


SECRETS_STDIN_HELP = ("Read NAME=VALUE lines from standard input (until it closes) and write "
                      "them into .env once preflight passed; their values are secrets "
                      "(obsdeploy --secret sends them this way).")


def _read_secrets(ctx: Ctx, secrets_stdin: bool) -> None:
    from .secrets import check_dotenv_safe, parse_secret_lines

    if secrets_stdin:
        ctx.incoming = parse_secret_lines(sys.stdin.read(), where="--secrets-stdin")
        check_dotenv_safe(ctx.incoming, where="--secrets-stdin")


JSON_OUTCOME_HELP = ("Print the outcome as JSON on stdout: action, tag, from_tag, result, exit_code, "
                     "current_tag, duration_s, backup, message (the log stays on stderr).")


@cli.command()
@click.argument("tag")
@click.option("--json", "as_json", is_flag=True, help=JSON_OUTCOME_HELP)
@click.option("--secrets-stdin", is_flag=True, help=SECRETS_STDIN_HELP)
@click.pass_obj
def deploy(ctx: Ctx, tag: str, as_json: bool, secrets_stdin: bool) -> None:
    """Pull TAG, back up, start it, gate it; roll back by itself when it fails."""
    valid = _tag(tag)
    assert valid is not None
    _read_secrets(ctx, secrets_stdin)
    transaction = _transaction(ctx)
    _finish(transaction.deploy(valid), transaction, as_json)


@cli.command()
@click.argument("tag", required=False)
@click.option("--json", "as_json", is_flag=True, help=JSON_OUTCOME_HELP)
@click.option("--secrets-stdin", is_flag=True, help=SECRETS_STDIN_HELP)
@click.option("--force", is_flag=True,
              help="Go back even to a release older than one whose deploy ran a job labelled "
                   "obsdeploy.reversible \"false\" (a migration): restore its data first.")
@click.pass_obj
def rollback(ctx: Ctx, tag: str | None, as_json: bool, secrets_stdin: bool, force: bool) -> None:
    """Go back to TAG, or to the good release before the current one; gated like a deploy."""
    _read_secrets(ctx, secrets_stdin)
    transaction = _transaction(ctx)
    _finish(transaction.rollback(_tag(tag), force=force), transaction, as_json)


def _transaction(ctx: Ctx) -> Any:
    from .backends.select import backend_for
    from .engine import Engine
    from .state import ReleaseState
    from .transaction import Transaction

    root = ctx.load_root(preflight=True)
    backend = backend_for(root, Engine(timeout=root.settings.pull_timeout))
    return Transaction(root, backend, ReleaseState(root.state_dir))


def _backend(root: AgentRoot) -> Any:
    from .backends.select import backend_for
    from .engine import Engine

    return backend_for(root, Engine())


def _finish(outcome: Any, transaction: Any, as_json: bool) -> None:
    """Print the outcome; with --json, one object a caller (obsdeploy) can report from
    without asking `status` again."""
    from .common.redact import REDACTOR

    if as_json:
        r = outcome.record
        print_json({
            **{k: r.get(k) for k in ("action", "tag", "from_tag", "result", "duration_s", "backup")},
            "exit_code": int(outcome.exit_code),
            "current_tag": transaction.backend.running_tag(),
            "message": outcome.message,
        })
    else:
        click.echo(REDACTOR(outcome.message))
    sys.exit(int(outcome.exit_code))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON: current_tag, last_good_tag, healthy, "
                                                            "services, last_action, proxy, canary.")
@click.pass_obj
def status(ctx: Ctx, as_json: bool) -> None:
    """Current and last good release, container states, the last action."""
    from .engine import Engine
    from .views import status as read_status

    data = read_status(ctx.load_root(validate=False), Engine())
    if as_json:
        print_json(data)
        return
    la = data["last_action"]
    click.echo(f"current:   {data['current_tag'] or '-'}  ({'healthy' if data['healthy'] else 'NOT healthy'})")
    click.echo(f"last good: {data['last_good_tag'] or '-'}")
    for s in data["services"]:
        click.echo(f"  {s['name']:<16} {s['state']:<10} {s['health'] or '-':<10} {s['image']}")
    if la:
        click.echo(f"last action: {la['action']} {la['tag']} -> {la['result']} at {la['finished_at'] or '-'}")
    running_canary = data.get("canary")
    if running_canary is not None:
        click.echo(f"canary:    {running_canary['tag']} at {running_canary['weight']} % (step "
                   f"{running_canary['step']}, since {running_canary['since']}), the rest to "
                   f"{running_canary['stable']}")
        for m in running_canary.get("measurements") or []:
            click.echo(f"  {m.get('check')}: {m.get('verdict')} {m.get('detail')}")
    if data["maintenance"]["on"]:
        click.echo(f"maintenance: on since {data['maintenance']['since']}: {data['maintenance']['message']}")
    proxy = data["proxy"]
    if proxy is not None:
        click.echo("proxy:     " + (f"cannot be read: {proxy['error']}" if "error" in proxy else
                                    f"{proxy['service']} -> {', '.join(proxy['upstreams']) or '-'} "
                                    f"(serving {', '.join(proxy['serving']) or 'no running release'})"))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help='Print {"ok": bool, "problems": [...]}.')
@click.option("--tag", default=None, help="Check the compose file with this IMAGE_TAG "
                                          "(default: the last good tag, else v0.0.0).")
@click.pass_obj
def check(ctx: Ctx, as_json: bool, tag: str | None) -> None:
    """Preflight only: exit 0, or 10 with every problem listed."""
    from .common.errors import PreflightError
    from .common.redact import REDACTOR
    from .preflight import run_preflight
    from .state import ReleaseState

    try:
        root = ctx.load_root(preflight=True, create=False)
    except PreflightError as exc:
        problems = exc.problems
        notes: list[str] = []
    else:
        probe_tag = _tag(tag) or ReleaseState(root.state_dir).last_good_tag() or "v0.0.0"
        report = run_preflight(root, _backend(root), probe_tag, accessory_changes=True)
        problems, notes = report.problems, report.notes
    if as_json:
        print_json({"ok": not problems, "problems": [p.as_dict() for p in problems],
                    "notes": [REDACTOR(n) for n in notes]})
    else:
        for n in notes:
            click.echo(f"note: {n}")
        for p in problems:
            click.echo(f"problem [{p.code}]: {p.as_dict()['message']}")
        click.echo("ok" if not problems else f"{len(problems)} problem(s)")
    sys.exit(int(ExitCode.PREFLIGHT if problems else ExitCode.OK))


@cli.command()
@click.option("--compose", "compose_file", default=None, metavar="FILE",
              help="The compose file, relative to the root (default: the first of compose.yaml, "
                   "compose.yml, docker-compose.yaml, docker-compose.yml there).")
@click.option("--service", default=None, metavar="NAME",
              help="The release service health_url is taken from (default: the first whose "
                   "healthcheck and published port give one).")
@click.option("--force", is_flag=True, help="Replace an existing deployment_config.json.")
@click.pass_obj
def init(ctx: Ctx, compose_file: str | None, service: str | None, force: bool) -> None:
    """Write deployment_config.json for the compose project in the root, and change
    nothing else: the compose file, the variables it requires (secrets among them), and
    health_url when its release service's healthcheck and port give one."""
    from pathlib import Path

    from .common.errors import UsageError
    from .init_config import decide, find_compose_file, read_compose, refuse_overwrite, write_config
    from .root import _default_project

    root = Path(ctx.root_path).absolute()
    if not root.is_dir():
        raise UsageError(f"agent root {root} does not exist",
                         hint="pass --root DIR or set OBS_AGENT_ROOT: the project's directory")
    refuse_overwrite(root, force=force)
    file = find_compose_file(root, compose_file)
    written, resolved = read_compose(root, file, _default_project(root))
    choice = decide(file, root, written, resolved, service)
    path = write_config(root, choice, force=force)
    for line in choice.readme(path.name):
        click.echo(line)


@cli.command()
@click.argument("tag")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (jobs, steps, "
                                                      "accessories, changes, problems).")
@click.pass_obj
def plan(ctx: Ctx, tag: str, as_json: bool) -> None:
    """What `deploy TAG` would do, changing nothing: jobs, ordered steps with their strategy
    and replicas, accessories, and what differs from the running services. Exit 0, or 10."""
    from .common.errors import PreflightError
    from .preflight import run_preflight

    valid = _tag(tag)
    assert valid is not None
    root = ctx.load_root(preflight=True, create=False)
    report = run_preflight(root, _backend(root), valid, accessory_changes=True)
    if report.plan is None:
        raise PreflightError(report.problems)
    if as_json:
        print_json({**report.plan.as_dict(),
                    "problems": [p.as_dict() for p in report.problems], "ok": report.ok})
    else:
        for line in report.plan.describe():
            click.echo(line)
        for p in report.problems:
            if not p.code.startswith("plan."):
                click.echo(f"  problem   [{p.code}] {p.as_dict()['message']}")
    sys.exit(int(ExitCode.OK if report.ok else ExitCode.PREFLIGHT))


@cli.command()
@click.option("--json", "as_json", is_flag=True,
              help='Print {"ok", "tag", "reason", "checks": [{check, kind, verdict, detail, value}]}.')
@click.pass_obj
def verify(ctx: Ctx, as_json: bool) -> None:
    """The watch checks (agent.watch.checks) once against the running release, e.g. from
    cron: exit 0, or 22 with what failed. Changes nothing."""
    from .backends.compose import WatchedContainers, accessories_down
    from .engine import Engine, running_tag
    from .watch import Watch

    root = ctx.load_root()
    engine = Engine()
    release = [c for c in engine.project_containers(root.project) if c.role == "release"]
    tag = running_tag(release)
    running = [c for c in release if c.tag == tag and c.running] if tag else []
    result = Watch(root.settings.watch).verify(tag or "", running, WatchedContainers(engine, running))
    down = accessories_down(root, engine.project_containers(root.project))
    if down and result.ok:
        from dataclasses import replace

        result = replace(result, ok=False, reason="accessory " + ", ".join(
            f"{a['name']} is {a['state']}" for a in down))
    if as_json:
        print_json({"ok": result.ok, "tag": tag, "reason": result.reason,
                    "checks": [m.as_dict() for m in result.last]})
    else:
        from .common.redact import REDACTOR

        if not root.settings.watch.checks:
            click.echo("no checks configured (agent.watch.checks); only the containers were looked at")
        for m in result.last:
            click.echo(f"{m.verdict:<13} {m.check}: {REDACTOR(m.detail)}")
        click.echo(f"{tag or '-'}: " + ("ok" if result.ok else f"FAILED: {REDACTOR(result.reason or '')}"))
    sys.exit(int(ExitCode.OK if result.ok else ExitCode.VERIFY_FAILED))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Newest N records.")
@click.pass_obj
def history(ctx: Ctx, as_json: bool, limit: int | None) -> None:
    """Deploy and rollback attempts, newest first."""
    from .attempt import log_tail_lines
    from .views import history as read_history

    records = read_history(ctx.load_root(validate=False), limit)
    if as_json:
        print_json(records)
        return
    for r in records:
        failure = r.get("failure")
        reason = failure.get("reason") if isinstance(failure, dict) else None
        took = f"{r['duration_s']}s" if r["duration_s"] is not None else "-"
        click.echo(f"{r['started_at'] or '-':<25} {r['action'] or '-':<8} {r['from_tag'] or '-':>10} -> "
                   f"{r['tag'] or '-':<10} {r['result'] or '-':<12} {took}"
                   + (f"  ({reason})" if reason else ""))
        for line in log_tail_lines(failure):
            click.echo(f"{'':<25} {line}")
        canary_ = r.get("canary")
        if isinstance(canary_, dict):  # each step's share, how it ended and what it measured
            for st in canary_.get("steps") or []:
                measured = "; ".join(f"{m.get('check')} {m.get('verdict')} {m.get('detail')}"
                                     for m in st.get("measurements") or [])
                click.echo(f"{'':<25} canary {st.get('weight')} % {st.get('result')} after "
                           f"{st.get('seconds')}s ({(st.get('requests') or {}).get('canary', 0)} "
                           f"answers): {measured or '-'}")
        for h in r.get("hooks") or []:
            if isinstance(h, dict) and h.get("result") == "failed":
                click.echo(f"{'':<25} hook {h.get('hook')} failed: {h.get('action')}: {h.get('detail')}")
        watch = r.get("watch")
        if isinstance(watch, dict) and watch.get("result") == "failed":
            # Why the watch rolled it back: each measurement that did not pass.
            for m in watch.get("failures") or []:
                click.echo(f"{'':<25} watch {m.get('at', '-')}s: {m.get('check')} {m.get('verdict')}: "
                           f"{m.get('detail')}")


@cli.group()
def backup() -> None:
    """Backup archives in DIR/backups/."""


@backup.command("create")
@click.pass_obj
def backup_create(ctx: Ctx) -> None:
    """Archive backup_paths, the compose file, the config and the state now (under the
    deploy lock: never in the middle of a deploy's switch)."""
    from .backup import BackupArchive
    from .engine import Engine
    from .state import ReleaseState

    root = ctx.load_root()
    state = ReleaseState(root.state_dir)
    state.ensure()
    with state.lock.hold("backup create", "-"):
        path = BackupArchive(root, Engine() if root.settings.backup_volumes else None).create("manual")
    click.echo(path.name)


@backup.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def backup_list(ctx: Ctx, as_json: bool) -> None:
    """Archives, newest first, with the accessories' dumps each holds."""
    from .backup import BackupArchive, archived_dumps

    archives = [(p, p.stat().st_size, archived_dumps(p)) for p in BackupArchive(ctx.load_root()).archives()]
    if as_json:
        print_json([{"name": p.name, "bytes": size, "dumps": dumps} for p, size, dumps in archives])
        return
    for p, size, dumps in archives:
        held = "".join(f"; dump of {d['accessory']} ({d['bytes']} bytes)" for d in dumps)
        click.echo(f"{p.name}  {size} bytes{held}")


@backup.command("restore")
@click.argument("name")
@click.option("--stop", "stop_running", is_flag=True,
              help="Stop the running containers that write into what NAME restores (files under "
                   "DIR, volumes), restore, then start them again (without it, such a restore is "
                   "refused). Containers that write elsewhere, e.g. a database beside restored "
                   "config files, keep running.")
@click.option("--accessories", is_flag=True,
              help="Feed the archive's dumps to their accessories' obsdeploy.restore commands "
                   "instead (the release services that use them are stopped meanwhile).")
@click.option("--files", is_flag=True, help="With --accessories: restore the files and volumes too.")
@click.pass_obj
def backup_restore(ctx: Ctx, name: str, stop_running: bool, accessories: bool, files: bool) -> None:
    """Restore NAME over DIR (state/ excepted) and into the volumes it holds; what it
    replaces is backed up first. Takes the deploy lock, and refuses while a running container
    writes into what it restores (read-only mounts, compose secrets and configs do not count),
    unless --stop. With --accessories, the databases and caches dumped by a deploy get their
    data back instead."""
    from .backup import BackupArchive, restore_writers
    from .common.errors import UsageError
    from .engine import Engine
    from .state import ReleaseState

    if files and not accessories:
        raise UsageError("--files goes with --accessories (without it, only files are restored)",
                         hint=f"obs-agent backup restore {name} [--accessories [--files]]")
    root = ctx.load_root()
    state = ReleaseState(root.state_dir)
    state.ensure()
    with state.lock.hold("backup restore", name):
        engine = Engine()
        if accessories:
            _restore_dumps(root, engine, BackupArchive(root).path_of(name), state.last_good_tag())
            if not files:
                return
        archive = BackupArchive(root, engine)
        paths, volumes = archive.restores(name)
        depends = {name: set(svc.get("depends_on") or ()) for name, svc in root.compose_services().items()}
        writers = restore_writers(engine.project_containers(root.project), root.path, paths, volumes, depends)
        names = ", ".join(c.name for c in writers)
        if writers and not stop_running:
            tags = sorted({c.tag for c in writers if c.tag})
            raise UsageError(
                f"refusing to restore {name}: {names} ({', '.join(tags) or 'running'}) "
                "write into what it restores, and restoring would replace their files under them",
                hint=f"obs-agent backup restore {name} --stop (stops them, restores, starts "
                     "them again), or stop them yourself first")
        stopped: list[Any] = []

        def stop_writers() -> None:
            if writers:
                click.echo(f"stopping {names} to restore {name}", err=True)
                engine.stop(writers)
                stopped.extend(writers)

        try:
            safety = archive.restore(name, before_writing=stop_writers)
        finally:
            if stopped:  # accessories first: the release services that use them start after
                engine.start([c for c in stopped if c.role == "accessory"])
                engine.start([c for c in stopped if c.role != "accessory"])
                click.echo(f"started {names} again", err=True)
    click.echo(f"restored {name}; what it replaced is in {safety.name}")


def _restore_dumps(root: AgentRoot, engine: Any, archive: Any, tag: str | None) -> None:
    from .backends.select import backend_for
    from .restore import restore_accessories

    backend = backend_for(root, engine)
    for r in restore_accessories(root, backend, engine, archive, backend.running_tag() or tag):
        stopped = f" ({', '.join(r.stopped)} stopped meanwhile)" if r.stopped else ""
        click.echo(f"restored {r.accessory} from {archive.name}: {r.bytes} bytes in {r.seconds:.2f}s{stopped}")


@cli.group()
def canary() -> None:
    """Act on the canary of the deploy that runs now (agent.canary), from another shell."""


def _canary_request(ctx: Ctx, action: str) -> None:
    from .canary import leave_request
    from .common.errors import UsageError
    from .state import ReleaseState

    root = ctx.load_root(validate=False, create=False)
    state = ReleaseState(root.state_dir)
    pending = state.pending()
    running = pending is not None and state.lock.is_held() and isinstance(pending.get("canary"), dict)
    if not running or pending is None or pending["canary"].get("result") != "running":
        raise UsageError("no canary is running here (no deploy holds the lock with agent.canary)",
                         hint="obs-agent status shows what runs")
    leave_request(root.state_dir, action)
    click.echo(f"asked the deploy of {pending.get('tag')} to {action} its canary "
               f"(at {pending['canary'].get('weight')} % now); it acts within "
               f"one interval of agent.canary")


@canary.command("promote")
@click.pass_obj
def canary_promote(ctx: Ctx) -> None:
    """Send 100 % to the canary as soon as the current step's checks pass."""
    _canary_request(ctx, "promote")


@canary.command("abort")
@click.pass_obj
def canary_abort(ctx: Ctx) -> None:
    """Send 100 % back to the release that served now, and stop the canary (its deploy
    exits 20)."""
    _canary_request(ctx, "abort")


@cli.group()
def maintenance() -> None:
    """Every request through the proxy answered 503 with Retry-After and a message (JSON to
    clients that accept JSON); deploys and rollbacks keep it as it is."""


@maintenance.command("on")
@click.option("--message", default=None, help="What the page says (default: down for maintenance, "
                                              "try again later).")
@click.option("--retry-after", type=click.IntRange(min=0), default=None,
              help="Seconds the Retry-After header asks clients to wait (default 60).")
@click.pass_obj
def maintenance_on(ctx: Ctx, message: str | None, retry_after: int | None) -> None:
    """Turn maintenance on (again: with a new message). Under the deploy lock: exit 12 while
    a deploy runs."""
    from .maintenance import DEFAULT_MESSAGE, DEFAULT_RETRY_AFTER, Maintenance
    from .state import now_iso

    _switch_maintenance(ctx, Maintenance(message or DEFAULT_MESSAGE, now_iso(),
                                         DEFAULT_RETRY_AFTER if retry_after is None else retry_after))


@maintenance.command("off")
@click.pass_obj
def maintenance_off(ctx: Ctx) -> None:
    """Serve again. Under the deploy lock: exit 12 while a deploy runs."""
    _switch_maintenance(ctx, None)


def _switch_maintenance(ctx: Ctx, on: Any) -> None:
    from .common.errors import PreflightError
    from .plan import Problem
    from .proxy import ProxyError, switch_maintenance
    from .state import ReleaseState

    root = ctx.load_root()
    state = ReleaseState(root.state_dir)
    state.ensure()
    with state.lock.hold("maintenance " + ("on" if on else "off"), "-"):
        try:
            switch_maintenance(root, on)
        except ProxyError as exc:  # the proxy does not answer: nothing changed
            raise PreflightError([Problem(f"proxy.{root.settings.proxy.kind if root.settings.proxy else '-'}",
                                          str(exc))]) from None
    click.echo(f"maintenance on since {on.since}: {on.message}" if on else "maintenance off")


@maintenance.command("status")
@click.option("--json", "as_json", is_flag=True, help='Print {"on", "message", "since", "retry_after"}.')
@click.pass_obj
def maintenance_status(ctx: Ctx, as_json: bool) -> None:
    """Whether maintenance is on, since when, and its message."""
    from . import maintenance as m

    current = m.read(ctx.load_root(validate=False).state_dir)
    if as_json:
        print_json(m.shown(current))
    else:
        click.echo(f"maintenance on since {current.since}: {current.message}" if current else "maintenance off")


@cli.group()
def config() -> None:
    """The configuration file, DIR/deployment_config.json."""


@config.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of deployment_config.json, for editors and CI: save it, e.g. as
    deployment_config.schema.json, and name it in the file's "$schema" key. Reads no root."""
    from .reference import schema_json

    click.echo(schema_json(), nl=False)


def main() -> None:
    # The agent talks only to the Docker engine of its own server (an ssh:// DOCKER_HOST is
    # refused, see Engine.client). The docker SDK imports paramiko for that optional
    # transport, and paramiko imports invoke: about 0.15 s of every deploy, for nothing.
    # A None entry makes that optional import fail at once, as if paramiko were absent.
    sys.modules.setdefault("paramiko", None)  # type: ignore[arg-type]
    from .common import clikit

    try:
        clikit.run(cli)
    except SystemExit as leaving:
        # The interpreter's teardown of what a deploy imported (pydantic's schemas, the docker
        # SDK, requests) takes ~0.13 s after the work is done and recorded (median of 3
        # deploys here: 0.13-0.15 s between main's end and the process's). The agent keeps
        # nothing for that teardown (no atexit hooks, no threads by then: every file is
        # written and closed in its step), so it flushes its output and leaves at once.
        code = leaving.code if isinstance(leaving.code, int) else (0 if leaving.code is None else 1)
        if not isinstance(leaving.code, (int, type(None))):
            print(leaving.code, file=sys.stderr)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
