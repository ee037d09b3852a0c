"""The click layer: instant --help, env vars named in help, exit codes of bad input."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

OBSDEPLOY = Path(sys.executable).parent / "obsdeploy"


def run(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    e = {k: v for k, v in os.environ.items() if not k.startswith(("OBSDEPLOY_", "GHCR_"))}
    e.update(env)
    return subprocess.run([str(OBSDEPLOY), *args], capture_output=True, text=True, cwd=cwd, env=e,
                          timeout=60)


def test_help_is_instant_and_imports_nothing_heavy() -> None:
    code = ("import sys; from deploy_tool import cli; "
            "print(sorted(m for m in ('docker', 'fabric', 'paramiko', 'rich', 'pydantic') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    t = time.monotonic()
    res = run("--help")
    assert res.returncode == 0 and time.monotonic() - t < 3


@pytest.mark.parametrize("command", ["deploy", "rollback", "status", "setup"])
def test_every_remote_option_names_its_env_var(command: str) -> None:
    res = run(command, "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for env in ("OBSDEPLOY_HOSTS", "OBSDEPLOY_USER", "OBSDEPLOY_PORT", "OBSDEPLOY_IDENTITY",
                "OBSDEPLOY_KNOWN_HOSTS"):
        assert env in text, env
    if command != "setup":
        for env in ("OBSDEPLOY_AGENT_ROOT", "OBSDEPLOY_AGENT_COMMAND"):
            assert env in text, env


@pytest.mark.parametrize(
    "args",
    [
        ("deploy", "1.2.3", "--host", "vm1"),
        ("deploy", "v1.2", "--host", "vm1"),
        ("rollback", "latest", "--host", "vm1"),
        ("release", "v1.2.3+build"),
        ("deploy", "v1.2.3", "--host", "vm1;reboot"),
        ("deploy", "v1.2.3"),
        ("deploy", "v1.2.3", "--host", "vm1", "--batch", "0"),
        ("deploy", "v1.2.3", "--host", "vm1", "--canary-hosts", "-1"),
        ("deploy", "v1.2.3", "--host", "vm1", "--on-failure", "ignore"),
        ("rollback", "--host", "vm1", "--on-failure", "stop"),  # a rollback run undoes nothing
        ("status", "--host", "vm1", "--known-hosts", "/nonexistent/known_hosts"),
    ],
)
def test_bad_input_is_exit_2(args: tuple[str, ...], tmp_path: Path) -> None:
    res = run(*args, cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr


def test_release_without_an_image_is_exit_2(tmp_path: Path) -> None:
    res = run("release", "v1.2.3", cwd=tmp_path)
    assert res.returncode == 2
    assert "no image configured" in res.stderr


def test_unreachable_host_is_exit_30(tmp_path: Path) -> None:
    from tests.parts import free_port

    kh = tmp_path / "known_hosts"
    kh.write_text("")
    res = run("status", "--host", f"127.0.0.1:{free_port()}", "--known-hosts", str(kh),
              cwd=tmp_path)
    assert res.returncode == 30, res.stdout + res.stderr
    assert "cannot connect" in res.stderr
