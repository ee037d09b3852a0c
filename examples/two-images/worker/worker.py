"""The example worker: every WORKER_INTERVAL seconds (default 5), GET OBSERVER_URL and log one
JSON line with the observer's status. SIGTERM ends it after the current round, exit 0."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

stop = threading.Event()


def observe(url: str) -> dict[str, object]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            body = json.loads(resp.read() or b"{}")
            return {"http": resp.status, "status": body.get("status")}
    except urllib.error.HTTPError as exc:
        return {"http": exc.code, "status": None}
    except (OSError, ValueError) as exc:
        return {"http": None, "error": str(exc)}


def main() -> None:
    url = os.environ.get("OBSERVER_URL", "http://observer:8000/health")
    interval = float(os.environ.get("WORKER_INTERVAL", "5"))
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        print(json.dumps({"ts": time.time(), "observer": observe(url)}), flush=True)
        stop.wait(interval)


if __name__ == "__main__":
    main()
