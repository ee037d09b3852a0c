"""`obsdeploy setup`: install or upgrade the agent on a server in one command.

A wheel of this project is built locally (or given with --wheel), copied over SFTP, and
pip-installed into a venv on the server (created when missing); `obs-agent` is then linked
into a directory on the server's PATH. Re-running upgrades in place.

Where it goes depends on who logs in (see the README's "Non-root deploy users, Python 3.10
servers, progress"): as root, or with `--sudo`, a system install (/opt/obsdeploy/venv,
/usr/local/bin/obs-agent); as any other user, an install of that user's own without sudo
(a venv under its data directory, the link in ~/.local/bin, which is put on the PATH of its
non-interactive SSH sessions). First a probe asks the server who and what it is
(`ServerFacts`); `plan_install` turns the facts and the options into an `InstallPlan` (pure);
`install_on_host` runs it. Remote commands are built with `shlex.join` and run by `SshSession`.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ValidationError

from server_agent.common.errors import ExitCode, SSHError, UsageError
from server_agent.common.runner import run

from .remote import HostResult, HostSpec, SshOptions, SshSession, _PrefixWriter

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The agent's floor (server_agent is checked against it by vermin and mypy, scripts/test).
AGENT_PYTHON = (3, 10)
SYSTEM_VENV = "/opt/obsdeploy/venv"
SYSTEM_LINK = "/usr/local/bin/obs-agent"
DEFAULT_AGENT_ROOT = "/opt/observer"

# Runs on the server's Python, whatever its version, to say what it is: old syntax only
# (no f-strings), so a Python too old for the agent can still answer with its version.
PROBE = """\
import json, os, pwd, grp, sys
try:
    import tarfile
    filters = hasattr(tarfile, "data_filter")
except Exception:
    filters = False
try:
    import venv, ensurepip
    has_venv = True
except ImportError:
    has_venv = False
pw = pwd.getpwuid(os.getuid())
home = pw.pw_dir
print(json.dumps({
    "uid": os.getuid(), "user": pw.pw_name, "group": grp.getgrgid(os.getgid()).gr_name,
    "home": home, "shell": pw.pw_shell,
    "data_home": os.environ.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share"),
    "path": os.environ.get("PATH", ""),
    "python": sys.executable, "version": list(sys.version_info[:3]),
    "venv": has_venv, "tar_filters": filters,
}))
"""

# Put first in ~/.bashrc: bash reads it for commands run over SSH, but Debian's and Ubuntu's
# ~/.bashrc return at once when the shell is not interactive, so a line at its end is never
# reached by `ssh host obs-agent ...`.
PATH_MARKER = "# obsdeploy: obs-agent on the PATH of non-interactive SSH sessions"
PATH_BLOCK = (PATH_MARKER + "\n"
              'case ":$PATH:" in *":$HOME/.local/bin:"*) ;; *) PATH="$HOME/.local/bin:$PATH"; '
              "export PATH ;; esac\n")
PREPEND = """\
import os, sys
path, block, marker = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    with open(path) as f:
        text = f.read()
except FileNotFoundError:
    text = ""
if marker not in text:
    with open(path + ".obsdeploy-tmp", "w") as f:
        f.write(block + text)
    if os.path.exists(path):
        os.chmod(path + ".obsdeploy-tmp", os.stat(path).st_mode & 0o7777)
    os.replace(path + ".obsdeploy-tmp", path)
"""


class ServerFacts(BaseModel):
    """What the probe found on the server."""

    uid: int
    user: str
    group: str
    home: str
    shell: str
    data_home: str
    path: str
    python: str
    version: tuple[int, int, int]
    venv: bool
    tar_filters: bool

    @property
    def python_text(self) -> str:
        return f"Python {'.'.join(map(str, self.version))} ({self.python})"


class SetupProblem(Exception):
    """The server cannot take the agent as it is; the message says what to do (exit 10)."""


def python_notes(facts: ServerFacts) -> list[str]:
    """What works less well with this Python, without stopping the install."""
    if facts.tar_filters:
        return []
    return [f"{facts.python_text} lacks tarfile's extraction filters (3.10.12+, 3.11.4+, 3.12+; "
            "Debian 12's 3.11.2 has none): `obs-agent backup restore` refuses to run with it; "
            "deploys, rollbacks and their backups work"]


def python_problem(facts: ServerFacts, python: str) -> str | None:
    """Why the server's Python cannot run the agent, or None."""
    found = f"found {facts.python_text} as {python!r}"
    if tuple(facts.version[:2]) < AGENT_PYTHON:
        return (f"{found}; the agent needs Python {'.'.join(map(str, AGENT_PYTHON))} or newer: "
                "install one (e.g. apt-get install python3.11) and pass --python python3.11")
    if not facts.venv:
        v = f"{facts.version[0]}.{facts.version[1]}"
        return (f"{found}, without its venv module: install it (apt-get install python{v}-venv), "
                "then run setup again")
    return None


