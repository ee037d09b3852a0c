"""Maintenance: while on, the proxy answers every request 503, with Retry-After and a small
page holding the message (JSON to a client that accepts JSON, else HTML).

The state is the file DIR/state/maintenance.json, written once the proxy took the change and
removed once it took it back. A deploy or rollback reads it when it builds its proxy driver,
so a switch keeps maintenance as it is (caddy: the agent's server is rebuilt with the
maintenance routes still first; nginx: the maintenance file is not the upstream file;
traefik: every dynamic file the agent writes keeps its maintenance router).

The answer's shape (status, headers, the two bodies, which one a request gets) is here, for
every proxy: each only writes it in its own configuration's terms.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "maintenance.json"
DEFAULT_MESSAGE = "The service is down for maintenance. Please try again later."
DEFAULT_RETRY_AFTER = 60
STATUS = 503
JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"


def wants_json(accept: str) -> bool:
    """Whether a request whose Accept header is `accept` gets the JSON body (caddy matches
    `*json*`, nginx `~* "json"`: the same test)."""
    return "json" in accept.lower()


@dataclass(frozen=True)
class Maintenance:
    message: str
    since: str
    retry_after: int = DEFAULT_RETRY_AFTER

    def as_dict(self) -> dict[str, Any]:
        return {"on": True, "message": self.message, "since": self.since, "retry_after": self.retry_after}

    def json_body(self) -> str:
        return json.dumps({"status": "maintenance", "message": self.message, "since": self.since,
                           "retry_after": self.retry_after})

    def headers(self, content_type: str) -> dict[str, str]:
        """The answer's headers besides its length."""
        return {"Retry-After": str(self.retry_after), "Content-Type": content_type,
                "Cache-Control": "no-store"}

    def answer(self, accept: str) -> tuple[dict[str, str], str]:
        """The headers and body for a request whose Accept header is `accept`."""
        if wants_json(accept):
            return self.headers(JSON_TYPE), self.json_body()
        return self.headers(HTML_TYPE), self.html_body()

    def html_body(self) -> str:
        return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>Maintenance</title></head>"
                f"<body><h1>Down for maintenance</h1><p>{html.escape(self.message)}</p></body></html>")


OFF: dict[str, Any] = {"on": False, "message": None, "since": None, "retry_after": None}


def read(state_dir: Path) -> Maintenance | None:
    """The maintenance in force, or None (off). A file that cannot be read as one counts as
    on with the default message: the operator turned it on, and only `off` turns it off."""
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return Maintenance(DEFAULT_MESSAGE, "")
    if not isinstance(data, dict):
        return Maintenance(DEFAULT_MESSAGE, "")
    retry = data.get("retry_after")
    return Maintenance(str(data.get("message") or DEFAULT_MESSAGE), str(data.get("since") or ""),
                       retry if isinstance(retry, int) and retry >= 0 else DEFAULT_RETRY_AFTER)


def write(state_dir: Path, maintenance: Maintenance | None) -> None:
    from .state import atomic_write

    path = state_dir / STATE_FILE
    if maintenance is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write(path, json.dumps(maintenance.as_dict()) + "\n")


def shown(maintenance: Maintenance | None) -> dict[str, Any]:
    """`status --json`'s and `maintenance status --json`'s object."""
    return dict(OFF) if maintenance is None else maintenance.as_dict()
