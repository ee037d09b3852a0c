"""Scenario 10: a single writer behind a proxy that holds (caddy, traefik): the observer,
writing a record every 50 ms, switched stop-first while the proxy keeps the requests of the
gap waiting (docs/held-requests.md).

Under 100 requests/s of independent clients with a 10 s client timeout (tests/parts_proxy's
Load), while the observer's running containers and whether the proxy holds are sampled every
50 ms (WriterWatch), for a good deploy, a crash-at-start release and an error-answering
release (both rolled back). Per proxy and case:
- failed requests (target 0; a failing release answering is a failure too);
- the most writer containers running at once (target 1);
- the longest request against the gap, the longest stretch in which the proxy held, as
  sampled (target: at most the gap plus 1 s);
- the archive read back: its runs of records (consecutive records of one writer, a
  container's start) against its writers (target: one run each, ratio 1).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import harness as h

if TYPE_CHECKING:
    from bench.run import Bench

RATE = 100
CLIENT_TIMEOUT = 10.0
WRITE_INTERVAL = "0.05"
HELD_SLACK = 1.0  # the target: the longest request at most the gap plus this
CASES = [("good deploy", "v1.1.0"), ("crash-at-start release", "v2.0.0-crash"),
         ("error-answering release", "v2.0.0-error")]


def archive_runs(archive: Path) -> tuple[int, int]:
    """(runs of consecutive records of one writer, writers) in the observer's archive."""
    writers: list[str] = []
    for line in archive.read_text(errors="replace").splitlines():
        try:
            writer = json.loads(line).get("writer")
        except ValueError:
            continue  # a line cut by a kill: the observer repairs it at its next start
        if writer and (not writers or writers[-1] != writer):
            writers.append(writer)
    return len(writers), len(set(writers))


def release_drain(load: Any, writers: Any) -> tuple[int, float]:
    """(requests sent while the proxy held, seconds from the end of the longest hold to the
    last of them answered): what the release of the backlog adds to the gap."""
    spans = writers.hold_spans()
    if not spans:
        return 0, 0.0
    start, end = max(spans, key=lambda s: s[1] - s[0])
    held = [a for a in load.answers if start <= load._t0 + a.sent <= end]
    last = max((load._t0 + a.sent + a.latency for a in held), default=end)
    return len(held), max(0.0, last - end)


def run(bench: Bench) -> dict[str, Any]:
    from bench.run import log, row
    from tests import parts_project
    from tests.parts_proxy import (
        CaddyProcess,
        Load,
        WriterWatch,
        caddy_binary,
        caddy_holding,
        traefik_binary,
        traefik_holding,
    )

    kinds = [k for k in ("caddy", "traefik")
             if (traefik_binary() if k == "traefik" else shutil.which(caddy_binary()))]
    if not kinds:
        return bench._not_measured("neither caddy nor traefik is installed (scripts/setup-machine.sh)")
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for kind in kinds:
        side = h.ProxiedAgentSide(bench.tmp / f"held-{kind}" / "observer", bench.registry.address,
                                  f"obsbench-held-{kind}-{bench.uid}", bench.settings, kind,
                                  single_writer=True)
        bench.cleanups.append(side.cleanup)
        compose = side.root.path / "docker-compose.server.yml"
        compose.write_text(re.sub(r"(\n    environment:\n)", rf'\1      WRITE_INTERVAL: "{WRITE_INTERVAL}"\n',
                                  compose.read_text(), count=1))
        code, out, _ = side.deploy("v1.0.0")
        if code != 0:
            raise RuntimeError(f"{side.name}: first deploy failed ({code}):\n{h.tail(out, 20)}")
        holding = (caddy_holding(side.root.path / "state" / "proxy" / "upstream")
                   if isinstance(side.proxy, CaddyProcess)
                   else traefik_holding(side.proxy.api_url, side.root.project))
        archive = side.root.path / "config" / "observer" / "observer.jsonl"
        for label, tag in CASES:
            with WriterWatch(side.root.project, holding=holding) as writers, \
                    Load(f"{side.proxy.url}/health", rate=RATE, timeout=CLIENT_TIMEOUT,
                         max_seconds=120) as load:
                load._stop.wait(0.5)
                code, out, _ = side.deploy(tag)
                load._stop.wait(0.5)
                load.stop()
            versions = sorted({a.version for a in load.answers if a.version})
            bad = [v for v in versions if v.startswith("v2.0.0")]
            gap = writers.longest_hold()
            drain = release_drain(load, writers)
            longest = max((a.latency for a in load.answers), default=0.0)
            record_runs, record_writers = archive_runs(archive)
            log(f"  {kind:<8} {label:<24} exit {code:<3} failed {len(load.failed):<4} writers "
                f"{writers.most_at_once}  longest {longest:.2f}s  gap {gap:.2f}s  held {drain[0]} "
                f"answered {drain[1]:.2f}s after the release  archive "
                f"{record_runs} runs / {record_writers} writers")
            if code not in (0, 20):
                log(f"    {h.tail(out, 10)}")
            runs.append({"proxy": kind, "case": label, "tag": tag, "exit_code": code,
                         "requests": len(load.answers), "failed": len(load.failed),
                         "failures": sorted({a.detail[:60] for a in load.failed})[:5],
                         "versions": versions, "most_writers": writers.most_at_once,
                         "holds_s": [round(b - a, 3) for a, b in writers.hold_spans()],
                         "longest_request_s": round(longest, 3),
                         "held_requests": drain[0], "last_held_answer_after_release_s": round(drain[1], 3),
                         "running": [parts_project.release_of(c)
                                     for c in parts_project.running(side.root.project, "observer")],
                         "archive_runs": record_runs, "archive_writers": record_writers,
                         "steps": (h.last_record(side.root) or {}).get("steps")})
            rows.append(row(f"{kind}, {label}: failed requests", "", len(load.failed), target="0",
                            met=not load.failed and not bad, absolute=True,
                            note=f"exit {code}; {len(load.answers)} requests; versions answering "
                                 f"{versions}" + (f"; FAILED RELEASE SERVED: {bad}" if bad else "")))
            rows.append(row(f"{kind}, {label}: most writer containers at once", "",
                            writers.most_at_once, target="<= 1", limit=1, absolute=True,
                            note="docker's running containers of the observer, every 50 ms"))
            rows.append(row(f"{kind}, {label}: longest request / gap held", "s", longest, gap,
                            target=f"<= gap + {HELD_SLACK:g} s",
                            met=gap > 0 and longest <= gap + HELD_SLACK,
                            note="script column: the longest stretch the proxy held, sampled "
                                 "every 50 ms (caddy's dial file, traefik's API)"))
            rows.append(row(f"{kind}, {label}: archive runs of records / writers", "",
                            record_runs, record_writers, target="<= 1.0x", limit=1.0,
                            note="the whole archive so far; a writer is one start of a container"))
        side.cleanup()
        bench.cleanups.remove(side.cleanup)
    return {"rows": rows, "runs": runs}
