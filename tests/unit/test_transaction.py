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

    def switch(self, step: Step, release: Release, *, reuse: bool, capture: Any) -> Switched:
        self.log.append(f"switch {','.join(step.names)} {release.tag}")
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
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AgentRoot:
    (tmp_path / "deployment_config.json").write_text(json.dumps({"agent": {
        "health_timeout": 2, "stabilize_seconds": 0, "verify": {"paths": []}, "required_env": [],
        "secret_env": [], "backup_paths": []}}))
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
