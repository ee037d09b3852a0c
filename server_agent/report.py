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
    if settings.metrics_file:
        try:
            path = root.path / settings.metrics_file  # an absolute path stays itself
            metrics.write(path, root.project, state.history.records(), release_now(),
                          healthy=record["result"] in ("success", "rolled_back"))
        except Exception as exc:
            log.warning("could not write metrics_file %s: %s", settings.metrics_file,
                        REDACTOR(str(exc))[:300])
    if settings.notify:
        notify.send(settings.notify, notify.notice(record, root.project))
