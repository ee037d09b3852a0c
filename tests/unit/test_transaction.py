"""The transaction over a fake backend: its order of work and its walk back, without Docker.

The fake keeps "what runs" per service as a tag; its observer answers the gate with what a
test says each release does. The same transaction runs over compose and swarm
(tests/integration show both on the real engines)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from server_agent import transaction as transaction_module
from server_agent.backends.base import PreSwitchFailure, Release, Switched, WalkedBack
from server_agent.common.errors import ExitCode
from server_agent.compose import ComposeConfig
from server_agent.gate.loop import Look, Observer, Verdict
from server_agent.plan import PreflightReport, RolloutPlan, ServicePlan, Step
from server_agent.root import AgentRoot
from server_agent.state import ReleaseState
from server_agent.transaction import Transaction

GATEWAY = ServicePlan("gateway", "stop-first", 1, None, contract=False)
OBSERVER = ServicePlan("observer", "stop-first", 1, None, contract=True)
PLAN = RolloutPlan("v2.0.0", jobs=("migrate",), steps=(Step(1, (GATEWAY,)), Step(None, (OBSERVER,))),
                   accessories=())


class FakeObserver:
    def __init__(self, look: Look) -> None:
        self._look = look

    def look(self) -> Look:
        return self._look

    def health_urls(self, url: str) -> list[str]:
        return []

    def logs_contain(self, pattern: Any) -> bool:
        return True

    def pause(self, seconds: float) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class FakeBackend:
    """Services run tags; `broken` releases fail their gate (at the service named, or all)."""

    running: dict[str, str | None]
    broken: dict[str, str] = field(default_factory=dict)  # tag -> the service that fails
    failing_job: bool = False
    walk_back_fails: bool = False
    switch_fails: bool = False  # the first switch raises before it touched anything
    log: list[str] = field(default_factory=list)
    name: str = "fake"
    engine: Any = None

    def preflight(self, report: PreflightReport) -> None: ...

    def running_tag(self) -> str | None:
        tags = set(self.running.values())
        return tags.pop() if len(tags) == 1 else None

    def recover(self, interrupted: dict[str, Any] | None) -> None: ...

    def ensure_images(self, plan: RolloutPlan, release: Release, *, refresh: bool) -> None:
        self.log.append(f"images {release.tag}")

    def start_accessories(self, names: list[str], release: Release,
                          gate: Callable[[Observer], Verdict]) -> None:
        if names:
            self.log.append("accessories " + ",".join(names))

    def run_job(self, job: str, release: Release) -> None:
        self.log.append(f"job {job}")
        if self.failing_job:
            raise PreSwitchFailure(f"job {job} exited with code 1", {"job": {"name": job}})

    def run_in_service(self, name: str, argv: tuple[str, ...], *, timeout: float,
                       env: dict[str, str]) -> Any:
        from server_agent.engine import ExecResult

        self.log.append(f"exec {name} {' '.join(argv)} result={env['OBSDEPLOY_RESULT'] or '-'}")
        return ExecResult(1 if argv[0] == "false" else 0, 0, "it said no" if argv[0] == "false" else "")

    def switch(self, step: Step, release: Release, *, reuse: bool, capture: Any) -> Switched:
        self.log.append(f"switch {','.join(step.names)} {release.tag}")
        if self.switch_fails:
            raise RuntimeError("compose could not create the containers")
        sw = FakeSwitch(step, release.tag, before={s: self.running.get(s) for s in step.names})
        for s in step.names:
            self.running[s] = release.tag
        return sw

    def observe(self, sw: Switched) -> Observer:
        bad = self.broken.get(sw.tag or "")
        if bad is not None and bad in sw.step.names:
            return FakeObserver(Look(failure=f"{bad} crashed"))
        return FakeObserver(Look(units=()))

    def cut_over(self, sw: Switched, weight: int = 100) -> None: ...

    def split(self, switched: list[Switched], weight: int) -> None: ...

    def settle(self, sw: Switched, *, probation: bool) -> None: ...

    def watched(self, switched: list[Switched]) -> Any:
        raise AssertionError("no watch in these tests")

    def walk_back(self, switched: list[Switched], failed: Switched | None,
                  previous: str | None) -> WalkedBack[Switched]:
        if self.walk_back_fails:
            raise RuntimeError("the engine went away")
        back: list[ServicePlan] = []
        for sw in reversed(switched):
            assert isinstance(sw, FakeSwitch)
            self.log.append(f"back {','.join(sw.step.names)}")
            for s in sw.step.services:
                self.running[s.name] = sw.before[s.name]
                back.append(s)
        tags = {sw.before[s] for sw in switched for s in sw.before}  # type: ignore[attr-defined]
        return WalkedBack(FakeSwitch(Step(None, tuple(back)), tags.pop() if len(tags) == 1 else None))

    def diagnostics(self, failed: list[Switched], switched: list[Switched], verdict: Verdict) -> dict[str, Any]:
        return {"log_tail": {s: "..." for sw in failed for s in sw.step.names}}

    def commit(self, switched: list[Switched], keep_tag: str | None) -> None:
        self.log.append(f"commit keep {keep_tag}")

    def walked_back(self) -> None:
        self.log.append("walked back")

    def finish(self) -> None:
        self.log.append("finish")

    def status(self) -> dict[str, Any]:
        return {}


@dataclass
class FakeSwitch(Switched):
    before: dict[str, str | None] = field(default_factory=dict)


@pytest.fixture
def hooks() -> dict[str, Any]:
    """agent.hooks of the root (a test sets it before asking for `root`)."""
    return {}


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hooks: dict[str, Any]) -> AgentRoot:
    (tmp_path / "deployment_config.json").write_text(json.dumps({"agent": {
        "health_timeout": 2, "stabilize_seconds": 0, "verify": {"paths": []}, "required_env": [],
        "secret_env": [], "backup_paths": [], "hooks": hooks}}))
    (tmp_path / "docker-compose.server.yml").write_text("services: {}\n")  # kept with a good release
    agent_root = AgentRoot(tmp_path)
    config = ComposeConfig({"services": {}}, {})

    def preflight(r: AgentRoot, backend: Any, tag: str, **_: Any) -> PreflightReport:
        return PreflightReport(config=config, plan=PLAN)

    monkeypatch.setattr(transaction_module, "run_preflight", preflight)
    return agent_root


def run(root: AgentRoot, backend: FakeBackend, tag: str, previous_good: str | None = "v1.0.0") -> Any:
    state = ReleaseState(root.state_dir)
    state.ensure()
    if previous_good:
        state.set_last_good_tag(previous_good)
    return Transaction(root, backend, state).deploy(tag), state  # type: ignore[arg-type]


def test_a_good_deploy_runs_the_steps_in_order_then_commits(root: AgentRoot) -> None:
    backend = FakeBackend({"gateway": "v1.0.0", "observer": "v1.0.0"})
    outcome, state = run(root, backend, "v2.0.0")
    assert outcome.exit_code == ExitCode.OK, outcome
    assert backend.log == ["images v2.0.0", "job migrate", "switch gateway v2.0.0",
                           "switch observer v2.0.0", "commit keep v1.0.0", "finish"]
    assert state.last_good_tag() == "v2.0.0"
    record = state.history.records()[-1]
    assert (record["result"], record["from_tag"], record["tag"]) == ("success", "v1.0.0", "v2.0.0")
    assert {"preflight", "pull", "job:migrate", "swap", "gate"} <= set(record["steps"])
    assert state.pending() is None  # the journal is gone once history has the attempt


def test_a_failing_later_step_walks_every_switched_step_back_in_reverse(root: AgentRoot) -> None:
    backend = FakeBackend({"gateway": "v1.0.0", "observer": "v1.0.0"}, broken={"v2.0.0": "observer"})
    outcome, state = run(root, backend, "v2.0.0")
    assert outcome.exit_code == ExitCode.ROLLED_BACK, outcome
    assert backend.log[-5:] == ["switch observer v2.0.0", "back observer", "back gateway", "walked back", "finish"]
    assert backend.running == {"gateway": "v1.0.0", "observer": "v1.0.0"}
    assert state.last_good_tag() == "v1.0.0"
    record = state.history.records()[-1]
    assert record["result"] == "rolled_back"
    assert record["failure"]["reason"] == "step 2 (observer): observer crashed"
    assert record["failure"]["log_tail"] == {"observer": "..."}
    assert record["rollback_gate"] == {"healthy": True, "reason": "healthy"}


def test_a_failed_first_release_with_nothing_to_go_back_to_is_exit_21(root: AgentRoot) -> None:
    backend = FakeBackend({}, broken={"v1.0.0": "gateway"})
    outcome, state = run(root, backend, "v1.0.0", previous_good=None)
    assert outcome.exit_code == ExitCode.ROLLBACK_FAILED, outcome
    assert "there is no previous good release" in outcome.message
    assert state.last_good_tag() is None


def test_a_failed_job_switches_nothing(root: AgentRoot) -> None:
    backend = FakeBackend({"gateway": "v1.0.0", "observer": "v1.0.0"}, failing_job=True)
    outcome, state = run(root, backend, "v2.0.0")
    assert outcome.exit_code == ExitCode.JOB_FAILED, outcome
    assert not [line for line in backend.log if line.startswith("switch")]
    assert state.history.records()[-1]["failure"]["job"] == {"name": "migrate"}


def test_a_walk_back_that_cannot_be_made_is_exit_21_and_says_why(root: AgentRoot) -> None:
    backend = FakeBackend({"gateway": "v1.0.0", "observer": "v1.0.0"}, broken={"v2.0.0": "gateway"},
                          walk_back_fails=True)
    outcome, state = run(root, backend, "v2.0.0")
    assert outcome.exit_code == ExitCode.ROLLBACK_FAILED, outcome
    assert "the engine went away" in outcome.message
    assert state.history.records()[-1]["rollback_gate"]["healthy"] is False


def exec_hook(word: str) -> dict[str, Any]:
    return {"exec": {"service": "observer", "argv": [word]}}


ALL_HOOKS = {name: [exec_hook(name)] for name in ("pre_switch", "post_switch", "post_deploy", "on_rollback")}


def hook_lines(backend: FakeBackend) -> list[str]:
    return [line for line in backend.log if line.startswith(("exec", "switch", "back", "job", "commit"))]


@pytest.mark.parametrize("hooks", [ALL_HOOKS])
def test_hooks_run_around_the_switch_in_order_and_are_in_history(root: AgentRoot) -> None:
    backend = FakeBackend({"gateway": "v1.0.0", "observer": "v1.0.0"})
    outcome, state = run(root, backend, "v2.0.0")
    assert outcome.exit_code == ExitCode.OK, outcome
    assert hook_lines(backend) == [
        "job migrate", "exec observer pre_switch result=-", "switch gateway v2.0.0",
        "switch observer v2.0.0", "exec observer post_switch result=-", "commit keep v1.0.0",
        "exec observer post_deploy result=success"]  # no rollback: no on_rollback
    hooks = state.history.records()[-1]["hooks"]
    assert [(h["hook"], h["action"], h["result"], h["detail"]) for h in hooks] == [
        ("pre_switch", "exec in observer: pre_switch", "ok", "exit 0"),
        ("post_switch", "exec in observer: post_switch", "ok", "exit 0"),
        ("post_deploy", "exec in observer: post_deploy", "ok", "exit 0")]
    assert all(isinstance(h["duration_s"], float) for h in hooks)


@pytest.mark.parametrize("hooks", [ALL_HOOKS])
def test_post_switch_runs_after_a_failed_switch_went_back(root: AgentRoot) -> None:
    backend = FakeBackend({"gateway": "v1.0.0", "observer": "v1.0.0"}, broken={"v2.0.0": "observer"})
    outcome, state = run(root, backend, "v2.0.0")
    assert outcome.exit_code == ExitCode.ROLLED_BACK, outcome
    assert hook_lines(backend)[-6:] == [
        "switch observer v2.0.0", "back observer", "back gateway",
        "exec observer post_switch result=rolled_back", "exec observer on_rollback result=rolled_back",
        "exec observer post_deploy result=rolled_back"]
    assert [h["hook"] for h in state.history.records()[-1]["hooks"]] == [
        "pre_switch", "post_switch", "on_rollback", "post_deploy"]


@pytest.mark.parametrize("hooks", [{**ALL_HOOKS, "pre_switch": [exec_hook("false"), exec_hook("never")]}])
def test_a_failed_pre_switch_is_exit_13_nothing_switched_and_post_switch_still_runs(root: AgentRoot) -> None:
    backend = FakeBackend({"gateway": "v1.0.0", "observer": "v1.0.0"})
    outcome, state = run(root, backend, "v2.0.0")
    assert outcome.exit_code == ExitCode.JOB_FAILED, outcome
    assert "pre_switch hook exec in observer: false failed: exit 1; output: it said no" in outcome.message
    assert hook_lines(backend) == [  # the action after the failed one never ran
        "job migrate", "exec observer false result=-", "exec observer post_switch result=failed",
        "exec observer post_deploy result=failed"]
    assert backend.running == {"gateway": "v1.0.0", "observer": "v1.0.0"}
    record = state.history.records()[-1]
    assert record["result"] == "failed" and record["failure"]["hook"]["hook"] == "pre_switch"
    assert state.last_good_tag() == "v1.0.0"


@pytest.mark.parametrize("hooks", [{"post_switch": [exec_hook("false"), exec_hook("resume")],
                                    "post_deploy": [{"command": ["false"]}]}])
def test_other_hooks_failures_are_recorded_and_never_change_the_exit_code(root: AgentRoot) -> None:
    backend = FakeBackend({"gateway": "v1.0.0", "observer": "v1.0.0"})
    outcome, state = run(root, backend, "v2.0.0")
    assert outcome.exit_code == ExitCode.OK, outcome
    # No pre_switch: post_switch is the resume of a pause that never happened.
    assert not [line for line in backend.log if "exec" in line]
    assert [(h["hook"], h["result"], h["detail"]) for h in state.history.records()[-1]["hooks"]] == [
        ("post_deploy", "failed", "exit 1; output: ")]


@pytest.mark.parametrize("hooks", [{"pre_switch": [exec_hook("pause")],
                                    "post_switch": [exec_hook("false"), exec_hook("resume")]}])
def test_every_post_switch_action_runs_even_after_one_failed(root: AgentRoot) -> None:
    backend = FakeBackend({"gateway": "v1.0.0", "observer": "v1.0.0"})
    outcome, state = run(root, backend, "v2.0.0")
    assert outcome.exit_code == ExitCode.OK, outcome
    assert [h["result"] for h in state.history.records()[-1]["hooks"]] == ["ok", "failed", "ok"]


@pytest.mark.parametrize("hooks", [ALL_HOOKS])
def test_a_manual_rollback_runs_on_rollback(root: AgentRoot) -> None:
    state = ReleaseState(root.state_dir)
    state.ensure()
    for tag in ("v1.0.0", "v2.0.0"):
        state.history.append({"action": "deploy", "tag": tag, "result": "success"})
    state.set_last_good_tag("v2.0.0")
    backend = FakeBackend({"gateway": "v2.0.0", "observer": "v2.0.0"})
    outcome = Transaction(root, backend, state).rollback("v1.0.0")  # type: ignore[arg-type]
    assert outcome.exit_code == ExitCode.OK, outcome
    assert [h["hook"] for h in state.history.records()[-1]["hooks"]] == [
        "pre_switch", "post_switch", "on_rollback", "post_deploy"]


@pytest.mark.parametrize("hooks", [ALL_HOOKS])
def test_post_switch_runs_when_the_switch_itself_raised(root: AgentRoot) -> None:
    backend = FakeBackend({"gateway": "v1.0.0", "observer": "v1.0.0"}, switch_fails=True)
    with pytest.raises(RuntimeError):
        run(root, backend, "v2.0.0")
    state = ReleaseState(root.state_dir)
    assert hook_lines(backend)[-3:] == ["switch gateway v2.0.0", "exec observer post_switch result=failed",
                                        "exec observer post_deploy result=failed"]
    assert [h["hook"] for h in state.history.records()[-1]["hooks"]] == ["pre_switch", "post_switch", "post_deploy"]