class InstallOptions(BaseModel):
    """What the operator asked for; None: the default for who logs in."""

    venv: str | None = None
    link: str | None = None  # "" for no link
    python: str = "python3"
    pip_args: list[str] = []
    sudo: bool = False
    agent_root: str | None = None


class InstallPlan(BaseModel):
    venv: str = SYSTEM_VENV
    python: str = "python3"
    link: str | None = SYSTEM_LINK
    pip_args: list[str] = []
    sudo: bool = False  # prefix the commands that write outside the user's own files
    owner: tuple[str, str] | None = None  # (user, group) a new agent root belongs to (sudo)
    agent_root: str | None = None  # created when missing, must be writable by the user
    bashrc: str | None = None  # ~/.bashrc to put the link's directory on the PATH with

    def _as_root(self, argv: list[str]) -> str:
        return shlex.join(["sudo", "-n", *argv] if self.sudo else argv)

    def commands(self, remote_wheel: str) -> list[str]:
        venv_python = f"{self.venv}/bin/python"
        cmds = [
            # Create the venv only when it is missing: an upgrade keeps it.
            f"test -x {shlex.quote(venv_python)} || "
            + self._as_root([self.python, "-m", "venv", self.venv]),
            self._as_root([venv_python, "-m", "pip", "install", "--quiet", "--upgrade",
                           "--disable-pip-version-check", *self.pip_args, remote_wheel]),
        ]
        if self.link:
            cmds.append(self._as_root(["mkdir", "-p", str(Path(self.link).parent)]) + " && "
                        + self._as_root(["ln", "-sfn", f"{self.venv}/bin/obs-agent", self.link]))
        if self.bashrc:
            cmds.append(shlex.join([self.python, "-c", PREPEND, self.bashrc, PATH_BLOCK,
                                    PATH_MARKER]))
        cmds.append(shlex.join([f"{self.venv}/bin/obs-agent", "--help"]) + " >/dev/null")
        return cmds

    def root_command(self) -> str | None:
        """Create the agent root when it is missing: with sudo, owned by the deploy user."""
        if not self.agent_root:
            return None
        create = (["install", "-d", "-o", self.owner[0], "-g", self.owner[1], self.agent_root]
                  if self.sudo and self.owner else ["mkdir", "-p", self.agent_root])
        return f"test -d {shlex.quote(self.agent_root)} || " + self._as_root(create)

    def version_command(self) -> str:
        return shlex.join([f"{self.venv}/bin/python", "-c",
                           "import importlib.metadata as m; print(m.version('obsdeploy'))"])


def plan_install(facts: ServerFacts, opts: InstallOptions) -> InstallPlan:
    """The install for this server and user. Root and --sudo: the system paths; any other
    user: paths of its own, no sudo, and its non-interactive PATH made to hold the link."""
    problem = python_problem(facts, opts.python)
    if problem:
        raise SetupProblem(problem)
    system = facts.uid == 0 or opts.sudo
    if system:
        venv, default_link = opts.venv or SYSTEM_VENV, SYSTEM_LINK
    else:
        venv = opts.venv or f"{facts.data_home}/obsdeploy/venv"
        default_link = f"{facts.home}/.local/bin/obs-agent"
    link = default_link if opts.link is None else (opts.link or None)
    bashrc = None
    if link and not system and str(Path(link).parent) not in facts.path.split(":"):
        if Path(link).parent != Path(facts.home, ".local", "bin"):
            raise SetupProblem(
                f"--link {link}: its directory is not on the PATH of {facts.user}'s SSH sessions "
                f"({facts.path}); use {facts.home}/.local/bin/obs-agent (setup puts that directory "
                "on the PATH) or a directory already on it")
        if Path(facts.shell).name == "bash":
            bashrc = f"{facts.home}/.bashrc"
    return InstallPlan(venv=venv, python=opts.python, link=link, pip_args=opts.pip_args,
                       sudo=opts.sudo and facts.uid != 0, owner=(facts.user, facts.group),
                       agent_root=opts.agent_root, bashrc=bashrc)


def build_wheel(out_dir: Path) -> Path:
    """`pip wheel` of this project's source tree (an editable or source install)."""
    if not (PROJECT_ROOT / "pyproject.toml").is_file():
        raise UsageError("obsdeploy is not installed from its source tree; cannot build a wheel",
                         hint="pass --wheel FILE (an obsdeploy wheel)")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
         str(out_dir), str(PROJECT_ROOT)], timeout=600)
    wheels = sorted(out_dir.glob("obsdeploy-*.whl"))
    if not wheels:
        raise UsageError(f"pip wheel produced no obsdeploy wheel in {out_dir}")
    return wheels[-1]


