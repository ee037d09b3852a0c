"""What an attempt tells once it is in history: the metrics file, then the notification.
Neither changes the outcome; the notification waits at most notify.BUDGET_S."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from . import metrics, notify
from .common.redact import REDACTOR
from .root import AgentRoot
from .state import ReleaseState

log = logging.getLogger("obs.report")


def publish(root: AgentRoot, state: ReleaseState, record: dict[str, Any],
            release_now: Callable[[], str | None]) -> None:
    settings = root.settings
    canary = record.get("canary")
    _metrics(root, state, release_now(), record["result"] in ("success", "rolled_back"),
             (record["tag"], int(canary["weight"])) if isinstance(canary, dict) else None)
    if settings.notify:
        notify.send(settings.notify, notify.notice(record, root.project))


def canary_metric(root: AgentRoot, state: ReleaseState, tag: str, weight: int) -> None:
    """While a canary runs: the metrics file with its share now (the release that served is
    still the one running, and healthy)."""
    _metrics(root, state, state.last_good_tag(), True, (tag, weight))


def canary_notice(root: AgentRoot, journal: dict[str, Any], promoted: bool) -> None:
    if root.settings.notify:
        notify.send(root.settings.notify, notify.canary_notice(journal, root.project, promoted))


def _metrics(root: AgentRoot, state: ReleaseState, release: str | None, healthy: bool,
             canary: tuple[str, int] | None) -> None:
    settings = root.settings
    if not settings.metrics_file:
        return
    try:
        path = root.path / settings.metrics_file  # an absolute path stays itself
        metrics.write(path, root.project, state.history.records(), release, healthy=healthy,
                      canary=canary)
    except Exception as exc:
        log.warning("could not write metrics_file %s: %s", settings.metrics_file,
                    REDACTOR(str(exc))[:300])
