"""A fleet that goes back together (SPEC §21): three loopback sshds, each with its own agent
root and compose project, the real agent and engine. A release fails on one host only because
that host says it is different: its sessions carry `ROLE=edge`, and the fixture release
`crash-edge` crashes at start where ROLE is `edge` (healthy elsewhere)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import parts
from tests.integration.obsdeploy_fixtures import (  # noqa: F401 (fixtures)
    Server,
    clean_env,
    known_hosts_for,
    make_server,
    obsdeploy,
)

pytestmark = pytest.mark.integration

EDGE_CRASH = "v4.1.0-edgecrash"  # crashes where ROLE=edge
# Crashes where ROLE=qz7. That role reaches a host as a secret (`--secret ROLE`, into its
# .env), masked in every output: a value that appears in no tag or message.
LATE_ROLE = "qz7"
LATE_CRASH = "v4.0.0-rolecrash"


@pytest.fixture(scope="module")
def role_releases(docker_client, registry: parts.Registry,  # type: ignore[no-untyped-def]
                  images: dict[str, str]) -> None:
    for tag, mode in ((EDGE_CRASH, "crash-edge"), (LATE_CRASH, f"crash-{LATE_ROLE}")):
        parts.build_release(docker_client, registry.address, parts.REPOSITORY, tag, mode)


@dataclass
class Fleet:
    servers: list[Server]
    env: dict[str, str]

    def run(self, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        res = obsdeploy(*args, "--json", env={**self.env, **env})
        try:
            report = json.loads(res.stdout)
        except ValueError:
            raise AssertionError(res.stdout + res.stderr) from None
        return res, report

    def running(self) -> list[str | None]:
        """What each host serves, asked from the service itself."""
        return [(s.root.health() or {}).get("version") for s in self.servers]

    def history(self, i: int) -> list[tuple[str, str, str]]:
        """Host i's attempts, oldest first."""
        return [(r["action"], r["tag"], r["result"])
                for r in reversed(parts.history(self.servers[i].root))]

    def last(self, i: int) -> dict[str, Any]:
        return parts.history(self.servers[i].root)[0]  # newest first


