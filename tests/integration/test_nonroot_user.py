"""Issue 15: the usual VM is reached as a non-root user in the docker group (`azureuser`,
`deploy`), without sudo. End to end over a real sshd as a real such user (useradd, removed
after): `obsdeploy setup` installs the agent under the user's home with `obs-agent` on the
PATH of its non-interactive SSH sessions; deploy, the automatic rollback, rollback and status
work; the agent root belongs to the user. Preflight says what to do (exit 10) when the user
cannot use the Docker socket or write the agent root."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import parts
from tests.conftest import missing
from tests.integration.obsdeploy_fixtures import obsdeploy
from tests.parts_ssh import SSHD, Sshd
from tests.parts_user import LinuxUser

# One user and one `obsdeploy setup` for the module, on one worker.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("nonroot-user")]


@dataclass
class UserServer:
    user: LinuxUser
    sshd: Sshd
    known_hosts: Path
    setup: dict  # type: ignore[type-arg]  # obsdeploy setup --json's host entry
    setup_log: str

    def ssh_args(self, root: Path) -> list[str]:
        return ["--host", self.sshd.address, "--identity", str(self.sshd.client_key),
                "--known-hosts", str(self.known_hosts), "--agent-root", str(root)]

    @property
    def agent(self) -> Path:
        return self.user.home / ".local" / "bin" / "obs-agent"

    def agent_root(self, name: str, registry: str) -> parts.AgentRootDir:
        root = parts.make_agent_root(self.user.home / name, registry,
                                     f"obs-u-{uuid.uuid4().hex[:8]}")
        self.user.chown(root.path)  # the operator copies the files in as the user
        return root


@pytest.fixture(scope="module")
def user_server(tmp_path_factory: pytest.TempPathFactory, images: dict[str, str],
                registry: parts.Registry) -> Iterator[UserServer]:
    if not SSHD.exists():
        missing("sshd (/usr/sbin/sshd, package openssh-server)")
    if os.getuid() != 0:
        missing("root, to create a test user with useradd")
    user = LinuxUser.create(groups=("docker",))
    work = tmp_path_factory.mktemp("user-server")
    sshd = Sshd(work / "sshd", user=user.name, keys_in_home=True)
    try:
        sshd.start()
        known_hosts = sshd.write_known_hosts(work / "known_hosts")
        res = obsdeploy("setup", "--host", sshd.address, "--identity", str(sshd.client_key),
                        "--known-hosts", str(known_hosts), "--agent-root",
                        str(user.home / "observer"), "--json", timeout=600)
        assert res.returncode == 0, res.stdout + res.stderr + sshd.log()[-2000:]
        [host] = json.loads(res.stdout)["hosts"]
        yield UserServer(user, sshd, known_hosts, host, res.stderr)
    finally:
        sshd.stop()
        user.remove()


def test_setup_deploy_rollback_status_as_a_non_root_user(
        user_server: UserServer, registry: parts.Registry) -> None:
    s, user = user_server, user_server.user
    # setup: no sudo, everything under the user's home, and it said which Python it found.
    data = user.home / ".local" / "share" / "obsdeploy" / "venv"
    assert s.setup["result"] == "ok", s.setup
    assert f"in {data}" in s.setup["message"] and str(s.agent) in s.setup["message"], s.setup
    assert "not first on the PATH" not in s.setup["message"], s.setup
    assert "the agent needs Python 3.10+" in s.setup_log and f"as {user.name} (uid" in s.setup_log
    assert s.agent.resolve() == (data / "bin" / "obs-agent").resolve()
    assert (user.home / "observer").stat().st_uid == user.pw.pw_uid  # created by setup

    root = s.agent_root("observer", registry.address)
    try:
        ssh = s.ssh_args(root.path)  # the default --agent-command: obs-agent, found on PATH
        for tag in ("v1.0.0", "v1.1.0"):
            res = obsdeploy("deploy", tag, *ssh, "--json")
            assert res.returncode == 0, res.stdout + res.stderr
            assert root.last_good() == tag
        res = obsdeploy("deploy", "v2.0.0-crash", *ssh, "--json")
        assert res.returncode == 20, res.stdout + res.stderr  # rolled back by itself
        [host] = json.loads(res.stdout)["hosts"]
        assert host["result"] == "rolled_back" and host["to_tag"] == "v1.1.0", host
        res = obsdeploy("rollback", *ssh, "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        assert root.last_good() == "v1.0.0"
        res = obsdeploy("status", *ssh, "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        [host] = json.loads(res.stdout)["hosts"]
        assert host["status"]["current_tag"] == "v1.0.0" and host["status"]["healthy"], host

        # Everything the agent wrote belongs to the user (it ran as the user, never as root).
        written = [root.path, *(root.path / "state").rglob("*"), root.path / "backups",
                   *(root.path / "backups").glob("*")]
        assert len(written) > 5
        foreign = [str(p) for p in written if p.lstat().st_uid != user.pw.pw_uid]
        assert not foreign, foreign
        actions = [r["action"] for r in parts.history(root)]
        assert actions == ["rollback", "deploy", "deploy", "deploy"], actions
        assert not root.secret_leaks()
    finally:
        root.down()


def test_preflight_says_to_join_the_docker_group_and_to_own_the_root(
        user_server: UserServer, registry: parts.Registry) -> None:
    s, user = user_server, user_server.user
    root = s.agent_root("observer-preflight", registry.address)
    env = {"OBS_AGENT_ROOT": str(root.path)}
    try:
        # Not in the docker group: the socket is refused, and preflight says what to do.
        for args in (["check", "--json"], ["deploy", "v1.0.0"]):
            res = user.run([str(s.agent), *args], groups=[], env=env)
            parts.no_traceback(res)
            assert res.returncode == 10, res.stdout + res.stderr
            assert f"add {user.name} to the docker group" in res.stdout + res.stderr
        assert not (root.path / "state" / "history.jsonl").exists()
        res = user.run([str(s.agent), "status"], groups=[], env=env)
        parts.no_traceback(res)
        assert res.returncode != 0 and f"add {user.name} to the docker group" in res.stderr, res.stderr

        # In the group, but the state was left to root (e.g. by an earlier root install).
        state = root.path / "state"
        state.mkdir(exist_ok=True)
        (state / "last_good_tag").write_text("v1.0.0\n")  # root's, mode 0644
        res = user.run([str(s.agent), "deploy", "v1.1.0"], env=env)
        parts.no_traceback(res)
        assert res.returncode == 10, res.stdout + res.stderr
        assert "root.not_writable" in res.stderr and str(state / "last_good_tag") in res.stderr
        assert f"sudo chown -R {user.name}: {root.path}" in res.stderr
        assert (state / "last_good_tag").read_text() == "v1.0.0\n"  # nothing changed

        # Once the user owns its root, the same user deploys.
        user.chown(root.path)
        res = user.run([str(s.agent), "deploy", "v1.1.0"], env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        assert root.last_good() == "v1.1.0"
    finally:
        root.down()


def test_setup_with_sudo_installs_system_wide_and_gives_the_root_to_the_user(
        user_server: UserServer, registry: parts.Registry) -> None:
    """--sudo: `sudo -n` or a clear refusal; a system venv and link (unique paths here, the
    machine is shared) and an agent root created for, and owned by, the deploy user."""
    s, user = user_server, user_server.user
    if not shutil.which("sudo"):
        missing("sudo")
    venv, link = Path("/opt") / user.name / "venv", Path("/usr/local/bin") / f"obs-agent-{user.name}"
    root_path = Path("/srv") / user.name / "observer"
    sudoers = Path("/etc/sudoers.d") / user.name
    ssh = ["--host", s.sshd.address, "--identity", str(s.sshd.client_key),
           "--known-hosts", str(s.known_hosts)]
    setup = ["setup", "--sudo", *ssh, "--venv", str(venv), "--link", str(link),
             "--agent-root", str(root_path), "--json"]
    root = None
    try:
        res = obsdeploy(*setup, timeout=600)  # no sudoers entry yet: refused, nothing done
        assert res.returncode == 10, res.stdout + res.stderr
        [host] = json.loads(res.stdout)["hosts"]
        assert f"{user.name} may not use sudo without a password" in host["message"], host
        assert not venv.exists() and not root_path.exists()

        sudoers.write_text(f"{user.name} ALL=(root) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        res = obsdeploy(*setup, timeout=600)
        assert res.returncode == 0, res.stdout + res.stderr
        assert venv.stat().st_uid == 0 and link.resolve() == (venv / "bin" / "obs-agent").resolve()
        assert root_path.stat().st_uid == user.pw.pw_uid  # made by sudo, for the user

        root = parts.make_agent_root(root_path, registry.address, f"obs-u-{uuid.uuid4().hex[:8]}")
        user.chown(root.path)
        res = obsdeploy("deploy", "v1.0.0", *ssh, "--agent-root", str(root_path),
                        "--agent-command", link.name, "--json")  # found on the sessions' PATH
        assert res.returncode == 0, res.stdout + res.stderr
        assert root.last_good() == "v1.0.0"
        assert (root_path / "state" / "last_good_tag").stat().st_uid == user.pw.pw_uid
    finally:
        sudoers.unlink(missing_ok=True)
        if root is not None:
            root.down()
        link.unlink(missing_ok=True)
        shutil.rmtree(Path("/opt") / user.name, ignore_errors=True)
        shutil.rmtree(Path("/srv") / user.name, ignore_errors=True)
