"""deploy_tool/fleet.py: the fleet plan (batches, canary hosts) and what a failure undoes,
carried out against a fake fleet (no SSH: `run_batch` is the fake's)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from deploy_tool.fleet import HostCall, HostResult, carry_out, plan_fleet
from deploy_tool.remote import HostSpec, result_name


def hosts(n: int) -> list[HostSpec]:
    return [HostSpec(host=f"vm{i}") for i in range(1, n + 1)]


@dataclass
class FakeFleet:
    """Hosts that run a release each (`current`); `fails[(host, tag)]` is the exit code a
    deploy of tag there ends with (20: it rolled itself back; 21: it could not), a rollback
    to tag fails with `fails[(host, "rollback " + tag)]`; `unreachable` hosts are exit 30."""

    current: dict[str, str | None]
    fails: dict[tuple[str, str], int] = field(default_factory=dict)
    unreachable: set[str] = field(default_factory=set)
    calls: list[list[str]] = field(default_factory=list)  # one list per batch run

    def run_batch(self, calls: Sequence[HostCall[HostSpec]]) -> list[HostResult]:
        self.calls.append([f"{c.action} {c.host.label} {c.version}" for c in calls])
        return [self.run(c) for c in calls]

    def run(self, c: HostCall[HostSpec]) -> HostResult:
        label = c.host.label
        if label in self.unreachable:
            return HostResult(host=label, result="ssh_error", exit_code=30,
                              message=f"{label}: cannot connect")
        if c.action == "status":
            return HostResult(host=label, result="ok", exit_code=0)
        assert c.version is not None
        before = self.current[label]
        key = c.version if c.action == "deploy" else f"rollback {c.version}"
        code = self.fails.get((label, key), 0)
        if code == 0:
            self.current[label] = c.version
        elif code == 21:
            self.current[label] = None  # neither release healthy
        return HostResult(host=label, result=result_name(code), exit_code=code,
                          from_tag=before, to_tag=self.current[label])


def fleet(n: int, tag: str | None = "v1.0.0", **kw: object) -> FakeFleet:
    return FakeFleet(current={f"vm{i}": tag for i in range(1, n + 1)}, **kw)  # type: ignore[arg-type]


def test_the_plan_puts_the_canary_hosts_first_then_batches() -> None:
    plan = plan_fleet(hosts(5), "deploy", "v2", batch=2, canary_hosts=1)
    assert [([h.label for h in b.hosts], b.canary) for b in plan.batches] == [
        (["vm1"], True), (["vm2", "vm3"], False), (["vm4", "vm5"], False)]
    assert plan.on_failure == "rollback-fleet"
    assert [len(b.hosts) for b in plan_fleet(hosts(5), "deploy", "v2", batch=2).batches] == [2, 2, 1]
    # More canary hosts than hosts: all of them are the canary batch.
    [only] = plan_fleet(hosts(2), "deploy", "v2", batch=1, canary_hosts=5).batches
    assert only.canary and len(only.hosts) == 2
    # A rollback run follows the same batches and undoes nothing; status asks every host.
    rb = plan_fleet(hosts(3), "rollback", None, batch=1, canary_hosts=1)
    assert [len(b.hosts) for b in rb.batches] == [1, 1, 1] and rb.on_failure == "stop"
    st = plan_fleet(hosts(3), "status", None, batch=1, canary_hosts=1)
    assert [len(b.hosts) for b in st.batches] == [3] and st.on_failure is None


def test_a_release_failing_on_the_last_host_takes_the_fleet_back_in_reverse_order() -> None:
    f = fleet(4, fails={("vm4", "v2"): 20})
    report = carry_out(plan_fleet(hosts(4), "deploy", "v2", batch=1), f.run_batch)
    assert f.calls == [["deploy vm1 v2"], ["deploy vm2 v2"], ["deploy vm3 v2"], ["deploy vm4 v2"],
                       ["rollback vm3 v1.0.0"], ["rollback vm2 v1.0.0"], ["rollback vm1 v1.0.0"]]
    assert f.current == {"vm1": "v1.0.0", "vm2": "v1.0.0", "vm3": "v1.0.0", "vm4": "v1.0.0"}
    assert (report.fleet_result, report.exit_code) == ("rolled_back", 20)
    assert [(h.from_tag, h.to_tag, h.result) for h in report.hosts] == [
        ("v1.0.0", "v2", "ok")] * 3 + [("v1.0.0", "v1.0.0", "rolled_back")]
    for h in report.hosts[:3]:
        assert h.fleet_rollback is not None
        assert (h.fleet_rollback.to, h.fleet_rollback.result, h.fleet_rollback.exit_code) == (
            "v1.0.0", "ok", 0)
    assert report.hosts[3].fleet_rollback is None  # the agent rolled it back by itself


def test_each_host_goes_back_to_its_own_previous_release_batch_by_batch() -> None:
    f = FakeFleet(current={"vm1": "v1.0.0", "vm2": "v1.1.0", "vm3": "v2", "vm4": "v1.0.0",
                           "vm5": "v1.0.0"}, fails={("vm5", "v2"): 20})
    report = carry_out(plan_fleet(hosts(5), "deploy", "v2", batch=2), f.run_batch)
    # vm3 already ran v2: this run did not switch it, so it stays.
    assert f.calls[3:] == [["rollback vm4 v1.0.0"], ["rollback vm1 v1.0.0", "rollback vm2 v1.1.0"]]
    assert f.current["vm2"] == "v1.1.0" and f.current["vm3"] == "v2"
    assert report.hosts[2].fleet_rollback is None
    assert report.fleet_result == "rolled_back"


def test_a_host_that_cannot_be_brought_back_is_named_and_the_exit_is_21() -> None:
    f = fleet(3, fails={("vm3", "v2"): 20, ("vm1", "rollback v1.0.0"): 21})
    report = carry_out(plan_fleet(hosts(3), "deploy", "v2", batch=1), f.run_batch)
    # vm1 failing to go back does not keep vm2 from going back (vm2 is undone first anyway).
    assert f.current["vm2"] == "v1.0.0"
    assert (report.fleet_result, report.exit_code) == ("failed", 21)
    assert report.fleet_message == "not brought back: vm1"
    back = report.hosts[0].fleet_rollback
    assert back is not None and (back.result, back.exit_code) == ("failed", 21)


def test_a_failed_host_whose_own_rollback_failed_fails_the_fleet() -> None:
    f = fleet(2, fails={("vm2", "v2"): 21})
    report = carry_out(plan_fleet(hosts(2), "deploy", "v2", batch=1), f.run_batch)
    assert f.current["vm1"] == "v1.0.0"  # the others are still brought back
    assert (report.fleet_result, report.exit_code) == ("failed", 21)
    assert "vm2" in (report.fleet_message or "")


def test_a_host_without_a_previous_release_cannot_be_brought_back() -> None:
    f = fleet(2, tag=None, fails={("vm2", "v2"): 20})
    report = carry_out(plan_fleet(hosts(2), "deploy", "v2", batch=1), f.run_batch)
    assert len(f.calls) == 2  # no rollback to run: there is no release to go back to
    back = report.hosts[0].fleet_rollback
    assert back is not None and back.result == "no_previous_release"
    assert (report.fleet_result, report.exit_code) == ("failed", 21)


def test_on_failure_stop_leaves_the_switched_hosts() -> None:
    f = fleet(3, fails={("vm3", "v2"): 20})
    report = carry_out(plan_fleet(hosts(3), "deploy", "v2", batch=1, on_failure="stop"),
                       f.run_batch)
    assert len(f.calls) == 3 and f.current["vm1"] == f.current["vm2"] == "v2"
    assert (report.fleet_result, report.exit_code) == ("stopped", 20)
    assert report.fleet_message == "left on v2 (--on-failure stop): vm1, vm2"
    assert all(h.fleet_rollback is None for h in report.hosts)


def test_a_failing_canary_touches_no_other_host() -> None:
    f = fleet(4, fails={("vm2", "v2"): 20})
    report = carry_out(plan_fleet(hosts(4), "deploy", "v2", batch=2, canary_hosts=2), f.run_batch)
    assert f.calls == [["deploy vm1 v2", "deploy vm2 v2"], ["rollback vm1 v1.0.0"]]
    assert [h.result for h in report.hosts[2:]] == ["skipped", "skipped"]
    assert report.hosts[2].message == "not started: the canary hosts failed"
    assert f.current == {f"vm{i}": "v1.0.0" for i in range(1, 5)}
    assert (report.fleet_result, report.exit_code) == ("rolled_back", 20)


def test_the_others_follow_good_canaries_in_batches() -> None:
    f = fleet(4)
    report = carry_out(plan_fleet(hosts(4), "deploy", "v2", batch=3, canary_hosts=1), f.run_batch)
    assert f.calls == [["deploy vm1 v2"], ["deploy vm2 v2", "deploy vm3 v2", "deploy vm4 v2"]]
    assert (report.fleet_result, report.exit_code, report.canary_hosts) == ("success", 0, 1)


def test_an_unreachable_host_is_a_failure_and_the_exit_code_stays_its_own() -> None:
    f = fleet(3, unreachable={"vm2"})
    report = carry_out(plan_fleet(hosts(3), "deploy", "v2", batch=1), f.run_batch)
    assert f.calls == [["deploy vm1 v2"], ["deploy vm2 v2"], ["rollback vm1 v1.0.0"]]
    assert [h.result for h in report.hosts] == ["ok", "ssh_error", "skipped"]
    assert (report.fleet_result, report.exit_code) == ("rolled_back", 30)


def test_a_host_of_the_failed_batch_that_succeeded_goes_back_too() -> None:
    f = fleet(2, fails={("vm2", "v2"): 20})
    report = carry_out(plan_fleet(hosts(2), "deploy", "v2", batch=2), f.run_batch)
    assert f.calls[-1] == ["rollback vm1 v1.0.0"] and report.fleet_result == "rolled_back"


@pytest.mark.parametrize("code", [10, 11, 13])
def test_nothing_changed_on_the_failed_host_still_takes_the_others_back(code: int) -> None:
    f = fleet(2, fails={("vm2", "v2"): code})
    report = carry_out(plan_fleet(hosts(2), "deploy", "v2", batch=1), f.run_batch)
    assert f.current == {"vm1": "v1.0.0", "vm2": "v1.0.0"}
    assert (report.fleet_result, report.exit_code) == ("rolled_back", code)


def test_a_rollback_run_stops_at_a_failed_host_and_undoes_nothing() -> None:
    f = fleet(3, tag="v2", fails={("vm2", "rollback v1.0.0"): 21})
    report = carry_out(plan_fleet(hosts(3), "rollback", "v1.0.0", batch=1), f.run_batch)
    assert f.calls == [["rollback vm1 v1.0.0"], ["rollback vm2 v1.0.0"]]
    assert f.current["vm1"] == "v1.0.0" and f.current["vm3"] == "v2"
    assert [h.result for h in report.hosts] == ["ok", "failed", "skipped"]
    assert (report.fleet_result, report.exit_code) == ("failed", 21)


def test_status_asks_every_host_and_has_no_fleet_result() -> None:
    f = fleet(3, unreachable={"vm1"})
    report = carry_out(plan_fleet(hosts(3), "status", None, batch=1), f.run_batch)
    assert len(f.calls) == 1 and report.fleet_result is None and report.exit_code == 30
