"""Scenario 11: the canary by weight (docs/canary.md) through a real caddy and nginx on
loopback, judged by the agent itself from the proxy's access log.

At 100 requests/s of independent clients (tests/parts_proxy's Load: one thread and one
connection per request) asking the fixture observer's API through the proxy, with
`agent.canary` 5 % -> 25 % -> 50 % (STEP_SECONDS each), interval 2 s, min_requests 100 and one
check, success_rate >= 0.99:

- a good canary: exit 0, no failed request, and the observed share of its answers at each
  weight, counted from one second after the share changed to one second before the next change
  (the agent's status is polled to see when; a poll sees a change up to ~1 s late) (target:
  within 3 points of the weight, over at least 1,000 requests);
- a canary whose API fails 10 % of its requests (its health stays healthy): exit 20; the time
  from its min_requests-th answer to the abort (the history record's canary `since` +
  `seconds`: when the agent decided) (target: at most two intervals); its last answer after the
  abort (target: at most 1 s); failed requests it did not answer (target 0); the agent's CPU
  while it measured (utime + stime of the deploy's process between the first and the last status
  that showed its canary; target: at most 5 % of a core).

--quick (the smoke run): one proxy, 2 s steps and min_requests 30; its shares are over far
fewer than 1,000 requests, so those rows are missed by design.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests import parts
from tests.parts_proxy import Load, behind_a_proxy, caddy_binary, proxy_serves, start_proxy

if TYPE_CHECKING:
    from bench.run import Bench

RATE = 100
INTERVAL = 2.0
MIN_REQUESTS = 100
QUICK_MIN_REQUESTS = 30
WEIGHTS = (5, 25, 50)
STEP_SECONDS = 15.0  # about 1,300 requests counted per step at 100/s
QUICK_STEP_SECONDS = 2.0
SHARE_POINTS = 3
SHARE_REQUESTS = 1000
AFTER_ABORT_S = 1.0
CPU_SHARE = 0.05
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, from /proc (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


class Watcher:
    """Polls `obs-agent status --json` of a running deploy: when the canary's share changed
    (seconds on the load's clock) and the agent's CPU time while it measured."""

    def __init__(self, root: parts.AgentRootDir, proc: subprocess.Popen[str], t0: float) -> None:
        self.root, self.proc, self.t0 = root, proc, t0
        self.changes: list[tuple[float, int]] = []
        self.cpu: list[tuple[float, float]] = []  # (time, cpu seconds) while a canary runs

    def run(self) -> None:
        while self.proc.poll() is None:
            res = self.root.agent("status", "--json")
            now = time.monotonic() - self.t0
            try:
                canary = json.loads(res.stdout).get("canary")
            except ValueError:
                canary = None
            if canary is None and self.changes and self.changes[-1][1] != 100:
                self.changes.append((now, 100))  # promoted or aborted: the last share ended
            if canary is not None:
                cpu = cpu_seconds(self.proc.pid)
                if cpu is not None:
                    self.cpu.append((now, cpu))
                if not self.changes or self.changes[-1][1] != canary["weight"]:
                    self.changes.append((now, int(canary["weight"])))
            time.sleep(0.2)

    def cpu_share(self) -> float | None:
        if len(self.cpu) < 2 or self.cpu[-1][0] <= self.cpu[0][0]:
            return None
        return (self.cpu[-1][1] - self.cpu[0][1]) / (self.cpu[-1][0] - self.cpu[0][0])


def deploy_watched(root: parts.AgentRootDir, url: str, tag: str) -> tuple[int, Load, Watcher, str, float]:
    """The deploy of `tag` under the load, watched; the last value is the Unix time of the
    load's clock's zero (to place the agent's own timestamps on it)."""
    with Load(f"{url}/cgi-bin/api", rate=RATE, max_seconds=600) as load:
        unix_t0 = time.time() - (time.monotonic() - load._t0)
        load._stop.wait(1.0)
        proc = subprocess.Popen([str(parts.VENV_BIN / "obs-agent"), "deploy", tag], env=root.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        watcher = Watcher(root, proc, load._t0)
        watcher.run()
        out = proc.communicate()[0]
        load._stop.wait(2.0)
    return proc.returncode, load, watcher, out, unix_t0


def aborted_at(root: parts.AgentRootDir, unix_t0: float) -> float | None:
    """When the agent decided the abort, on the load's clock: its history record's canary
    began at `since` and ended `seconds` later."""
    canary = (parts.history(root)[0].get("canary") or {}) if parts.history(root) else {}
    if not canary.get("since") or canary.get("seconds") is None:
        return None
    since = datetime.fromisoformat(canary["since"].replace("Z", "+00:00")).timestamp()
    return since + float(canary["seconds"]) - unix_t0


def measure(bench: Bench, kind: str, step_seconds: float,
            min_requests: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from bench.run import row

    work = bench.tmp / f"canary-{kind}"
    proxy = start_proxy(kind, work, canary=True)
    root = parts.make_agent_root(
        work / "observer", bench.registry.address, f"obsbench-canary-{kind}-{bench.uid}",
        health_url=f"{proxy.url}/health", proxy=proxy.proxy_settings(drain_seconds=1),
        canary={"steps": [{"weight": w, "seconds": step_seconds} for w in WEIGHTS],
                "interval": INTERVAL, "min_requests": min_requests,
                "checks": [{"kind": "success_rate", "min": 0.99}]})
    # Not a single writer (it would be, carrying the path contract): a canary runs two releases.
    behind_a_proxy(root.path / "docker-compose.server.yml", root.port, single_writer=False)

    def cleanup() -> None:
        root.down()
        proxy.stop()

    bench.cleanups.append(cleanup)
    rows: list[dict[str, Any]] = []
    runs: dict[str, Any] = {"proxy": kind}
    first = root.agent("deploy", "v1.0.0")
    if first.returncode != 0:
        raise RuntimeError(f"{kind}: the first deploy failed:\n{first.stdout}{first.stderr}")
    proxy_serves(proxy)  # measured from when only v1.0.0 answers (nginx's old workers)

    code, load, watcher, out, _ = deploy_watched(root, proxy.url, "v1.1.0")
    runs["good"] = {"exit_code": code, "requests": len(load.answers), "failed": len(load.failed),
                    "changes": watcher.changes, "steps": (parts.history(root)[0].get("canary") or {}).get("steps")}
    rows.append(row(f"{kind}, good canary: exit code", "", code, target="0", met=code == 0,
                    note="" if code == 0 else out[-300:]))
    bounds = [*watcher.changes, (float("inf"), 100)]
    for (start, weight), (end, _) in zip(bounds, bounds[1:], strict=False):
        if weight >= 100:
            continue
        # A second off each end: the status poll sees a change up to ~1 s late.
        window = [a for a in load.answers if start + 1.0 <= a.sent < end - 1.0 and a.version]
        share = 100 * sum(1 for a in window if a.version == "v1.1.0") / max(len(window), 1)
        rows.append(row(f"{kind}, good canary at {weight} %: observed share", "%", share,
                        target=f"{weight} ± {SHARE_POINTS} points over >= {SHARE_REQUESTS} requests",
                        met=abs(share - weight) <= SHARE_POINTS and len(window) >= SHARE_REQUESTS,
                        note=f"{len(window)} requests"))
    rows.append(row(f"{kind}, good canary: failed requests", "", len(load.failed), target="0",
                    met=not load.failed,
                    note="; ".join(f"{a.sent:.2f}s {a.detail}" for a in load.failed[:3])
                         + (f"; shares changed at {watcher.changes}" if load.failed else "")))

    code, load, watcher, out, unix_t0 = deploy_watched(root, proxy.url, "v2.0.0-flaky")
    # When the proxy logged each of the canary's answers: sent plus its latency.
    canary = sorted(a.sent + a.latency for a in load.answers if a.version == "v2.0.0-flaky")
    abort = aborted_at(root, unix_t0) if code == 20 else None
    steps = (parts.history(root)[0].get("canary") or {}).get("steps") or []
    counted = steps[-1]["requests"].get("canary", 0) if steps else 0
    seen = len([t for t in canary if abort is None or t <= abort])
    # The agent counts every answer of the canary in the proxy's log; a few are not the load's
    # (measured behind nginx: 102 counted, 99 seen). Taken as the earliest they could be, the
    # min_requests-th answer is the load's k-th: an upper bound on the time to the abort.
    k = min_requests - max(0, counted - seen)
    reached = canary[k - 1] if 0 < k <= len(canary) else None
    to_abort = None if reached is None or abort is None else abort - reached
    after = None if abort is None or not canary else canary[-1] - abort
    reason = next((line for line in out.splitlines()[::-1] if "failed (" in line or "failed at" in line),
                  out[-300:])
    others = [a for a in load.failed if a.version != "v2.0.0-flaky"]
    cpu = watcher.cpu_share()
    runs["failing"] = {"exit_code": code, "requests": len(load.answers), "canary_answers": len(canary),
                       "reached_s": reached, "aborted_s": abort, "last_canary_answer_s": canary[-1] if canary else None,
                       "failed_not_canary": len(others), "cpu_share": cpu,
                       "counted_by_agent": counted, "seen_before_abort": seen, "steps": steps}
    rows.append(row(f"{kind}, 10 % failing canary: exit code", "", [code], target="ours: 20",
                    met=code == 20, note=f"{len(canary)} answers of the canary; {reason[-300:]}"))
    rows.append(row(f"{kind}, 10 % failing canary: its min_requests-th answer to the abort", "s",
                    None if to_abort is None else max(0.0, to_abort),
                    target=f"<= {2 * INTERVAL:g} s", limit=2 * INTERVAL, absolute=True,
                    note=f"min_requests {min_requests}, interval {INTERVAL:g} s; the abort: the history "
                         f"record's canary since + seconds; the agent counted {counted} answers of the "
                         f"canary, the load saw {seen} before the abort (the others taken as early as "
                         "possible)"))
    rows.append(row(f"{kind}, 10 % failing canary: its last answer after the abort", "s",
                    None if after is None else max(0.0, after),
                    target=f"<= {AFTER_ABORT_S:g} s", limit=AFTER_ABORT_S, absolute=True,
                    note="" if after is None else f"raw {after:+.3f} s (negative: none after the abort)"))
    rows.append(row(f"{kind}, 10 % failing canary: failed requests not answered by it", "", len(others),
                    target="0", met=not others, note="; ".join(f"{a.sent:.2f}s {a.detail}" for a in others[:3])))
    rows.append(row(f"{kind}, the agent's CPU while it measured", "% of a core",
                    None if cpu is None else 100 * cpu, target=f"<= {100 * CPU_SHARE:g}",
                    limit=100 * CPU_SHARE, absolute=True,
                    note="utime+stime of the deploy's process between the first and the last status "
                         "that showed its canary (status runs in its own process)"))
    cleanup()
    bench.cleanups.remove(cleanup)
    return rows, runs


def run(bench: Bench) -> dict[str, Any]:
    from bench.run import log

    kinds = [k for k in ("caddy", "nginx")
             if (Path(caddy_binary()).exists() if k == "caddy" else shutil.which("nginx"))]
    if not kinds:
        return bench._not_measured("neither caddy nor nginx is installed (scripts/setup-machine.sh)")
    if bench.quick:
        kinds = kinds[:1]
    step = QUICK_STEP_SECONDS if bench.quick else STEP_SECONDS
    min_requests = QUICK_MIN_REQUESTS if bench.quick else MIN_REQUESTS
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for kind in kinds:
        got, ran = measure(bench, kind, step, min_requests)
        for r in got:
            log(f"  {'met ' if r['met'] else 'MISS'} {r['metric']}: {r['ours']} {r['unit']} "
                f"(target {r['target']}) {r['note'][:120]}")
        rows += got
        runs.append(ran)
    note = (f"--quick: {kinds[0]} only, {step:g} s steps, min_requests {min_requests}: the shares "
            f"are over fewer than {SHARE_REQUESTS} requests" if bench.quick else "")
    return {"rows": rows, "runs": runs, **({"note": note} if note else {})}
