"""`obsdeploy setup`: install or upgrade the agent on a server in one command.

A wheel of this project is built locally (or given with --wheel), copied over SFTP, and
pip-installed into a venv on the server (created when missing); `obs-agent` is then linked
into a directory on the server's PATH. Re-running upgrades in place. The remote commands are
built here with `shlex.join` and run by `SshSession`.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from pydantic import BaseModel

from server_agent.errors import SSHError, UsageError
from server_agent.runner import run

from .remote import HostResult, HostSpec, SshOptions, SshSession

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class InstallPlan(BaseModel):
    venv: str = "/opt/obsdeploy/venv"
    python: str = "python3"
    link: str | None = "/usr/local/bin/obs-agent"
    pip_args: list[str] = []

    def commands(self, remote_wheel: str) -> list[str]:
        venv_python = f"{self.venv}/bin/python"
        cmds = [
            # Create the venv only when it is missing: an upgrade keeps it.
            f"test -x {shlex.quote(venv_python)} || "
            + shlex.join([self.python, "-m", "venv", self.venv]),
            shlex.join([venv_python, "-m", "pip", "install", "--quiet", "--upgrade",
                        "--disable-pip-version-check",
                        *self.pip_args, remote_wheel]),
        ]
        if self.link:
            cmds.append(shlex.join(["ln", "-sfn", f"{self.venv}/bin/obs-agent", self.link]))
        cmds.append(shlex.join([f"{self.venv}/bin/obs-agent", "--help"]) + " >/dev/null")
        return cmds

    def version_command(self) -> str:
        return shlex.join([f"{self.venv}/bin/python", "-c",
                           "import importlib.metadata as m; print(m.version('obsdeploy'))"])


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


def install_on_host(host: HostSpec, wheel: Path, plan: InstallPlan, opts: SshOptions,
                    out: IO[str], err: IO[str]) -> HostResult:
    started = time.monotonic()
    try:
        with SshSession(host, opts) as s:
            code, tmp = s.run("mktemp -d")
            if code != 0:
                return HostResult(host=host.label, result="failed", exit_code=code,
                                  message="mktemp -d failed on the server")
            remote_wheel = f"{tmp.strip()}/{wheel.name}"
            s.put(str(wheel), remote_wheel)
            try:
                for cmd in plan.commands(remote_wheel):
                    code, _ = s.run(cmd, out=out, err=err)
                    if code != 0:
                        return HostResult(host=host.label, result="failed", exit_code=code,
                                          message=f"failed: {cmd}",
                                          seconds=round(time.monotonic() - started, 2))
                code, version = s.run(plan.version_command())
            finally:
                s.run(shlex.join(["rm", "-rf", tmp.strip()]))
    except SSHError as exc:
        return HostResult(host=host.label, result="ssh_error", exit_code=int(exc.exit_code),
                          message=str(exc), seconds=round(time.monotonic() - started, 2))
    return HostResult(host=host.label, result="ok", exit_code=0, to_tag=None,
                      message=f"obsdeploy {version.strip()} in {plan.venv}",
                      seconds=round(time.monotonic() - started, 2))


def setup_hosts(hosts: list[HostSpec], plan: InstallPlan, opts: SshOptions, *,
                wheel: Path | None, out: IO[str], err: IO[str]) -> list[HostResult]:
    opts.check()
    with tempfile.TemporaryDirectory(prefix="obsdeploy-wheel-") as tmp:
        if wheel is None:
            wheel = build_wheel(Path(tmp))
        elif not wheel.is_file():
            raise UsageError(f"--wheel {wheel}: no such file")
        return [install_on_host(h, wheel, plan, opts, out, err) for h in hosts]
