"""The maintenance answer for traefik, which cannot write one itself (docs/maintenance.md).

Traefik has no handler that answers a fixed body: a router always ends at a service whose
servers are URLs (its errors middleware too fetches its page from one). So while maintenance
is on, the agent runs this tiny server on the host, and its router for maintenance sends every
request to it.

    serve        (`python -m server_agent.maintenance_answer LISTEN DIR`) answers every
                 request 503 with the Maintenance in DIR/maintenance.json, read for each
                 request (`maintenance on` again only rewrites it); once bound, it writes its
                 pid and address to DIR/answer.json
    AnswerServer the agent's handle: ensure() starts it detached (its own session: it
                 outlives the command and the SSH session) unless it runs, stop() ends it
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from . import maintenance
from .maintenance import DEFAULT_MESSAGE, Maintenance

ADDRESS_FILE = "answer.json"
LOG_FILE = "answer.log"
START_TIMEOUT = 10.0
# A request body up to this is read and dropped (the connection stays usable); above, or
# chunked, the answer closes the connection instead.
MAX_DRAINED_BODY = 1 << 20
MODULE = "server_agent.maintenance_answer"  # run as `python -m`, where __name__ is __main__


class AnswerError(Exception):
    """The answer server did not start; what the proxy serves did not change."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], page_dir: Path) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.page_dir = page_dir


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: traefik reuses its connections
    server: _Server

    def _answer(self) -> None:
        m = maintenance.read(self.server.page_dir) or Maintenance(DEFAULT_MESSAGE, "")
        headers, text = m.answer(self.headers.get("Accept", ""))
        body = text.encode()
        length = (self.headers.get("Content-Length") or "0").strip()
        if self.headers.get("Transfer-Encoding") or not length.isdigit() or int(length) > MAX_DRAINED_BODY:
            self.close_connection = True
        elif int(length):
            self.rfile.read(int(length))
        self.send_response(maintenance.STATUS)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        pass  # one line per request would fill the log while maintenance lasts


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def serve(listen: str, page_dir: Path) -> None:
    from .state import atomic_write

    server = _Server(split_listen(listen), page_dir)
    host, port = str(server.server_address[0]), server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    atomic_write(page_dir / ADDRESS_FILE,
                 json.dumps({"pid": os.getpid(), "url": f"http://{shown}:{port}"}) + "\n")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


@dataclass
class AnswerServer:
    page_dir: Path  # DIR/state/proxy/maintenance
    listen: str     # host:port, port 0: a free one

    def __post_init__(self) -> None:
        self.page_dir = self.page_dir.resolve()  # the server runs in "/"

    def write(self, m: Maintenance) -> None:
        """What it answers, from the next request on."""
        self.page_dir.mkdir(parents=True, exist_ok=True)
        maintenance.write(self.page_dir, m)

    def running(self) -> str | None:
        """Its URL when it runs, else None."""
        try:
            data = json.loads((self.page_dir / ADDRESS_FILE).read_text())
            pid, url = int(data["pid"]), str(data["url"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return url if self._ours(pid) else None

    def _ours(self, pid: int) -> bool:
        """Whether `pid` is this directory's answer server (not a pid reused since)."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return MODULE.encode() in argv and str(self.page_dir).encode() in argv

    def ensure(self) -> str:
        """Its URL, started first unless it runs."""
        url = self.running()
        if url is not None:
            return url
        from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

        self.page_dir.mkdir(parents=True, exist_ok=True)
        (self.page_dir / ADDRESS_FILE).unlink(missing_ok=True)
        # It imports this package from where the agent does, whatever its working directory
        # ("/": it keeps no directory busy).
        package_parent = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
        with open(self.page_dir / LOG_FILE, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", MODULE, self.listen, str(self.page_dir)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
                                    env={**os.environ, "PYTHONPATH": path},
                                    start_new_session=True, close_fds=True)
        def started() -> str | None:  # "": it exited
            return self.running() if proc.poll() is None else ""

        url = Retrying(stop=stop_after_delay(START_TIMEOUT), wait=wait_fixed(0.05),
                       retry=retry_if_result(lambda up: up is None),
                       retry_error_callback=lambda _: None)(started)
        if not url:
            if proc.poll() is None:
                proc.kill()
            tail = (self.page_dir / LOG_FILE).read_text(errors="replace").strip().splitlines()[-1:]
            raise AnswerError(f"the maintenance answer server did not start on {self.listen}"
                              + (f": {tail[0]}" if tail else ""))
        return url

    def stop(self) -> None:
        try:
            pid = int(json.loads((self.page_dir / ADDRESS_FILE).read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        if self._ours(pid):
            os.kill(pid, signal.SIGTERM)
        (self.page_dir / ADDRESS_FILE).unlink(missing_ok=True)


if __name__ == "__main__":
    serve(sys.argv[1], Path(sys.argv[2]))
