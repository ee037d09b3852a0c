"""Notifications after every deploy and rollback (SPEC §16), through apprise.

What is said is built here (`notice`, pure); `send` hands it to apprise in a child process
and waits at most `BUDGET_S`: a notification service that hangs costs the deploy that, never its exit
code. The URLs hold tokens: they are registered with the redactor when the settings load,
and apprise's own log goes through the redacting handlers too.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from .common.redact import REDACTOR

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
        *(f"warning: {w}" for w in record.get("warnings") or []),
    ]
    level = {"success": "success", "rolled_back": "warning"}.get(result, "failure")
    title = f"[{project}@{host}] {record.get('action')} {record.get('tag')}: {result}"
    return Notice(REDACTOR(title), REDACTOR("\n".join(lines)), level)


def canary_notice(journal: dict[str, Any], project: str, promoted: bool,
                  host: str | None = None) -> Notice:
    """The moment a canary ends: promoted to 100 %, or aborted (back to the release that
    served); the attempt's own notice follows when it ends."""
    host = host or socket.gethostname()
    canary = journal.get("canary") or {}
    steps = canary.get("steps") or []
    done = ", ".join(f"{s.get('weight')} % {s.get('result')}" for s in steps) or "-"
    what = "promoted to 100 %" if promoted else "aborted, back to " + str(canary.get("stable") or "-")
    lines = [f"host: {host}", f"project: {project}",
             f"canary: {journal.get('tag')} {what}", f"steps: {done}",
             f"reason: {canary.get('reason') or '-'}"]
    title = f"[{project}@{host}] canary {journal.get('tag')}: {'promoted' if promoted else 'aborted'}"
    return Notice(REDACTOR(title), REDACTOR("\n".join(lines)), "success" if promoted else "warning")


def send(urls: list[str], message: Notice, budget: float = BUDGET_S) -> bool | None:
    """Send to every URL; True when all took it, False when one refused, None when the
    budget ran out first.

    apprise runs in a child process (`python -m server_agent.notify`, the notice and URLs on
    its stdin, never its command line) that is killed when the budget is spent: a thread
    cannot be stopped, and the interpreter's exit waits for apprise's worker threads."""
    if not urls:
        return True
    from .common.errors import CommandError
    from .common.runner import run

    t0 = time.monotonic()
    payload = json.dumps({"urls": urls, **asdict(message)})
    try:
        res = run([sys.executable, "-m", "server_agent.notify"], input=payload, timeout=budget, check=False)
    except CommandError as exc:
        if exc.returncode == 124:
            log.warning("notify: no answer within %gs; going on without it", budget)
            return None
        log.warning("notify: %s", REDACTOR(str(exc))[:300])
        return False
    took = time.monotonic() - t0
    for line in res.stderr.splitlines()[-5:]:
        log.warning("notify: %s", REDACTOR(line)[:300])
    if res.returncode == 0:
        log.info("notified %d target(s) (%.2fs)", len(urls), took)
        return True
    log.warning("notify: a notification failed (%.2fs)", took)
    return False


def _deliver() -> int:
    """The child's side: the notice from stdin to every URL through apprise."""
    import apprise

    data = json.load(sys.stdin)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr, format="%(message)s")
    ap = apprise.Apprise()
    added = [ap.add(u) for u in data["urls"]]
    for n, ok in enumerate(added):
        if not ok:
            print(f"apprise does not understand URL #{n} of agent.notify", file=sys.stderr)
    sent = ap.notify(title=data["title"], body=data["body"], notify_type=data["level"])
    return 0 if sent and all(added) else 1


if __name__ == "__main__":
    sys.exit(_deliver())