def probe(s: SshSession, python: str) -> ServerFacts:
    code, out = s.run(shlex.join([python, "-c", PROBE]))
    if code == 127:
        raise SetupProblem(f"no {python!r} on the server's PATH: the agent needs Python "
                           f"{'.'.join(map(str, AGENT_PYTHON))} or newer (install python3, or "
                           "pass --python PATH)")
    try:
        return ServerFacts.model_validate_json(out.strip().splitlines()[-1] if out.strip() else "")
    except (ValidationError, ValueError):
        raise SetupProblem(f"{python!r} on the server did not answer the probe (exit {code}); "
                           "is it a Python interpreter? pass --python PATH") from None


def _failed(host: HostSpec, code: int, message: str, started: float) -> HostResult:
    return HostResult(host=host.label, result="failed", exit_code=code, message=message,
                      seconds=round(time.monotonic() - started, 2))


def _prepare_root(s: SshSession, plan: InstallPlan, facts: ServerFacts,
                  err: IO[str]) -> str | None:
    """Create the agent root when missing, then check the user can write it; before anything is
    installed. Returns what is wrong, or None."""
    command = plan.root_command()
    if command is None or plan.agent_root is None:
        return None
    root, user = plan.agent_root, facts.user
    if s.run(command, err=err)[0] != 0:
        return (f"cannot create the agent root {root} as {user}: run setup with --sudo, have it "
                f"made (sudo install -d -o {user} -g {facts.group} {root}), or pick an "
                f"--agent-root under {facts.home}")
    if s.run(shlex.join(["test", "-w", root]))[0] != 0:
        return (f"the agent root {root} is not writable by {user}, who runs the agent: make "
                f"{user} its owner (sudo chown -R {user}: {root})")
    return None


def install_on_host(host: HostSpec, wheel: Path, options: InstallOptions, opts: SshOptions,
                    out: IO[str], err: IO[str]) -> HostResult:
    started = time.monotonic()
    say = _PrefixWriter(host.label, out)
    try:
        with SshSession(host, opts) as s:
            try:
                facts = probe(s, options.python)
                say.write(f"{facts.python_text} as {facts.user} (uid {facts.uid}); the agent "
                          f"needs Python {'.'.join(map(str, AGENT_PYTHON))}+\n")
                plan = plan_install(facts, options)
            except SetupProblem as exc:
                return _failed(host, int(ExitCode.PREFLIGHT), str(exc), started)
            if plan.sudo and s.run("sudo -n true")[0] != 0:
                return _failed(host, int(ExitCode.PREFLIGHT),
                               f"--sudo: {facts.user} may not use sudo without a password here; "
                               "allow it (sudoers NOPASSWD), or run setup without --sudo to "
                               f"install under {facts.home}", started)
            problem = _prepare_root(s, plan, facts, err)
            if problem:
                return _failed(host, int(ExitCode.PREFLIGHT), problem, started)
            code, tmp = s.run("mktemp -d")
            if code != 0:
                return _failed(host, code, "mktemp -d failed on the server", started)
            remote_wheel = f"{tmp.strip()}/{wheel.name}"
            s.put(str(wheel), remote_wheel)
            try:
                for cmd in plan.commands(remote_wheel):
                    code, _ = s.run(cmd, out=out, err=err)
                    if code != 0:
                        return _failed(host, code, f"failed: {cmd}", started)
                code, version = s.run(plan.version_command())
            finally:
                s.run(shlex.join(["rm", "-rf", tmp.strip()]))
            notes = python_notes(facts)
            if plan.link:
                # A new session, as `obsdeploy deploy` will open: does it find the agent?
                code, found = s.run("command -v obs-agent")
                if code != 0 or found.strip() != plan.link:
                    notes.append(f"obs-agent is not first on the PATH of {facts.user}'s "
                                 f"non-interactive SSH sessions (found {found.strip() or 'none'}); "
                                 f"deploy with --agent-command {plan.link}")
    except SSHError as exc:
        return HostResult(host=host.label, result="ssh_error", exit_code=int(exc.exit_code),
                          message=str(exc), seconds=round(time.monotonic() - started, 2))
    where = f"; obs-agent: {plan.link}" if plan.link else ""
    return HostResult(host=host.label, result="ok", exit_code=0, to_tag=None,
                      message=f"obsdeploy {version.strip()} in {plan.venv} "
                              f"({facts.python_text}){where}"
                              + "".join(f"; {n}" for n in notes),
                      seconds=round(time.monotonic() - started, 2))


def setup_hosts(hosts: list[HostSpec], options: InstallOptions, opts: SshOptions, *,
                wheel: Path | None, out: IO[str], err: IO[str]) -> list[HostResult]:
    opts.check()
    with tempfile.TemporaryDirectory(prefix="obsdeploy-wheel-") as tmp:
        if wheel is None:
            wheel = build_wheel(Path(tmp))
        elif not wheel.is_file():
            raise UsageError(f"--wheel {wheel}: no such file")
        return [install_on_host(h, wheel, options, opts, out, err) for h in hosts]

