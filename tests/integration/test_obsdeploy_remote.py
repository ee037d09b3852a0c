"""obsdeploy deploy / rollback / status over a real sshd on loopback, running the real agent
against the real engine and registry (SPEC §10, §13)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import parts
from tests.integration.obsdeploy_fixtures import (  # noqa: F401 (fixtures)
    Server,
    clean_env,
    known_hosts_for,
    make_server,
    obsdeploy,
)
from tests.parts_ssh import keygen

pytestmark = pytest.mark.integration


def no_secret(res: subprocess.CompletedProcess[str]) -> None:
    for value in parts.SECRETS.values():
        assert value not in res.stdout and value not in res.stderr


def test_deploy_over_ssh_returns_the_agents_exit_code(
    make_server: Callable[[str], Server]  # noqa: F811
) -> None:
    server = make_server("vm1")
    res = obsdeploy("deploy", "v1.0.0", *server.ssh_args())
    assert res.returncode == 0, res.stdout + res.stderr
    # The agent's own output, streamed with the host's name.
    assert f"{server.sshd.address} | " in res.stdout + res.stderr
    assert server.root.last_good() == "v1.0.0"
    no_secret(res)

    bad = obsdeploy("deploy", "v2.0.0-error", *server.ssh_args(), "--json")
    assert bad.returncode == 20, bad.stdout + bad.stderr
    report = json.loads(bad.stdout)
    assert report["exit_code"] == 20
    [host] = report["hosts"]
    assert host["result"] == "rolled_back" and host["exit_code"] == 20
    assert host["from_tag"] == "v1.0.0" and host["to_tag"] == "v1.0.0"
    assert "rolled back to v1.0.0" in host["message"]
    assert server.root.last_good() == "v1.0.0"
    no_secret(bad)

    # The agent stops before it can answer (the tag was never released): nothing changed,
    # and the report still says what runs.
    missing = obsdeploy("deploy", "v9.9.9", *server.ssh_args(), "--json")
    assert missing.returncode == 11, missing.stdout + missing.stderr
    [host] = json.loads(missing.stdout)["hosts"]
    assert host["result"] == "image_failed" and host["exit_code"] == 11
    assert host["from_tag"] == "v1.0.0" and host["to_tag"] == "v1.0.0"


# testinfra's paramiko backend does not read known_hosts; obsdeploy itself is tested above.
@pytest.mark.filterwarnings("ignore:Unknown ssh-ed25519 host key")
def test_server_state_after_deploy_with_testinfra(
    make_server: Callable[[str], Server]  # noqa: F811
) -> None:
    import testinfra

    server = make_server("vm1")
    assert obsdeploy("deploy", "v1.0.0", *server.ssh_args()).returncode == 0
    assert obsdeploy("deploy", "v1.1.0", *server.ssh_args()).returncode == 0

    host = testinfra.get_host(f"paramiko://root@127.0.0.1:{server.sshd.port}",
                              ssh_identity_file=str(server.sshd.client_key))
    root = str(server.root.path)
    assert host.file(f"{root}/state/last_good_tag").content_string.strip() == "v1.1.0"
    [container] = host.docker.get_containers(
        label=f"com.docker.compose.project={server.root.project}", status="running")
    assert container.is_running
    assert container.inspect()["Config"]["Image"].endswith(":v1.1.0")
    backups = host.file(f"{root}/backups")
    assert backups.is_directory
    names = backups.listdir()
    assert len(names) >= 2
    for name in names:
        assert host.file(f"{root}/backups/{name}").mode == 0o600
    assert host.file(f"{root}/.env").mode == 0o600

    # rollback without a version: the good release before the current one.
    rb = obsdeploy("rollback", *server.ssh_args(), "--json")
    assert rb.returncode == 0, rb.stdout + rb.stderr
    assert json.loads(rb.stdout)["hosts"][0]["to_tag"] == "v1.0.0"
    st = obsdeploy("status", *server.ssh_args(), "--json")
    assert st.returncode == 0, st.stderr
    status = json.loads(st.stdout)["hosts"][0]["status"]
    assert status["current_tag"] == "v1.0.0" and status["healthy"] is True
    assert status["last_action"]["action"] == "rollback"


def test_unknown_or_changed_host_key_is_refused(
    make_server: Callable[[str], Server], tmp_path: Path  # noqa: F811
) -> None:
    server = make_server("vm1")
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    args = server.ssh_args()
    args[args.index("--known-hosts") + 1] = str(empty)
    res = obsdeploy("deploy", "v1.0.0", *args)
    assert res.returncode == 30, res.stdout + res.stderr
    assert "unknown host key" in res.stderr
    assert not (server.root.path / "state" / "history.jsonl").exists()

    # A known_hosts entry with another key for this host:port: a changed key.
    keygen(tmp_path / "other", "other")
    other = (tmp_path / "other.pub").read_text().split()
    changed = tmp_path / "changed_known_hosts"
    changed.write_text(f"[127.0.0.1]:{server.sshd.port} {other[0]} {other[1]}\n")
    args[args.index("--known-hosts") + 1] = str(changed)
    res = obsdeploy("status", *args)
    assert res.returncode == 30, res.stdout + res.stderr
    assert "CHANGED" in res.stderr
    # And the real key file was not touched (nothing is ever auto-added).
    assert changed.read_text().count("\n") == 1
    assert empty.read_text() == ""


def test_three_hosts_batch_1_stop_after_the_first_failed_host(
    make_server: Callable[[str], Server], tmp_path: Path  # noqa: F811
) -> None:
    servers = [make_server(f"vm{i}") for i in (1, 2, 3)]
    kh = known_hosts_for(servers, tmp_path / "known_hosts")
    key = servers[0].sshd.client_key
    for s in servers[1:]:  # one client key for all three "VMs"
        (s.sshd.workdir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    env = clean_env(
        OBSDEPLOY_HOSTS=",".join(s.sshd.address for s in servers),
        OBSDEPLOY_IDENTITY=str(key), OBSDEPLOY_KNOWN_HOSTS=str(kh),
        OBSDEPLOY_AGENT_COMMAND=str(parts.VENV_BIN / "obs-agent"),
    )
    first = obsdeploy("deploy", "v1.0.0", "--batch", "3", "--json", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert [h["result"] for h in json.loads(first.stdout)["hosts"]] == ["ok"] * 3

    res = obsdeploy("deploy", "v2.0.0-error", "--batch", "1", "--json", env=env)
    assert res.returncode == 20, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert [h["result"] for h in report["hosts"]] == ["rolled_back", "skipped", "skipped"]
    assert report["hosts"][0]["exit_code"] == 20
    assert all(h["exit_code"] is None for h in report["hosts"][1:])
    assert all("batch 1 failed" in h["message"] for h in report["hosts"][1:])
    for s in servers[1:]:  # untouched: still v1.0.0, one deploy in the history
        assert s.root.last_good() == "v1.0.0"
        assert [r["tag"] for r in parts.history(s.root)] == ["v1.0.0"]
        assert s.root.health()["version"] == "v1.0.0"

    # The table (on stderr with --json) says so, host by host.
    lines = [ln for ln in res.stderr.splitlines() if "127.0.0.1" in ln and "│" in ln]
    assert len(lines) == 3
    assert "rolled_back" in lines[0] and "skipped" in lines[1] and "skipped" in lines[2]

    st = obsdeploy("status", "--json", env=env)
    assert st.returncode == 0, st.stderr
    assert [h["status"]["current_tag"] for h in json.loads(st.stdout)["hosts"]] == ["v1.0.0"] * 3


def test_a_proxyjump_bastions_host_key_is_verified_too(
    make_server: Callable[[str], Server], tmp_path: Path  # noqa: F811
) -> None:
    """~/.ssh/config reaches the VM through a ProxyJump bastion. A bastion whose key is not
    in known_hosts is refused (exit 30, naming it), like the VM itself; with both keys
    known, the deploy goes through the bastion."""
    from tests.parts_ssh import Sshd

    server = make_server("vm1")
    bastion = Sshd(tmp_path / "bastion").start()
    try:
        (bastion.workdir / "authorized_keys").write_text(
            server.sshd.client_key.with_suffix(".pub").read_text())
        home = tmp_path / "home"
        (home / ".ssh").mkdir(parents=True)
        # The VM as "localhost": fabric drops a ProxyJump whose host equals the target's.
        (home / ".ssh" / "config").write_text(
            f"Host vm1\n  HostName localhost\n  Port {server.sshd.port}\n  User root\n"
            f"  ProxyJump root@127.0.0.1:{bastion.port}\n"
            f"Host *\n  IdentityFile {server.sshd.client_key}\n")
        env = clean_env(HOME=str(home))
        args = server.ssh_args()
        args[args.index("--host") + 1] = "vm1"
        vm_only = tmp_path / "vm_known_hosts"
        vm_only.write_text(server.sshd.known_hosts_line.replace("[127.0.0.1]", "[localhost]"))
        args[args.index("--known-hosts") + 1] = str(vm_only)
        res = obsdeploy("deploy", "v1.0.0", *args, env=env)
        assert res.returncode == 30, res.stdout + res.stderr
        assert f"unknown host key of [127.0.0.1]:{bastion.port} (a ProxyJump bastion)" in res.stderr
        assert not (server.root.path / "state" / "history.jsonl").exists()
        assert "Accepted publickey" not in bastion.log()  # refused before authenticating

        both = tmp_path / "both_known_hosts"
        both.write_text(vm_only.read_text() + bastion.known_hosts_line)
        args[args.index("--known-hosts") + 1] = str(both)
        res = obsdeploy("deploy", "v1.0.0", *args, env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        assert server.root.last_good() == "v1.0.0"
        assert "Accepted publickey" in bastion.log()  # it did go through the bastion
    finally:
        bastion.stop()
