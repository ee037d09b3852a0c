"""A rollout over a fleet of hosts as a value (SPEC §10, §21): which hosts go in which batch,
what happens when one fails, and what the fleet's outcome and exit code are.

Pure: `plan_fleet` decides the batches, `carry_out` walks them and, after a failure with
`rollback-fleet`, sends every host this run switched back to the release it ran before, in
reverse order of batches. How a batch of host calls is run (SSH, in parallel) is the caller's
`run_batch`; the unit tests give it a fake fleet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel

from server_agent.common.errors import ExitCode

Action = Literal["deploy", "rollback", "status", "setup"]
OnFailure = Literal["rollback-fleet", "stop"]
ON_FAILURE: tuple[OnFailure, ...] = ("rollback-fleet", "stop")
# success: every host succeeded; rolled_back: a host failed and every host this run switched
# is back on its release, healthy; failed: some host could not be brought back (exit 21);
# stopped: a host failed and, with `--on-failure stop`, the switched hosts were left as they are.
FleetResult = Literal["success", "rolled_back", "failed", "stopped"]


class FleetRollback(BaseModel):
    """A switched host sent back to the release it ran before the run."""

    to: str | None
    result: str
    exit_code: int | None
    seconds: float | None = None
    message: str | None = None


class HostResult(BaseModel):
    host: str
    result: str  # ok | rolled_back | failed | ssh_error | skipped | ...
    exit_code: int | None
    from_tag: str | None = None
    to_tag: str | None = None
    seconds: float | None = None
    message: str | None = None
    status: dict[str, Any] | None = None
    fleet_rollback: FleetRollback | None = None

    @property
    def switched(self) -> bool:
        """This run changed the release the host runs: it succeeded, and was not already on
        it (a host whose previous release is unknown counts as switched)."""
        return self.exit_code == 0 and not (self.from_tag is not None
                                            and self.from_tag == self.to_tag)


class RolloutReport(BaseModel):
    action: Action
    version: str | None
    batch: int
    exit_code: int
    hosts: list[HostResult]
    canary_hosts: int = 0
    on_failure: OnFailure | None = None
    fleet_result: FleetResult | None = None
    # Which hosts could not be brought back (fleet_result failed) or were left (stopped).
    fleet_message: str | None = None
    # From the failed batch's end to the last switched host back: the fleet's way back.
    fleet_rollback_seconds: float | None = None


class Host(Protocol):
    @property
    def label(self) -> str: ...


H = TypeVar("H", bound=Host)


@dataclass(frozen=True)
class Batch(Generic[H]):
    hosts: tuple[H, ...]
    canary: bool = False


@dataclass(frozen=True)
class HostCall(Generic[H]):
    """One agent run on one host: `obs-agent ACTION [VERSION]`."""

    host: H
    action: Action
    version: str | None


@dataclass(frozen=True)
class FleetPlan(Generic[H]):
    action: Action
    version: str | None
    batch: int
    batches: tuple[Batch[H], ...]
    canary_hosts: int
    # What a failed host means for the others; None for status (every host is asked).
    on_failure: OnFailure | None

    @property
    def hosts(self) -> list[H]:
        return [h for b in self.batches for h in b.hosts]


def plan_fleet(hosts: Sequence[H], action: Action, version: str | None, *, batch: int,
               canary_hosts: int = 0, on_failure: OnFailure = "rollback-fleet") -> FleetPlan[H]:
    """`status` asks every host at once; `deploy` and `rollback` go through the first
    `canary_hosts` hosts as one batch, then the rest in batches of `batch`. Only a deploy
    is undone on failure: a failed rollback run leaves the hosts it already rolled back."""
    if action == "status":
        return FleetPlan(action, version, batch, (Batch(tuple(hosts)),), 0, None)
    canary = min(canary_hosts, len(hosts))
    groups = [Batch(tuple(hosts[:canary]), canary=True)] if canary else []
    rest = hosts[canary:]
    groups += [Batch(tuple(rest[i:i + batch])) for i in range(0, len(rest), batch)]
    return FleetPlan(action, version, batch, tuple(groups), canary,
                     on_failure if action == "deploy" else "stop")


RunBatch = Callable[[Sequence[HostCall[H]]], list[HostResult]]

# A host that failed and could not bring itself back: its own rollback failed.
_NOT_BACK = int(ExitCode.ROLLBACK_FAILED)


def carry_out(plan: FleetPlan[H], run_batch: RunBatch[H],
              say: Callable[[str], None] = lambda _: None) -> RolloutReport:
    """Run the plan's batches in order; after the first batch with a failure no further host
    starts, and with `rollback-fleet` the switched hosts go back, last batch first."""
    results: dict[str, HostResult] = {}
    ran: list[Batch[H]] = []
    failed_at: Batch[H] | None = None
    for group in plan.batches:
        if failed_at is not None:
            why = ("the canary hosts failed" if failed_at.canary
                   else f"batch {plan.batches.index(failed_at) + 1} failed")
            for h in group.hosts:
                results[h.label] = HostResult(host=h.label, result="skipped", exit_code=None,
                                              message=f"not started: {why}")
            continue
        if group.canary:
            say(f"canary hosts first: {', '.join(h.label for h in group.hosts)}")
        calls = [HostCall(h, plan.action, plan.version) for h in group.hosts]
        for h, r in zip(group.hosts, run_batch(calls), strict=True):
            results[h.label] = r
        ran.append(group)
        if plan.on_failure is not None and any(results[h.label].exit_code != 0
                                               for h in group.hosts):
            failed_at = group
    back_seconds = None
    if failed_at is not None and plan.on_failure == "rollback-fleet":
        started = time.monotonic()
        _roll_back_fleet(ran, results, run_batch, say)
        back_seconds = round(time.monotonic() - started, 2)
    ordered = [results[h.label] for h in plan.hosts]
    fleet, message = _fleet_result(plan, ordered, failed=failed_at is not None)
    first = next((r.exit_code for r in ordered if r.exit_code not in (0, None)), 0) or 0
    # The first failed host's code, unless the fleet was left split between two releases.
    code = _NOT_BACK if fleet == "failed" and plan.action == "deploy" else first
    return RolloutReport(action=plan.action, version=plan.version, batch=plan.batch,
                         exit_code=code, hosts=ordered, canary_hosts=plan.canary_hosts,
                         on_failure=plan.on_failure, fleet_result=fleet, fleet_message=message,
                         fleet_rollback_seconds=back_seconds)


def _roll_back_fleet(ran: list[Batch[H]], results: dict[str, HostResult], run_batch: RunBatch[H],
                     say: Callable[[str], None]) -> None:
    """Every switched host back to its `from_tag`, batch by batch in reverse order; a host
    that cannot be brought back does not stop the others from going back."""
    for group in reversed(ran):
        switched = [h for h in group.hosts if results[h.label].switched]
        unknown = [h for h in switched if results[h.label].from_tag is None]
        for h in unknown:
            results[h.label].fleet_rollback = FleetRollback(
                to=None, result="no_previous_release", exit_code=None,
                message="it ran no release before this run: nothing to go back to")
        calls = [HostCall(h, "rollback", results[h.label].from_tag)
                 for h in switched if h not in unknown]
        if not calls:
            continue
        say("fleet rollback: " + ", ".join(f"{c.host.label} -> {c.version}" for c in calls))
        for c, r in zip(calls, run_batch(calls), strict=True):
            results[c.host.label].fleet_rollback = FleetRollback(
                to=c.version, result=r.result, exit_code=r.exit_code, seconds=r.seconds,
                message=r.message)


def _fleet_result(plan: FleetPlan[H], hosts: list[HostResult], *,
                  failed: bool) -> tuple[FleetResult | None, str | None]:
    if plan.on_failure is None:
        return None, None
    if not failed:
        return "success", None
    if plan.action != "deploy":
        bad = [r.host for r in hosts if r.exit_code not in (0, None)]
        return "failed", f"{', '.join(bad)} failed; the hosts already rolled back stay so"
    not_back = [r.host for r in hosts
                if r.exit_code == _NOT_BACK
                or (r.fleet_rollback is not None and r.fleet_rollback.exit_code != 0)]
    if not_back:
        return "failed", f"not brought back: {', '.join(not_back)}"
    left = [r.host for r in hosts if r.switched and r.fleet_rollback is None]
    if left:
        return "stopped", f"left on {plan.version} (--on-failure stop): {', '.join(left)}"
    return "rolled_back", None
