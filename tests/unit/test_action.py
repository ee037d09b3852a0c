"""deploy_tool/action.py, the steps of action.yml: resolve and the job summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy_tool.action import main, resolve, summary
from server_agent.common.errors import UsageError

PUSH = {"GITHUB_EVENT_NAME": "push", "GITHUB_REF_TYPE": "tag", "GITHUB_REF_NAME": "v1.2.3"}


def test_resolve_from_the_event_and_the_inputs() -> None:
    assert resolve(PUSH) == {"action": "deploy", "version": "v1.2.3"}
    assert resolve({**PUSH, "GITHUB_REF_NAME": "v1.3.0-rc.1"})["action"] == "skip"
    dispatch = {"GITHUB_EVENT_NAME": "workflow_dispatch", "GITHUB_REF_NAME": "main"}
    assert resolve({**dispatch, "INPUT_ACTION": "rollback"}) == {"action": "rollback", "version": ""}
    assert resolve({**dispatch, "INPUT_VERSION": "v2.0.0-rc.1"})["action"] == "deploy"
    for bad in ({"INPUT_ACTION": "destroy"}, {"INPUT_VERSION": "v1.0"}, {},
                {"INPUT_VERSION": "v1.0.0", "INPUT_CANARY_HOSTS": "1"},
                {"INPUT_VERSION": "v1.0.0", "INPUT_ON_FAILURE": "stop"}):
        with pytest.raises(UsageError):
            resolve({**dispatch, **bad})


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
