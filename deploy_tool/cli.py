"""obsdeploy: click commands only (SPEC §10). Parse, call the core, print text or --json, exit.

Heavy imports (docker, fabric, pydantic, rich) happen inside the commands so `--help` stays
instant. Options do not read the environment themselves: `deploy_tool.config` reads
`OBSDEPLOY_*` (env > obsdeploy.toml > default) and an option given on the command line wins
over both. `main()` is the one place that turns errors into SPEC §9 exit codes.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from server_agent.common.clikit import print_json
from server_agent.common.errors import exit_codes_help

if TYPE_CHECKING:
    from .config import ObsdeployConfig
    from .remote import RolloutReport


class Ctx:
    def __init__(self, config: str | None, verbose: bool) -> None:
        self.config_path = config
        self.verbose = verbose

    def config(self) -> ObsdeployConfig:
        from .config import load_config

        return load_config(self.config_path)


def _console(stderr: bool) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # A wide table when not on a terminal (CI logs, pipes): rows stay one line each.
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, width=width)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=exit_codes_help())
@click.version_option(package_name="obsdeploy", prog_name="obsdeploy")
@click.option("--config", "config", envvar="OBSDEPLOY_CONFIG", type=click.Path(dir_okay=False),
              help="obsdeploy.toml to read (env OBSDEPLOY_CONFIG; default ./obsdeploy.toml "
                   "when present).")
@click.option("-v", "--verbose", is_flag=True, envvar="OBSDEPLOY_VERBOSE",
              help="Log every command run (env OBSDEPLOY_VERBOSE).")
@click.pass_context
def cli(ctx: click.Context, config: str | None, verbose: bool) -> None:
    """obsdeploy: release the observer image and deploy it to servers over SSH.

    The README (sections "Using it" and "How it works") describes every command.
    """
    from server_agent.common.clikit import setup_logging

    setup_logging(verbose, logging.WARNING)
    # Progress of a build or a push: a line every few seconds when stderr is not a terminal.
    logging.getLogger("obs.progress").setLevel(logging.INFO)
    ctx.obj = Ctx(config, verbose)


# --- release ---------------------------------------------------------------------------------
@cli.command()
@click.argument("version")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--allow-dirty", is_flag=True, help="Release even with uncommitted changes.")
@click.option("--parallel", type=click.IntRange(min=1), default=None, metavar="N",
              help="Build at most N images at once (default: as many as this machine has cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan and its outcome as JSON.")
@click.pass_obj
def release(ctx: Ctx, version: str, dry_run: bool, allow_dirty: bool, parallel: int | None,
            as_json: bool) -> None:
    """Build each image as IMAGE:VERSION with OCI labels, push it, tag VERSION in git and push
    the tag.

    Run it in the app's repository (where obsdeploy.toml is). The images are `image`, the
    `[[images]]` list, or the services of `images_from` (a compose file) that have a build:
    section; they are built side by side, and one whose build context is unchanged since the
    previous release is that release's image tagged again (no build, no upload). The git tag
    is pushed only when every image is in the registry. Registry credentials come from
    GHCR_USERNAME and GHCR_TOKEN (else Docker's own credential store); the token is never put
    on a command line or shown. Re-running after a failure finishes the job and skips what is
    done; a version already released from another commit is refused.
    """
    from server_agent.common.progress import configure as configure_progress
    from server_agent.common.redact import REDACTOR
    from server_agent.common.versions import validate_version

    from .git import Git
    from .release import ReleaseActions, execute, plan_release

    validate_version(version)
    cfg = ctx.config()
    configure_progress(every=cfg.progress_seconds)
    err = _console(stderr=True)

    def progress(line: str) -> None:
        err.print(f"  {REDACTOR(line)}", markup=False, style="dim")

    actions = ReleaseActions(cfg, Git(cfg.base_dir), progress=progress)
    plan = plan_release(cfg, version, actions, allow_dirty=allow_dirty, dry_run=dry_run,
                        parallel=parallel)
    out = _console(stderr=as_json)
    what = plan.reference or f"{len(plan.images)} images (at most {plan.parallel} built at once)"
    out.print(f"release {plan.version}: {what} from {plan.revision[:12]}"
              + (" (dry run: nothing will change)" if dry_run else ""), markup=False)
    for step in plan.steps:
        mark = {"already-done": "done already", "todo": "to do"}.get(step.state, step.state)
        out.print(f"  [{mark:>12}] {step.name:<9} {step.description}", markup=False)
    if not dry_run:
        if not plan.todo:
            out.print("nothing to do: this release is complete")
        for step in execute(plan, actions, on_step=lambda s: err.print(
                f"-> {s.name}: {s.description}", markup=False)):
            out.print(f"  [{'done':>12}] {step.name:<9} {step.image or ''}".rstrip(), markup=False)
    width = max(len(i.name) for i in plan.images)
    for img in plan.images:
        out.print(f"  {img.name:<{width}}  {img.reference}  {img.digest or '-'}  "
                  f"{img.outcome(done=not dry_run)}", markup=False)
    if not dry_run:
        out.print(f"released {plan.reference or f'{len(plan.images)} images'} and tag "
                  f"{plan.version} on {plan.git_remote}", markup=False)
    if as_json:
        print_json(plan.model_dump())


# --- deploy / rollback / status ----------------------------------------------------------------
def _ssh_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--host", "hosts", multiple=True, metavar="[USER@]HOST[:PORT]",
                     help="Server to act on; repeatable (env OBSDEPLOY_HOSTS, comma-separated)."),
        click.option("--user", default=None, help="SSH user when a host names none "
                                                  "(env OBSDEPLOY_USER)."),
        click.option("--port", type=click.IntRange(1, 65535), default=None,
                     help="SSH port when a host names none (env OBSDEPLOY_PORT; default 22)."),
        click.option("--identity", type=click.Path(dir_okay=False), default=None,
                     help="SSH private key file (env OBSDEPLOY_IDENTITY)."),
        click.option("--known-hosts", type=click.Path(dir_okay=False), default=None,
                     help="known_hosts file to verify host keys against "
                          "(env OBSDEPLOY_KNOWN_HOSTS; default ~/.ssh/known_hosts). "
                          "Unknown or changed keys are refused (exit 30)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _agent_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--agent-root", default=None,
                     help="Agent root on the servers (env OBSDEPLOY_AGENT_ROOT; default: the "
                          "agent's own, its OBS_AGENT_ROOT or /opt/observer)."),
        click.option("--agent-command", default=None,
                     help="Agent program on the servers (env OBSDEPLOY_AGENT_COMMAND; "
                          "default obs-agent)."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print the per-host report as JSON (agent output goes to stderr)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return _ssh_options(f)


def _remote(action: str, ctx: Ctx, version: str | None, batch: int | None, as_json: bool,
            secrets: tuple[str, ...] = (), canary_hosts: int | None = None,
            on_failure: str | None = None, force: bool = False, **o: Any) -> None:
    from .remote import AgentCall, SshOptions, parse_hosts, read_secrets, rollout

    cfg = ctx.config().deploy
    hosts = parse_hosts(list(o["hosts"]) or cfg.hosts, user=o["user"] or cfg.user,
                        port=o["port"] or cfg.port)
    call = AgentCall(agent_command=o["agent_command"] or cfg.agent_command,
                     agent_root=o["agent_root"] or cfg.agent_root,
                     secrets=read_secrets(_secret_names(secrets, cfg.secrets)), force=force)
    opts = SshOptions(identity=o["identity"] or cfg.identity,
                      known_hosts=o["known_hosts"] or cfg.known_hosts,
                      connect_timeout=cfg.connect_timeout)
    stream = sys.stderr if as_json else sys.stdout
    report = rollout(hosts, action, version, call, opts,  # type: ignore[arg-type]
                     batch=batch or cfg.batch, out=stream, err=sys.stderr,
                     canary_hosts=cfg.canary_hosts if canary_hosts is None else canary_hosts,
                     on_failure=on_failure or cfg.on_failure)  # type: ignore[arg-type]
    _report(report, as_json)


def _report(report: RolloutReport, as_json: bool) -> None:
    from .remote import render_report

    render_report(report, _console(stderr=as_json))
    if as_json:
        print_json(report.model_dump())
    sys.exit(report.exit_code)


def _batch_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--batch", type=click.IntRange(min=1), default=None,
                        help="Hosts per batch, run in parallel; the first batch with a failure "
                             "stops the rollout (env OBSDEPLOY_BATCH; default 1).")(f)


def _canary_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--canary-hosts", type=click.IntRange(min=0), default=None, metavar="N",
                        help="Deploy the first N hosts first, as one batch (each with its "
                             "watch), and the others only when every one of them succeeded "
                             "(env OBSDEPLOY_CANARY_HOSTS; default 0).")(f)


def _on_failure_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--on-failure", type=click.Choice(["rollback-fleet", "stop"]),
                        default=None,
                        help="When a host fails (or cannot be reached), no further host starts; "
                             "rollback-fleet also sends every host this run switched back to the "
                             "release it ran before, last batch first, so the fleet runs one "
                             "release again; stop leaves them (env OBSDEPLOY_ON_FAILURE; "
                             "default rollback-fleet).")(f)


def _secret_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--secret", "secrets", multiple=True, metavar="NAME",
        help="Send the value of NAME, from this process's environment, to every host's .env "
             "(over the SSH session's standard input, never a command line); repeatable "
             "(env OBSDEPLOY_SECRETS, comma-separated; [deploy].secrets). A name not set is "
             "exit 2 before any host is touched.")(f)


def _secret_names(given: tuple[str, ...], configured: list[str]) -> list[str]:
    from server_agent.common.errors import UsageError

    from .config import SECRET_NAME

    for name in given:
        if not SECRET_NAME.fullmatch(name):
            raise UsageError(f"--secret {name!r} is not a variable name (letters, digits, _)")
    return list(given) or configured


def _version(value: str | None) -> str | None:
    from server_agent.common.versions import validate_version

    return None if value is None else validate_version(value)


@cli.command()
@click.argument("version")
@_batch_option
@_canary_option
@_on_failure_option
@_secret_option
@_agent_options
@click.pass_obj
def deploy(ctx: Ctx, version: str, batch: int | None, as_json: bool, **o: Any) -> None:
    """Deploy VERSION on every host: the agent pulls, gates and rolls back by itself.

    When a host fails, the hosts this run already switched go back to the release they ran
    before (unless --on-failure stop). Exit code: the first failed host's, or 21 when a host
    could not be brought back (the codes are listed in `obsdeploy --help`).
    """
    _remote("deploy", ctx, _version(version), batch, as_json, **o)


@cli.command()
@click.argument("version", required=False)
@_batch_option
@_canary_option
@_secret_option
@click.option("--force", is_flag=True,
              help="Go back even to a release older than one whose deploy ran a job labelled "
                   "obsdeploy.reversible \"false\" (each agent refuses it otherwise, exit 2).")
@_agent_options
@click.pass_obj
def rollback(ctx: Ctx, version: str | None, batch: int | None, as_json: bool, **o: Any) -> None:
    """Roll every host back to VERSION, or to the good release before its current one.

    The hosts go in the same batches as a deploy (canary hosts first); a host that fails
    stops the run and is reported, the hosts already rolled back stay so."""
    _remote("rollback", ctx, _version(version), batch, as_json, **o)


@cli.command()
@_agent_options
@click.pass_obj
def status(ctx: Ctx, as_json: bool, **o: Any) -> None:
    """Each host's current and last good release, health and last action."""
    _remote("status", ctx, None, None, as_json, **o)


# --- setup -------------------------------------------------------------------------------------
@cli.command()
@_ssh_options
@click.option("--sudo", is_flag=True,
              help="Install system-wide with `sudo -n` (/opt/obsdeploy/venv, "
                   "/usr/local/bin/obs-agent) and create the agent root owned by the user. "
                   "Without it, a non-root user gets an install of its own, no sudo.")
@click.option("--venv", default=None,
              help="Virtualenv on the server to install the agent into (created when missing; "
                   "default /opt/obsdeploy/venv as root or with --sudo, else "
                   "~/.local/share/obsdeploy/venv).")
@click.option("--python", "python", default="python3", show_default=True,
              help="Python (>= 3.10) on the server that creates the venv.")
@click.option("--link", default=None,
              help="Symlink to the agent, on the PATH of SSH sessions; '' for none (default "
                   "/usr/local/bin/obs-agent as root or with --sudo, else ~/.local/bin/obs-agent, "
                   "which setup puts on the PATH of the user's non-interactive sessions).")
@click.option("--agent-root", default=None,
              help="Agent root to create when missing and check writable by the SSH user "
                   "(env OBSDEPLOY_AGENT_ROOT; default: none is touched).")
@click.option("--wheel", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Install this wheel instead of building one from this source tree.")
@click.option("--pip-arg", "pip_args", multiple=True,
              help="Extra argument for pip install on the server; repeatable "
                   "(e.g. --pip-arg=--index-url=URL).")
@click.option("--json", "as_json", is_flag=True, help="Print the per-host report as JSON.")
@click.pass_obj
def setup(ctx: Ctx, sudo: bool, venv: str | None, python: str, link: str | None,
          agent_root: str | None, wheel: str | None, pip_args: tuple[str, ...], as_json: bool,
          **o: Any) -> None:
    """Install or upgrade obs-agent on the hosts (a wheel of this project, pip over SSH).

    Says which Python it found on each server; the agent needs 3.10 or newer. Exit 10 when a
    server cannot take it as it is (Python too old, no venv module, sudo refused, agent root
    not writable), with what to do."""
    from pathlib import Path

    from .install import InstallOptions, setup_hosts
    from .remote import RolloutReport, SshOptions, parse_hosts

    cfg = ctx.config().deploy
    hosts = parse_hosts(list(o["hosts"]) or cfg.hosts, user=o["user"] or cfg.user,
                        port=o["port"] or cfg.port)
    opts = SshOptions(identity=o["identity"] or cfg.identity,
                      known_hosts=o["known_hosts"] or cfg.known_hosts,
                      connect_timeout=cfg.connect_timeout)
    options = InstallOptions(venv=venv, python=python, link=link, pip_args=list(pip_args),
                             sudo=sudo, agent_root=agent_root or cfg.agent_root)
    results = setup_hosts(hosts, options, opts, wheel=Path(wheel) if wheel else None,
                          out=sys.stderr if as_json else sys.stdout, err=sys.stderr)
    code = next((r.exit_code for r in results if r.exit_code not in (0, None)), 0) or 0
    _report(RolloutReport(action="setup", version=None, batch=1, exit_code=code,
                          hosts=results), as_json)


def main() -> None:
    from server_agent.common import clikit

    # The distribution installs on 3.10 for the agent's sake (Ubuntu 22.04 servers); obsdeploy
    # itself reads obsdeploy.toml with tomllib (3.11+), so say that instead of an ImportError.
    if sys.version_info < (3, 11):  # noqa: UP036 (requires-python is 3.10 for the agent)
        click.echo(f"error: obsdeploy needs Python 3.11 or newer; this is {sys.version.split()[0]} "
                   f"({sys.executable}). obs-agent, the server agent, runs on 3.10.", err=True)
        sys.exit(2)
    clikit.run(cli)
