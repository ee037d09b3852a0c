"""Read-only views of an agent root for the CLI: `status` and `history`."""

from __future__ import annotations

from typing import Any

from .engine import Engine
from .root import AgentRoot
from .state import JOURNAL_ONLY, ReleaseState

HISTORY_KEYS = ("action", "tag", "from_tag", "result", "started_at", "finished_at",
                "duration_s", "backup")


def status(root: AgentRoot, engine: Engine) -> dict[str, Any]:
    """What runs (from the backend), the last good release and the last action (from state)."""
    from .backends.select import backend_for

    state = ReleaseState(root.state_dir)
    running = backend_for(root, engine).status()
    from . import maintenance

    return {"current_tag": running.pop("current_tag"), "last_good_tag": state.last_good_tag(),
            **running, "last_action": last_action(state),
            "maintenance": maintenance.shown(maintenance.read(root.state_dir)),
            "canary": running_canary(state)}


CANARY_KEYS = ("tag", "stable", "step", "weight", "since", "measurements")


def running_canary(state: ReleaseState) -> dict[str, Any] | None:
    """The canary of the deploy that holds the lock now, from its journal; None otherwise."""
    pending = state.pending()
    canary = pending.get("canary") if pending is not None else None
    if not isinstance(canary, dict) or canary.get("result") != "running" or not state.lock.is_held():
        return None
    return {k: canary.get(k) for k in CANARY_KEYS}


def last_action(state: ReleaseState) -> dict[str, Any] | None:
    pending = state.pending()
    if pending is not None and state.lock.is_held():
        return {"action": pending.get("action"), "tag": pending.get("tag"),
                "result": "running", "finished_at": None}
    interrupted = state.interrupted()
    records = state.history.records()
    last = interrupted or (records[-1] if records else None)
    return None if last is None else {k: last.get(k) for k in ("action", "tag", "result", "finished_at")}


def history(root: AgentRoot, limit: int | None) -> list[dict[str, Any]]:
    state = ReleaseState(root.state_dir)
    records = list(reversed(state.history.records()))
    interrupted = state.interrupted()
    if interrupted is not None:
        records.insert(0, interrupted)
    records = records[:limit] if limit else records
    return [{**{k: r.get(k) for k in HISTORY_KEYS},
             **{k: v for k, v in r.items() if k not in HISTORY_KEYS and k not in JOURNAL_ONLY}}
            for r in records]
