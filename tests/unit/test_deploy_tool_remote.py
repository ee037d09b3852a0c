"""Host specs, agent command lines, batches and the rollout's stop rule (no SSH needed)."""

from __future__ import annotations

import io
import re
import shlex

import pytest

from deploy_tool.git import source_url
from deploy_tool.install import (
    SYSTEM_LINK,
    SYSTEM_VENV,
    InstallOptions,
    InstallPlan,
    ServerFacts,
    SetupProblem,
    plan_install,
    python_notes,
)
from deploy_tool.remote import (
    AgentCall,
    HostResult,
    HostSpec,
    SshOptions,
    batches,
    parse_hosts,
    rollout,
)
from server_agent.errors import UsageError


@pytest.mark.parametrize(
    ("text", "host", "user", "port"),
    [
        ("vm1", "vm1", None, None),
        ("deploy@vm1.example.com", "vm1.example.com", "deploy", None),
        ("root@127.0.0.1:2222", "127.0.0.1", "root", 2222),
        ("[::1]:2200", "::1", None, 2200),
        ("host_1:22", "host_1", None, 22),
    ],
)
def test_host_spec_parse(text: str, host: str, user: str | None, port: int | None) -> None:
    h = HostSpec.parse(text)
    assert (h.host, h.user, h.port) == (host, user, port)


def test_host_spec_defaults_apply_only_when_the_host_names_none() -> None:
    assert HostSpec.parse("vm1", user="ops", port=2200) == HostSpec(host="vm1", user="ops", port=2200)
    assert HostSpec.parse("me@vm1:22", user="ops", port=2200) == HostSpec(host="vm1", user="me", port=22)


@pytest.mark.parametrize(
    "text", ["vm1;reboot", "$(id)", "a b", "vm1:0", "vm1:70000", "-oProxyCommand=x", "u;x@vm1",
             "", "vm1:port"],
)
def test_host_spec_refuses_what_is_not_a_host(text: str) -> None:
    with pytest.raises(UsageError):
        HostSpec.parse(text)


def test_parse_hosts_needs_one_and_refuses_duplicates() -> None:
    with pytest.raises(UsageError, match="no host"):
        parse_hosts([], user=None, port=None)
    with pytest.raises(UsageError, match="twice"):
        parse_hosts(["vm1", "root@vm1"], user=None, port=None)


def test_agent_command_is_quoted_never_pasted() -> None:
    call = AgentCall(agent_command="sudo -n /opt/obs venv/bin/obs-agent",
                     agent_root="/srv/my root/$(reboot)")
    cmd = call.command("deploy", "v1.2.3")
    assert shlex.split(cmd) == ["sudo", "-n", "/opt/obs", "venv/bin/obs-agent", "--root",
                                "/srv/my root/$(reboot)", "deploy", "v1.2.3"]
    assert "'/srv/my root/$(reboot)'" in cmd
    assert AgentCall().command("status", "--json") == "obs-agent status --json"


def test_install_plan_commands_are_quoted() -> None:
    plan = InstallPlan(venv="/opt/my venv", link="/usr/local/bin/obs-agent",
                       pip_args=["--index-url=https://x/simple"])
    cmds = plan.commands("/tmp/d/obsdeploy-0.1.0-py3-none-any.whl")
    assert cmds[0] == "test -x '/opt/my venv/bin/python' || python3 -m venv '/opt/my venv'"
    assert shlex.split(cmds[1])[-2:] == ["--index-url=https://x/simple",
                                         "/tmp/d/obsdeploy-0.1.0-py3-none-any.whl"]
    assert cmds[2] == ("mkdir -p /usr/local/bin && "
                       "ln -sfn '/opt/my venv/bin/obs-agent' /usr/local/bin/obs-agent")


def facts(**over: object) -> ServerFacts:
    base: dict[str, object] = {
        "uid": 1001, "user": "deploy", "group": "deploy", "home": "/home/deploy",
        "shell": "/bin/bash", "data_home": "/home/deploy/.local/share",
        "path": "/usr/local/bin:/usr/bin:/bin", "python": "/usr/bin/python3",
        "version": [3, 10, 12], "venv": True, "tar_filters": True}
    return ServerFacts.model_validate({**base, **over})


def test_a_non_root_user_installs_under_its_home_without_sudo() -> None:
    plan = plan_install(facts(), InstallOptions(agent_root="/home/deploy/observer"))
    assert plan.venv == "/home/deploy/.local/share/obsdeploy/venv"
    assert plan.link == "/home/deploy/.local/bin/obs-agent"
    assert plan.bashrc == "/home/deploy/.bashrc" and not plan.sudo
    cmds = plan.commands("/tmp/x/w.whl")
    assert not any("sudo" in c for c in cmds)
    assert plan.root_command() == "test -d /home/deploy/observer || mkdir -p /home/deploy/observer"
    # No bashrc edit when the link's directory is already on the sessions' PATH.
    assert plan_install(facts(path="/home/deploy/.local/bin:/usr/bin"), InstallOptions()).bashrc is None


