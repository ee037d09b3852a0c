"""Host specs, agent command lines, batches and the rollout's stop rule (no SSH needed)."""

from __future__ import annotations

import io
import json
import re
import shlex

import pytest

from deploy_tool import remote
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
    result_name,
    rollout,
    run_on_host,
)
from server_agent.common.errors import NOTHING_CHANGED, ExitCode, SSHError, UsageError


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
                     out=io.StringIO(), err=io.StringIO(), on_failure="stop",
                     runner=fake_runner({"vm2": 20, "vm1": 0}, calls))
    assert sorted(calls) == ["vm1", "vm2"]
    assert [h.result for h in report.hosts] == ["ok", "failed", "skipped", "skipped", "skipped"]
    assert report.exit_code == 20
    assert report.hosts[2].message == "not started: batch 1 failed"


def test_rollout_exit_code_is_the_first_failed_hosts() -> None:
    hosts = [HostSpec(host=f"vm{i}") for i in range(1, 4)]
    report = rollout(hosts, "deploy", "v1.2.3", AgentCall(), SshOptions(), batch=3,
                     out=io.StringIO(), err=io.StringIO(), on_failure="stop",
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


class FakeSession:
    """An SshSession that answers `deploy|rollback --json` with `code` (and, unless `answer`
    is None, that outcome as JSON) and `status --json` with the running `current` tag."""

    answer: dict[str, object] | None = None
    code = 0
    current = "v1.0.0"
    commands: list[str] = []

    def __init__(self, host: HostSpec, opts: SshOptions) -> None:
        pass

    def __enter__(self) -> FakeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def run(self, command: str, **kwargs: object) -> tuple[int, str]:
        self.commands.append(command)
        if shlex.split(command)[1] == "status":
            return 0, json.dumps({"current_tag": self.current})
        return self.code, json.dumps(self.answer) if self.answer is not None else "no json"


def on_host(monkeypatch: pytest.MonkeyPatch, code: int, answer: dict[str, object] | None,
            action: str = "deploy") -> HostResult:
    session = type("Session", (FakeSession,), {"code": code, "answer": answer, "commands": []})
    monkeypatch.setattr(remote, "SshSession", session)
    return run_on_host(HostSpec(host="vm1"), action, "v1.1.0", AgentCall(),  # type: ignore[arg-type]
                       SshOptions(), io.StringIO(), io.StringIO())


@pytest.mark.parametrize("json_answer", [True, False], ids=["agent-answered", "no-answer"])
def test_a_failed_job_is_reported_as_job_failed_with_nothing_switched(
        monkeypatch: pytest.MonkeyPatch, json_answer: bool) -> None:
    answer = {"from_tag": "v1.0.0", "current_tag": "v1.0.0", "exit_code": 13,
              "message": "job migrate exited 1; nothing running was switched"}
    host = on_host(monkeypatch, 13, answer if json_answer else None)
    assert (host.result, host.exit_code) == ("job_failed", 13)
    # Nothing running was switched: the release that ran before is the one running now.
    assert (host.from_tag, host.to_tag) == ("v1.0.0", "v1.0.0")
    if json_answer:
        assert host.message == answer["message"]


def test_a_failed_verify_is_reported_as_verify_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    host = on_host(monkeypatch, 22, None)
    assert (host.result, host.exit_code) == ("verify_failed", 22)


def test_a_rolled_back_deploy_does_not_claim_where_it_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    host = on_host(monkeypatch, 20, None)
    assert (host.result, host.from_tag, host.to_tag) == ("rolled_back", None, "v1.0.0")


def test_every_exit_code_has_its_own_result_name() -> None:
    names = {code: result_name(int(code)) for code in ExitCode}
    assert names[ExitCode.JOB_FAILED] == "job_failed"
    assert names[ExitCode.VERIFY_FAILED] == "verify_failed"
    assert len(set(names.values())) == len(ExitCode), names
    assert all(name == code.result_name for code, name in names.items())
    assert result_name(127) == "agent_not_found" and result_name(3) == "failed"


def test_nothing_changed_is_what_leaves_the_running_release_alone() -> None:
    assert {int(c) for c in NOTHING_CHANGED} == {2, 10, 11, 12, 13}


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


@pytest.mark.parametrize(("action", "force", "passed"), [
    ("rollback", True, True), ("rollback", False, False), ("deploy", True, False)])
def test_force_reaches_the_agent_on_a_rollback_only(monkeypatch: pytest.MonkeyPatch, action: str,
                                                   force: bool, passed: bool) -> None:
    session = type("Session", (FakeSession,), {"code": 0, "answer": {"from_tag": "v1.1.0",
                                                                      "current_tag": "v1.0.0"},
                                               "commands": []})
    monkeypatch.setattr(remote, "SshSession", session)
    run_on_host(HostSpec(host="vm1"), action, "v1.0.0", AgentCall(force=force),  # type: ignore[arg-type]
                SshOptions(), io.StringIO(), io.StringIO())
    agent_runs = [shlex.split(c) for c in session.commands if shlex.split(c)[1] != "status"]
    assert ("--force" in agent_runs[0]) is passed, agent_runs


class CountingSession(FakeSession):
    """A FakeSession that counts the connections opened; `drop` makes the next check of a
    kept session find its connection gone. Deploys answer from v1.0.0 to the version, with
    exit 20 on `failing`."""

    opened: list[str] = []
    failing = "vm3"

    def __init__(self, host: HostSpec, opts: SshOptions) -> None:
        self.host = host
        self.connected = True
        self.conn = self

    @property
    def is_connected(self) -> bool:
        return self.connected

    def __enter__(self) -> CountingSession:
        self.opened.append(self.host.label)
        return self

    def run(self, command: str, **kwargs: object) -> tuple[int, str]:
        argv = shlex.split(command)
        code = 20 if argv[1] == "deploy" and self.host.label == self.failing else 0
        to = argv[-1] if argv[1] == "deploy" and code == 0 else "v1.0.0"
        return code, json.dumps({"from_tag": "v1.0.0", "current_tag": to})


def test_a_fleet_rollback_reuses_each_hosts_session(monkeypatch: pytest.MonkeyPatch) -> None:
    session = type("Session", (CountingSession,), {"opened": []})
    monkeypatch.setattr(remote, "SshSession", session)
    hosts = [HostSpec(host=f"vm{i}") for i in range(1, 4)]
    report = rollout(hosts, "deploy", "v1.1.0", AgentCall(), SshOptions(), batch=1,
                     out=io.StringIO(), err=io.StringIO())
    assert report.fleet_result == "rolled_back"
    assert [h.fleet_rollback.result for h in report.hosts[:2]] == ["ok", "ok"]  # type: ignore[union-attr]
    assert report.fleet_rollback_seconds is not None
    # Three deploys and two rollbacks over three connections: one per host.
    assert sorted(session.opened) == ["vm1", "vm2", "vm3"]


def test_a_dropped_session_is_opened_again() -> None:
    import contextlib

    opened: list[CountingSession] = []

    class Session(CountingSession):
        def __enter__(self) -> CountingSession:
            opened.append(self)
            return self

    with contextlib.ExitStack() as stack:
        stack.enter_context(pytest.MonkeyPatch.context()).setattr(remote, "SshSession", Session)
        sessions = stack.enter_context(remote.SshSessions(SshOptions()))
        host = HostSpec(host="vm1")
        with sessions.session(host) as first:
            pass
        first.connected = False  # type: ignore[attr-defined]
        with sessions.session(host) as second:
            pass
        with pytest.raises(SSHError), sessions.session(host):
            raise SSHError("vm1: connection lost")
        with sessions.session(host) as third:
            pass
    assert first is not second and second is not third and len(opened) == 3
