"""Attempt: one deploy or rollback as it is journaled and then recorded in history, with its
timings; Outcome: how it ended, frozen."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from .common.errors import ExitCode
from .state import now_iso


@dataclass
class Attempt:
    """The record of one attempt, filled in as it goes (the journal, then history's line).
    Passed to each step explicitly: nothing of it lives on the transaction."""

    action: str  # deploy | rollback
    tag: str
    from_tag: str | None = None
    started_at: str = field(default_factory=now_iso)
    pid: int = field(default_factory=os.getpid)
    backup: str | None = None
    failure: dict[str, Any] | None = None
    watch: dict[str, Any] | None = None
    canary: dict[str, Any] | None = None  # its steps and their measurements (SPEC §20)
    rollback_gate: dict[str, Any] | None = None
    sent_secrets: bool = False  # secrets came with --secrets-stdin (written into .env)
    dumps: list[dict[str, Any]] = field(default_factory=list)  # the accessories' dumps taken
    irreversible_jobs: list[str] = field(default_factory=list)  # obsdeploy.reversible "false", run
    warnings: list[str] = field(default_factory=list)
    hooks: list[dict[str, Any]] = field(default_factory=list)  # each hook action run (HookRun.record)
    # pre_switch ran and post_switch has not yet: whatever happens next, post_switch runs once.
    paused: bool = False
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step of the work
    t0: float = field(default_factory=time.monotonic)

    def took(self, step: str, since: float) -> float:
        """Add the time since `since` (time.monotonic()) to `step`; returns it."""
        seconds = round(time.monotonic() - since, 3)
        self.add(step, seconds)
        return seconds

    def add(self, step: str, seconds: float) -> None:
        self.steps[step] = round(self.steps.get(step, 0.0) + seconds, 3)

    def journal(self) -> dict[str, Any]:
        """What the journal holds while the attempt runs."""
        out: dict[str, Any] = {"action": self.action, "tag": self.tag, "from_tag": self.from_tag,
                               "started_at": self.started_at, "backup": self.backup, "pid": self.pid}
        for key in ("failure", "watch", "canary", "rollback_gate"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for key in ("dumps", "irreversible_jobs", "warnings", "hooks"):  # only when there are some
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out

    def record(self, result: str) -> dict[str, Any]:
        """History's line for the attempt, ended with `result`."""
        rec = {k: v for k, v in self.journal().items() if k != "pid"}
        rec.update(result=result, finished_at=now_iso(), duration_s=round(time.monotonic() - self.t0, 3),
                   steps=dict(self.steps))
        return rec


def log_tail_lines(failure: dict[str, Any] | None, lines: int = 5) -> list[str]:
    """The first `lines` lines of each log tail a failure record holds (a job's, the
    accessories' or the failed containers'), each prefixed with whose it is."""
    if not isinstance(failure, dict):
        return []
    tails: dict[str, Any] = {}
    job = failure.get("job")
    if isinstance(job, dict) and job.get("log_tail"):
        tails[str(job.get("name") or "job")] = job["log_tail"]
    if isinstance(failure.get("log_tail"), dict):
        tails.update(failure["log_tail"])
    return [f"{who}: {line}" for who, tail in tails.items() if isinstance(tail, str)
            for line in tail.splitlines()[:lines]]


@dataclass(frozen=True)
class Outcome:
    exit_code: ExitCode
    message: str
    record: dict[str, Any] = field(default_factory=dict)