def test_root_and_sudo_install_system_wide() -> None:
    as_root = plan_install(facts(uid=0, user="root", home="/root"), InstallOptions())
    assert (as_root.venv, as_root.link, as_root.sudo) == (SYSTEM_VENV, SYSTEM_LINK, False)
    plan = plan_install(facts(), InstallOptions(sudo=True, agent_root="/opt/observer"))
    assert (plan.venv, plan.link, plan.sudo, plan.bashrc) == (SYSTEM_VENV, SYSTEM_LINK, True, None)
    cmds = plan.commands("/tmp/x/w.whl")
    assert cmds[0] == f"test -x {SYSTEM_VENV}/bin/python || sudo -n python3 -m venv {SYSTEM_VENV}"
    assert shlex.split(cmds[1])[:3] == ["sudo", "-n", f"{SYSTEM_VENV}/bin/python"]
    assert (plan.root_command()
            == "test -d /opt/observer || sudo -n install -d -o deploy -g deploy /opt/observer")


@pytest.mark.parametrize(("over", "says"), [
    ({"version": [3, 8, 10]}, "found Python 3.8.10 (/usr/bin/python3) as 'python3'; the agent "
                              "needs Python 3.10 or newer"),
    ({"venv": False}, "apt-get install python3.10-venv"),
])
def test_setup_says_which_python_it_found_and_what_it_needs(over: dict[str, object],
                                                            says: str) -> None:
    with pytest.raises(SetupProblem, match=re.escape(says)):
        plan_install(facts(**over), InstallOptions())


def test_python_without_tar_filters_is_a_note() -> None:
    assert python_notes(facts()) == []
    [note] = python_notes(facts(version=[3, 11, 2], tar_filters=False))
    assert "backup restore" in note


def test_a_link_off_the_path_is_refused_for_a_user_install() -> None:
    with pytest.raises(SetupProblem, match="not on the PATH"):
        plan_install(facts(), InstallOptions(link="/home/deploy/tools/obs-agent"))


def test_batches() -> None:
    hosts = [HostSpec(host=f"vm{i}") for i in range(5)]
    assert [len(b) for b in batches(hosts, 2)] == [2, 2, 1]
    assert [len(b) for b in batches(hosts, 10)] == [5]


def fake_runner(codes: dict[str, int], calls: list[str]):  # type: ignore[no-untyped-def]
    def run(host, action, version, call, opts, out, err):  # type: ignore[no-untyped-def]
        calls.append(host.label)
        code = codes.get(host.label, 0)
        return HostResult(host=host.label, result="ok" if code == 0 else "failed", exit_code=code)
    return run


def test_rollout_stops_after_the_first_failed_batch() -> None:
    hosts = [HostSpec(host=f"vm{i}") for i in range(1, 6)]
    calls: list[str] = []
    report = rollout(hosts, "deploy", "v1.2.3", AgentCall(), SshOptions(), batch=2,
                     out=io.StringIO(), err=io.StringIO(),
                     runner=fake_runner({"vm2": 20, "vm1": 0}, calls))
    assert sorted(calls) == ["vm1", "vm2"]
    assert [h.result for h in report.hosts] == ["ok", "failed", "skipped", "skipped", "skipped"]
    assert report.exit_code == 20
    assert report.hosts[2].message == "not started: batch 1 failed"


def test_rollout_exit_code_is_the_first_failed_hosts() -> None:
    hosts = [HostSpec(host=f"vm{i}") for i in range(1, 4)]
    report = rollout(hosts, "deploy", "v1.2.3", AgentCall(), SshOptions(), batch=3,
                     out=io.StringIO(), err=io.StringIO(),
                     runner=fake_runner({"vm2": 30, "vm3": 20}, []))
    assert report.exit_code == 30
    ok = rollout(hosts, "deploy", "v1.2.3", AgentCall(), SshOptions(), batch=1,
                 out=io.StringIO(), err=io.StringIO(), runner=fake_runner({}, []))
    assert ok.exit_code == 0 and [h.result for h in ok.hosts] == ["ok"] * 3


def test_status_asks_every_host_even_after_a_failure() -> None:
    hosts = [HostSpec(host=f"vm{i}") for i in range(1, 4)]
    calls: list[str] = []
    report = rollout(hosts, "status", None, AgentCall(), SshOptions(), batch=1,
                     out=io.StringIO(), err=io.StringIO(), runner=fake_runner({"vm1": 2}, calls))
    assert sorted(calls) == ["vm1", "vm2", "vm3"] and report.exit_code == 2


def test_missing_key_files_are_usage_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match="--known-hosts"):
        SshOptions(known_hosts=str(tmp_path / "nope")).check()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("git@github.com:tawbury/observer.git", "https://github.com/tawbury/observer"),
        ("https://x-access-token:SECRET@github.com/tawbury/observer.git",
         "https://github.com/tawbury/observer"),
        ("/srv/git/observer.git", "/srv/git/observer.git"),
        (None, ""),
    ],
)
def test_source_url(url: str | None, expected: str) -> None:
    assert source_url(url) == expected