def make_fleet(make: Callable[..., Server], tmp_path: Path, roles: list[str | None]) -> Fleet:
    servers = [make(f"vm{i}", {"ROLE": role} if role else None) for i, role in enumerate(roles, 1)]
    key = servers[0].sshd.client_key
    for s in servers:
        # The release sees its host's ROLE (the agent's environment reaches compose).
        compose = s.root.path / "docker-compose.server.yml"
        compose.write_text(compose.read_text().replace(
            "    environment:\n", "    environment:\n      ROLE: ${ROLE:-}\n", 1))
        # One client key for every "VM".
        (s.sshd.workdir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    env = clean_env(
        OBSDEPLOY_HOSTS=",".join(s.sshd.address for s in servers),
        OBSDEPLOY_IDENTITY=str(key),
        OBSDEPLOY_KNOWN_HOSTS=str(known_hosts_for(servers, tmp_path / "known_hosts")),
        OBSDEPLOY_AGENT_COMMAND=str(parts.VENV_BIN / "obs-agent"),
    )
    return Fleet(servers, env)


def table_rows(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "127.0.0.1" in ln and "│" in ln]


def test_a_release_failing_on_the_last_host_takes_every_host_back(
        make_server: Callable[..., Server], tmp_path: Path,  # noqa: F811
        role_releases: None) -> None:
    fleet = make_fleet(make_server, tmp_path, [None, None, "edge"])
    first, report = fleet.run("deploy", "v1.0.0", "--batch", "3")
    assert first.returncode == 0, first.stdout + first.stderr
    assert report["fleet_result"] == "success"
    assert [h["fleet_rollback"] for h in report["hosts"]] == [None] * 3

    res, report = fleet.run("deploy", EDGE_CRASH, "--batch", "1")
    assert res.returncode == 20, res.stdout + res.stderr
    assert (report["fleet_result"], report["exit_code"]) == ("rolled_back", 20)
    hosts = report["hosts"]
    assert [(h["from_tag"], h["to_tag"], h["result"], h["exit_code"]) for h in hosts] == [
        ("v1.0.0", EDGE_CRASH, "ok", 0), ("v1.0.0", EDGE_CRASH, "ok", 0),
        ("v1.0.0", "v1.0.0", "rolled_back", 20)]
    for h in hosts[:2]:
        back = h["fleet_rollback"]
        assert (back["to"], back["result"], back["exit_code"]) == ("v1.0.0", "ok", 0), h
    assert hosts[2]["fleet_rollback"] is None  # its agent rolled it back by itself
    assert fleet.running() == ["v1.0.0"] * 3
    for i in range(3):
        assert fleet.servers[i].root.last_good() == "v1.0.0"
    assert fleet.history(0)[-1] == ("rollback", "v1.0.0", "success")
    # Reverse order of batches: vm2 went back before vm1.
    stamps = [fleet.last(i)["started_at"] for i in (0, 1)]
    assert stamps[1] < stamps[0]
    # The table says it, host by host, and the fleet's outcome below it.
    rows = table_rows(res.stderr)
    assert len(rows) == 3 and all("-> v1.0.0 ok" in r for r in rows[:2]), res.stderr
    assert "fleet: rolled_back" in res.stderr

    # --on-failure stop: the hosts before the failed one are left on the new release.
    res, report = fleet.run("deploy", EDGE_CRASH, "--on-failure", "stop")
    assert res.returncode == 20, res.stdout + res.stderr
    assert report["fleet_result"] == "stopped"
    assert all(h["fleet_rollback"] is None for h in report["hosts"])
    assert fleet.running() == [EDGE_CRASH, EDGE_CRASH, "v1.0.0"]

    # A rollback run goes through the same batches and brings them back by hand.
    res, report = fleet.run("rollback", "v1.0.0")
    assert res.returncode == 0, res.stdout + res.stderr
    assert report["fleet_result"] == "success"
    assert fleet.running() == ["v1.0.0"] * 3


def test_a_host_that_cannot_be_brought_back_is_exit_21_and_named(
        make_server: Callable[..., Server], tmp_path: Path,  # noqa: F811
        role_releases: None) -> None:
    # vm2 and vm3 say what they are in their sessions' environment, which wins over .env.
    fleet = make_fleet(make_server, tmp_path, [None, "plain", "edge"])
    first, _ = fleet.run("deploy", LATE_CRASH, "--batch", "3")
    assert first.returncode == 0, first.stdout + first.stderr

    # The new release brings a secret the old one cannot run with: ROLE=qz7 reaches vm1 only
    # (the others' own ROLE wins), and a rollback that brings secrets re-creates the old
    # release with them: vm1 cannot go back.
    res, report = fleet.run("deploy", EDGE_CRASH, "--secret", "ROLE", ROLE=LATE_ROLE)
    assert res.returncode == 21, res.stdout + res.stderr
    assert report["fleet_result"] == "failed"
    assert report["fleet_message"] == f"not brought back: {fleet.servers[0].sshd.address}"
    vm1, vm2, vm3 = report["hosts"]
    assert vm1["fleet_rollback"]["to"] == LATE_CRASH and vm1["fleet_rollback"]["exit_code"] != 0
    assert (vm2["fleet_rollback"]["result"], vm2["fleet_rollback"]["exit_code"]) == ("ok", 0)
    assert vm3["result"] == "rolled_back"
    # The others are back; vm1 is not.
    running = fleet.running()
    assert running[1:] == [LATE_CRASH, LATE_CRASH] and running[0] != LATE_CRASH, running
    assert f"not brought back: {fleet.servers[0].sshd.address}" in res.stderr


def test_canary_hosts_go_first_and_alone_when_they_fail(
        make_server: Callable[..., Server], tmp_path: Path,  # noqa: F811
        role_releases: None) -> None:
    fleet = make_fleet(make_server, tmp_path, ["edge", None, None])
    first, _ = fleet.run("deploy", "v1.0.0", "--batch", "3")
    assert first.returncode == 0, first.stdout + first.stderr

    res, report = fleet.run("deploy", EDGE_CRASH, "--canary-hosts", "1", "--batch", "2")
    assert res.returncode == 20, res.stdout + res.stderr
    assert report["canary_hosts"] == 1
    assert [h["result"] for h in report["hosts"]] == ["rolled_back", "skipped", "skipped"]
    assert all(h["message"] == "not started: the canary hosts failed" for h in report["hosts"][1:])
    for i in (1, 2):  # never touched
        assert fleet.history(i) == [("deploy", "v1.0.0", "success")]
    assert fleet.running() == ["v1.0.0"] * 3

    # A good release: the canary first, the others after it succeeded, in one batch of two.
    res, report = fleet.run("deploy", "v1.1.0", "--canary-hosts", "1", "--batch", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert report["fleet_result"] == "success"
    canary = fleet.last(0)
    for i in (1, 2):
        assert fleet.last(i)["started_at"] >= canary["finished_at"]
    assert fleet.running() == ["v1.1.0"] * 3


def test_an_unreachable_host_in_the_middle_takes_the_first_back(
        make_server: Callable[..., Server], tmp_path: Path,  # noqa: F811
        role_releases: None) -> None:
    fleet = make_fleet(make_server, tmp_path, [None, None, None])
    first, _ = fleet.run("deploy", "v1.0.0", "--batch", "3")
    assert first.returncode == 0, first.stdout + first.stderr
    fleet.servers[1].sshd.stop()

    res, report = fleet.run("deploy", "v1.1.0")
    assert res.returncode == 30, res.stdout + res.stderr
    assert (report["fleet_result"], report["exit_code"]) == ("rolled_back", 30)
    assert [h["result"] for h in report["hosts"]] == ["ok", "ssh_error", "skipped"]
    assert report["hosts"][0]["fleet_rollback"]["to"] == "v1.0.0"
    assert report["hosts"][0]["fleet_rollback"]["result"] == "ok"
    assert fleet.running() == ["v1.0.0", "v1.0.0", "v1.0.0"]
    assert fleet.history(2) == [("deploy", "v1.0.0", "success")]
