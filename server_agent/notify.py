"""Notifications after every deploy and rollback (SPEC §16), through apprise.

What is said is built here (`notice`, pure); `send` hands it to apprise in a thread and waits
at most `BUDGET_S`: a notification service that hangs costs the deploy that, never its exit
code. The URLs hold tokens: they are registered with the redactor when the settings load,
and apprise's own log goes through the redacting handlers too.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from .redact import REDACTOR

log = logging.getLogger("obs.notify")

BUDGET_S = 5.0


@dataclass(frozen=True)
class Notice:
    title: str
    body: str
    level: str  # success | warning | failure (apprise's notify types)


def notice(record: dict[str, Any], project: str, host: str | None = None) -> Notice:
    """Host, project, action, from -> to, result, reason and duration of one attempt."""
    host = host or socket.gethostname()
    failure = record.get("failure")
    reason = failure.get("reason") if isinstance(failure, dict) else None
    result = str(record.get("result"))
    duration = record.get("duration_s")
    lines = [
        f"host: {host}",
        f"project: {project}",
        f"action: {record.get('action')}",
        f"release: {record.get('from_tag') or '(none)'} -> {record.get('tag')}",
        f"result: {result}",
        f"reason: {reason or ('healthy' if result == 'success' else '-')}",
        f"duration: {duration if duration is not None else '-'} s",
    ]
    level = {"success": "success", "rolled_back": "warning"}.get(result, "failure")
    title = f"[{project}@{host}] {record.get('action')} {record.get('tag')}: {result}"
    return Notice(REDACTOR(title), REDACTOR("\n".join(lines)), level)


def send(urls: list[str], message: Notice, budget: float = BUDGET_S) -> bool | None:
    """Send to every URL; True when all took it, False when one refused, None when the
    budget ran out first (the sending thread is a daemon: it never holds up the exit)."""
    if not urls:
        return True
    outcome: list[bool] = []

    def deliver() -> None:
        try:
            import apprise

            logging.getLogger("apprise").setLevel(logging.ERROR)
            ap = apprise.Apprise()
            added = [ap.add(u) for u in urls]
            for n, ok in enumerate(added):
                if not ok:
                    log.warning("notify: apprise does not understand URL #%d (of agent.notify)", n)
            outcome.append(bool(ap.notify(title=message.title, body=message.body,
                                          notify_type=message.level)) and all(added))
        except Exception as exc:  # a notification never breaks a deploy
            log.warning("notify: %s: %s", type(exc).__name__, REDACTOR(str(exc))[:300])
            outcome.append(False)

    t0 = time.monotonic()
    worker = threading.Thread(target=deliver, name="notify", daemon=True)
    worker.start()
    worker.join(budget)
    took = time.monotonic() - t0
    if not outcome:
        log.warning("notify: no answer within %gs; going on without it", budget)
        return None
    if outcome[0]:
        log.info("notified %d target(s) (%.2fs)", len(urls), took)
    else:
        log.warning("notify: a notification failed (%.2fs); see above", took)
    return outcome[0]
