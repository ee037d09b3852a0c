"""The canary by weight under load (issue 23), through a real caddy and nginx on loopback.

    .venv/bin/python -m bench.canary                       # caddy and nginx, ~4 min each
    .venv/bin/python -m bench.canary --proxy nginx --json-out /tmp/canary.json

At 100 requests/s of independent clients (tests/parts_proxy.Load: one thread and one
connection per request) asking the fixture observer's API through the proxy:

- a good canary, 5 % → 25 % → 50 % for `--step-seconds` each: the observed share of its
  answers at each weight, counted from one second after the share changed to one second
  before the next change (the agent's status is polled to see when; a poll sees a change up
  to ~1 s late) (target: within ±3 points, over at least 1,000 requests: the default 15 s
  steps give about 1,300);
- a canary whose API fails 10 % of its requests (its health stays healthy): the time from its
  `min_requests`-th answer to the last answer it gave (target: within two intervals, plus the
  1 s after the abort in which it may still answer), failed requests it did not answer
  (target 0), the agent's CPU while it measured (target: at most 5 % of a core).

Not a test: it prints what it measured and whether each target was met, and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests import parts
from tests.parts_proxy import Load, ProxyProcess, caddy_binary, start_proxy, wait_serving

RATE = 100
INTERVAL = 2.0
MIN_REQUESTS = 100
WEIGHTS = (5, 25, 50)
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


def deploy_watched(root: parts.AgentRootDir, url: str, tag: str) -> tuple[int, Load, Watcher, str]:
    with Load(f"{url}/cgi-bin/api", rate=RATE, max_seconds=600) as load:
        load._stop.wait(1.0)
        proc = subprocess.Popen([str(parts.VENV_BIN / "obs-agent"), "deploy", tag], env=root.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        watcher = Watcher(root, proc, load._t0)
        watcher.run()
        out = proc.communicate()[0]
        load._stop.wait(2.0)
    return proc.returncode, load, watcher, out


def measure(kind: str, tmp: Path, registry: str, step_seconds: float) -> list[dict[str, Any]]:
    proxy: ProxyProcess = start_proxy(kind, tmp / kind, canary=True)
    root = parts.make_agent_root(
        tmp / kind / "observer", registry, f"obsbench-canary-{kind}-{uuid.uuid4().hex[:6]}",
        health_url=f"{proxy.url}/health", proxy=proxy.proxy_settings(drain_seconds=1),
        canary={"steps": [{"weight": w, "seconds": step_seconds} for w in WEIGHTS],
                "interval": INTERVAL, "min_requests": MIN_REQUESTS,
                "checks": [{"kind": "success_rate", "min": 0.99}]})
    compose = root.path / "docker-compose.server.yml"
    text = compose.read_text().replace(f'"127.0.0.1:{root.port}:8000"', '"127.0.0.1::8000"')
    # Not a single writer (it would be, carrying the path contract): a canary runs two releases.
    compose.write_text(text.replace("    restart: unless-stopped\n", (
        '    restart: unless-stopped\n    labels:\n      obsdeploy.single_writer: "false"\n'), 1))
    rows: list[dict[str, Any]] = []
    try:
        first = root.agent("deploy", "v1.0.0")
        if first.returncode != 0:
            raise RuntimeError(f"{kind}: the first deploy failed:\n{first.stdout}{first.stderr}")
        # nginx's old workers (the placeholder upstream before the first deploy) may still
        # answer for a moment after the reload: measured from when only v1.0.0 answers.
        wait_serving(f"{proxy.url}/health")
        code, load, watcher, out = deploy_watched(root, proxy.url, "v1.1.0")
        rows.append({"metric": f"{kind}, good canary: exit code", "value": code, "target": "0", "met": code == 0})
        bounds = watcher.changes + [(float("inf"), 100)]
        for (start, weight), (end, _) in zip(bounds, bounds[1:], strict=False):
            if weight >= 100:
                continue
            # A second off each end: the status poll sees a change up to ~1 s late.
            window = [a for a in load.answers if start + 1.0 <= a.sent < end - 1.0 and a.version]
            share = 100 * sum(1 for a in window if a.version == "v1.1.0") / max(len(window), 1)
            rows.append({"metric": f"{kind}, good canary at {weight} %: observed share", "value": round(share, 2),
                         "requests": len(window), "target": "within 3 points, >= 1000 requests",
                         "met": abs(share - weight) <= 3 and len(window) >= 1000})
        rows.append({"metric": f"{kind}, good canary: failed requests", "value": len(load.failed),
                     "target": "0", "met": not load.failed,
                     "note": "; ".join(f"{a.sent:.2f}s {a.detail}" for a in load.failed[:3])
                             + (f"; shares changed at {watcher.changes}" if load.failed else "")})

        code, load, watcher, out = deploy_watched(root, proxy.url, "v2.0.0-flaky")
        canary = sorted(a.sent for a in load.answers if a.version == "v2.0.0-flaky")
        reached = canary[MIN_REQUESTS - 1] if len(canary) >= MIN_REQUESTS else None
        last = canary[-1] if canary else None
        took = None if reached is None or last is None else round(last - reached, 3)
        reason = next((line for line in out.splitlines()[::-1] if "failed (" in line), out[-300:])
        rows.append({"metric": f"{kind}, 10 % failing canary: exit code", "value": code, "target": "20",
                     "met": code == 20, "note": f"{len(canary)} answers of the canary; {reason[-400:]}"})
        rows.append({"metric": f"{kind}, 10 % failing canary: its min_requests-th answer to its last answer",
                     "value": took, "unit": "s", "target": f"<= 2 intervals + 1 s ({2 * INTERVAL + 1:g} s)",
                     "met": took is not None and took <= 2 * INTERVAL + 1})
        others = [a for a in load.failed if a.version != "v2.0.0-flaky"]
        rows.append({"metric": f"{kind}, 10 % failing canary: failed requests not answered by it",
                     "value": len(others), "target": "0", "met": not others,
                     "note": "; ".join(f"{a.sent:.2f}s {a.detail}" for a in others[:3])})
        share = watcher.cpu_share()
        rows.append({"metric": f"{kind}, the agent's CPU while it measured", "unit": "% of a core",
                     "value": None if share is None else round(100 * share, 2), "target": "<= 5",
                     "met": share is not None and share <= 0.05,
                     "note": "utime+stime of the deploy's process between the first and the last "
                             "status that showed its canary (status runs in its own process)"})
        if code != 20:
            rows[-1]["note"] += f"; output: {out[-500:]}"
    finally:
        root.down()
        proxy.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--proxy", default="caddy,nginx", help="comma-separated: caddy, nginx")
    ap.add_argument("--step-seconds", type=float, default=15.0)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    import docker

    kinds = [k for k in args.proxy.split(",")
             if (k == "caddy" and Path(caddy_binary()).exists()) or (k == "nginx" and shutil.which("nginx"))]
    from bench.run import bench_lock

    rows: list[dict[str, Any]] = []
    with bench_lock(600), tempfile.TemporaryDirectory(prefix="obsbench-canary-") as tmp:
        registry = parts.Registry(Path(tmp) / "registry").start()
        client = docker.from_env()
        refs: dict[str, str] = {}
        try:
            refs = parts.build_fixture_images(client, registry.address)
            for kind in kinds:
                rows += measure(kind, Path(tmp), registry.address, args.step_seconds)
        finally:
            registry.stop()
            for ref in refs.values():  # this run's tags (the layers stay, shared)
                try:
                    client.images.remove(ref)
                except docker.errors.APIError:
                    pass
    for r in rows:
        print(f"{'met ' if r['met'] else 'MISS'}  {r['metric']}: {r['value']}{' ' + r['unit'] if r.get('unit') else ''}"
              f"  (target {r['target']}{'; ' + str(r['requests']) + ' requests' if 'requests' in r else ''})"
              + (f"  {r['note']}" if r.get("note") else ""))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"rows": rows, "rate": RATE, "interval": INTERVAL,
                                                   "min_requests": MIN_REQUESTS}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
