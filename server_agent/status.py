"""Read-only views of an agent root: `status` and `history` (SPEC §8)."""

from __future__ import annotations

from typing import Any

from .engine import ContainerInfo, Engine, newest_per_service, running_tag
from .health import probe
from .root import AgentRoot
from .state import JOURNAL_ONLY, ReleaseState

TRUTHY = {"true", "1", "yes", "on", "t", "y"}  # what pydantic reads as True
HISTORY_KEYS = ("action", "tag", "from_tag", "result", "started_at", "finished_at",
                "duration_s", "backup")


def status(root: AgentRoot, engine: Engine) -> dict[str, Any]:
    if root.raw_setting("engine") == "swarm":
        from .swarm_deploy import swarm_status

        return swarm_status(root, engine)
    state = ReleaseState(root.state_dir)
    containers = engine.project_containers(root.project)
    running = [c for c in containers if c.running]
    # Every running container (replicas, accessories); with none running, the newest of each.
    shown = running or list(newest_per_service(containers).values())
    healthy = bool(running) and all(
        c.state == "running" and c.health in (None, "healthy") for c in running
    )
    # Unvalidated settings (see Ctx.load_root): a broken URL only makes the probe fail.
    url = root.raw_setting("health_url")
    if healthy and url:
        allow_degraded = str(root.raw_setting("allow_degraded")).lower() in TRUTHY
        healthy = probe(str(url), allow_degraded).kind == "pass"
    return {
        "current_tag": running_tag(containers),
        "last_good_tag": state.last_good_tag(),
        "healthy": healthy,
        "services": [
            {"name": c.service, "container": c.name, "image": c.image, "state": c.state,
             "health": c.health, "role": c.role, "tag": c.tag}
            for c in shown
        ],
        "last_action": last_action(state),
        "proxy": proxy_view(root, running),
    }


def proxy_view(root: AgentRoot, running: list[ContainerInfo]) -> dict[str, Any] | None:
    """Where agent.proxy sends traffic now, and which release answers there (SPEC §15);
    None without a proxy. A proxy that cannot be read is shown as such, not raised."""
    if root.raw_setting("proxy") is None:
        return None
    from .proxy import proxy_for
    from .redact import REDACTOR

    try:
        cutover = proxy_for(root)
        assert cutover is not None
        upstreams = cutover.driver.current()
    except Exception as exc:  # unvalidated settings, a proxy that does not answer
        return {"error": REDACTOR(str(exc))[:300]}
    at = {c.address(cutover.port): c for c in running if c.service == cutover.service}
    return {"service": cutover.service, "upstreams": upstreams,
            "serving": sorted({str(at[a].tag) for a in upstreams if a in at}),
            "unknown_upstreams": [a for a in upstreams if a not in at]}


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
