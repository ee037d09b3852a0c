"""deploy_tool/action.py, the steps of action.yml: resolve and the job summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy_tool.action import main, obsdeploy_argv, resolve, summary
from server_agent.common.errors import UsageError

PUSH = {"GITHUB_EVENT_NAME": "push", "GITHUB_REF_TYPE": "tag", "GITHUB_REF_NAME": "v1.2.3"}


def test_resolve_from_the_event_and_the_inputs() -> None:
    assert resolve(PUSH) == {"action": "deploy", "version": "v1.2.3"}
    assert resolve({**PUSH, "GITHUB_REF_NAME": "v1.3.0-rc.1"})["action"] == "skip"
    dispatch = {"GITHUB_EVENT_NAME": "workflow_dispatch", "GITHUB_REF_NAME": "main"}
    assert resolve({**dispatch, "INPUT_ACTION": "rollback"}) == {"action": "rollback", "version": ""}
    assert resolve({**dispatch, "INPUT_VERSION": "v2.0.0-rc.1"})["action"] == "deploy"
    for bad in ({"INPUT_ACTION": "destroy"}, {"INPUT_VERSION": "v1.0"}, {},
                {"INPUT_VERSION": "v1.0.0", "INPUT_CANARY_HOSTS": "-1"},
                {"INPUT_VERSION": "v1.0.0", "INPUT_CANARY_HOSTS": "two"},
                {"INPUT_VERSION": "v1.0.0", "INPUT_ON_FAILURE": "rollback"}):
        with pytest.raises(UsageError, match="action|version|canary-hosts|on-failure"):
            resolve({**dispatch, **bad})


def test_canary_hosts_and_on_failure_reach_obsdeploy(tmp_path: Path) -> None:
    dispatch = {"GITHUB_EVENT_NAME": "workflow_dispatch", "INPUT_VERSION": "v1.0.0"}
    inputs = {"INPUT_CANARY_HOSTS": " 1 ", "INPUT_ON_FAILURE": "stop"}
    assert resolve({**dispatch, **inputs}) == {"action": "deploy", "version": "v1.0.0"}
    env = {"RUNNER_TEMP": str(tmp_path), "INPUT_HOSTS": "vm1, vm2 vm3", **inputs}
    argv = obsdeploy_argv({**env, "RESOLVED_ACTION": "deploy", "RESOLVED_VERSION": "v1.0.0"},
                          tmp_path)
    assert argv[argv.index("--canary-hosts") + 1] == "1"
    assert argv[argv.index("--on-failure") + 1] == "stop"
    assert argv.count("--host") == 3
    # A rollback run follows the canary batch too but undoes nothing: on-failure (a
    # repository variable shared by both actions) is not passed, and not refused.
    assert resolve({**dispatch, **inputs, "INPUT_ACTION": "rollback"})["action"] == "rollback"
    rb = obsdeploy_argv({**env, "RESOLVED_ACTION": "rollback"}, tmp_path)
    assert "--on-failure" not in rb and rb[rb.index("--canary-hosts") + 1] == "1"
    # Empty inputs: obsdeploy's own defaults ([deploy] table, OBSDEPLOY_*) apply.
    plain = obsdeploy_argv({"RUNNER_TEMP": str(tmp_path), "INPUT_HOSTS": "vm1",
                            "RESOLVED_ACTION": "deploy", "RESOLVED_VERSION": "v1.0.0"}, tmp_path)
    assert "--canary-hosts" not in plain and "--on-failure" not in plain


def test_the_on_failure_values_are_obsdeploys() -> None:
    from deploy_tool.action import ON_FAILURE
    from deploy_tool.fleet import ON_FAILURE as FLEET_ON_FAILURE

    assert ON_FAILURE == FLEET_ON_FAILURE


def test_an_input_cannot_start_a_workflow_command(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_EVENT_NAME", "workflow_dispatch")
    monkeypatch.setenv("INPUT_ACTION", "deploy\n::warning::injected")
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "out"))
    assert main(["resolve"]) == 2
    assert not any(line.startswith("::warning::") for line in capsys.readouterr().out.splitlines())
    assert not (tmp_path / "out").exists()


def test_the_summary_renders_the_report(tmp_path: Path) -> None:
    (tmp_path / "obsdeploy-report.json").write_text(json.dumps({"hosts": [
        {"host": "vm1|x", "from_tag": None, "to_tag": "v1.0.0", "result": "ok",
         "exit_code": 0, "seconds": 12.345},
        {"host": "vm2", "from_tag": "v0.9.0", "to_tag": "v0.9.0", "result": "rolled_back",
         "exit_code": 20, "seconds": 30, "message": "v1.0.0 failed (watch); rolled back\nmore"},
    ]}))
    (tmp_path / "obsdeploy-exit-code").write_text("20\n")
    text = summary({"RUNNER_TEMP": str(tmp_path), "INPUT_VERSION": "v1.0.0",
                    "GITHUB_EVENT_NAME": "workflow_dispatch"})
    assert text.startswith("## obsdeploy deploy v1.0.0\n")
    assert "Exit code **20** (release failed; rolled back" in text
    assert "| vm1\\|x | - | v1.0.0 | ok | 12.3 |" in text
    assert "| vm2 | v0.9.0 | v0.9.0 | rolled_back (exit 20) | 30.0 |" in text
    assert "- **vm2**: v1.0.0 failed (watch); rolled back" in text.splitlines()


def test_the_heading_is_right_when_nothing_ran(tmp_path: Path) -> None:
    text = summary({**PUSH, "RUNNER_TEMP": str(tmp_path)})
    assert text.startswith("## obsdeploy deploy v1.2.3\n") and "Exit code **not run**" in text
    rc = summary({**PUSH, "GITHUB_REF_NAME": "v1.3.0-rc.1", "RUNNER_TEMP": str(tmp_path)})
    assert "prerelease, not deployed" in rc


def test_the_summary_shows_the_fleet_rollback_and_the_fleets_outcome(tmp_path: Path) -> None:
    back = {"to": "v0.9.0", "result": "ok", "exit_code": 0}
    (tmp_path / "obsdeploy-report.json").write_text(json.dumps({
        "fleet_result": "failed", "fleet_message": "not brought back: vm2", "hosts": [
            {"host": "vm1", "from_tag": "v0.9.0", "to_tag": "v1.0.0", "result": "ok",
             "exit_code": 0, "seconds": 5, "fleet_rollback": back},
            {"host": "vm2", "from_tag": "v0.9.0", "to_tag": "v1.0.0", "result": "ok",
             "exit_code": 0, "seconds": 5,
             "fleet_rollback": {"to": "v0.9.0", "result": "failed", "exit_code": 21}},
            {"host": "vm3", "from_tag": "v0.9.0", "to_tag": "v0.9.0", "result": "rolled_back",
             "exit_code": 20, "seconds": 9, "fleet_rollback": None},
        ]}))
    (tmp_path / "obsdeploy-exit-code").write_text("21\n")
    text = summary({"RUNNER_TEMP": str(tmp_path), "INPUT_VERSION": "v1.0.0",
                    "GITHUB_EVENT_NAME": "workflow_dispatch"})
    assert "| host | from | to | result | seconds | fleet rollback |" in text
    assert "| vm1 | v0.9.0 | v1.0.0 | ok | 5.0 | -> v0.9.0 ok |" in text
    assert "| vm2 | v0.9.0 | v1.0.0 | ok | 5.0 | -> v0.9.0 failed (exit 21) |" in text
    assert "| vm3 | v0.9.0 | v0.9.0 | rolled_back (exit 20) | 9.0 | - |" in text
    assert "Fleet: **failed** (a host could not be brought back: the fleet runs two releases): " \
           "not brought back: vm2" in text
