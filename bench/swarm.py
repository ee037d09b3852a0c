#!/usr/bin/env python3
"""The swarm side of the benchmark: obs-agent driving a two-node Swarm against Swarm
alone, on the same two-node swarm (tests/parts_swarm.py builds it in network namespaces and
removes it at the end).

    .venv/bin/python -m bench.swarm [--runs N] [--json-out bench/results/swarm.json]

Sides, same compose file (2 replicas, one per node, port published in host mode, the same
Docker healthcheck), same fixture images:
  obs-agent    `obs-agent deploy TAG` with agent.engine swarm (health_url, stabilize_seconds 2)
  swarm alone  `docker stack deploy` with update_config failure_action rollback, order
               stop-first, monitor 5 s (Swarm's default); then waiting as
               `docker stack deploy --detach=false` of a newer CLI does (Docker 20.10 has no
               such flag): until the update is completed, rolled back or paused; exit 0.

Scenarios: healthy -> healthy, healthy -> crash-at-start, healthy -> error-answering (its
Docker healthcheck passes: busybox httpd answers 200 with {"status":"error"}).
A prober in the lab's switch namespace GETs /health on both nodes every 20 ms; per node, the
longest run of failed probes is that node's downtime ("node down", the worst node); "all down"
is the longest time no node answered; "restored" is the time until every node answers the
release it should (the new one, or the previous one after a failure). Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import ctypes
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.parts_swarm import SwarmLab, SwarmRoot, make_swarm_root

REPO = Path(__file__).resolve().parent.parent

SCENARIOS = {"good": "v1.1.0", "crash": "v2.0.0-crash", "error": "v2.0.0-error"}
CLONE_NEWNET = 0x40000000
SETTLED = ("completed", "rollback_completed", "paused", "rollback_paused")


class NetnsProber:
    """GET /health on every node every `interval`, from a thread that entered the switch's
    network namespace (setns affects only the calling thread)."""

    def __init__(self, netns: str, addresses: list[str], port: int, interval: float = 0.02) -> None:
        self.netns, self.addresses, self.port, self.interval = netns, addresses, port, interval
        self.samples: dict[str, list[tuple[float, bool, str | None]]] = {a: [] for a in addresses}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> NetnsProber:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        while not self._stop.is_set():
            t = time.monotonic()
            for addr in self.addresses:
                self.samples[addr].append((t, *self._probe(addr)))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t)))

    def _probe(self, addr: str) -> tuple[bool, str | None]:
        conn = http.client.HTTPConnection(addr, self.port, timeout=0.2)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            doc = json.loads(resp.read())
            return resp.status == 200 and doc.get("status") == "healthy", doc.get("version")
        except (OSError, ValueError, http.client.HTTPException):
            return False, None
        finally:
            conn.close()

    def window(self, t0: float) -> dict[str, list[tuple[float, bool, str | None]]]:
        return {a: [s for s in ss if s[0] >= t0] for a, ss in self.samples.items()}


def longest_outage(samples: list[tuple[float, bool, str | None]]) -> float:
    worst, start = 0.0, None
    for t, ok, _ in samples:
        if not ok and start is None:
            start = t
        elif ok and start is not None:
            worst, start = max(worst, t - start), None
    if start is not None and samples:
        worst = max(worst, samples[-1][0] - start)
    return round(worst, 3)


def service_outage(samples: dict[str, list[tuple[float, bool, str | None]]]) -> float:
    """The longest time no node answered healthy (what a client of both nodes sees)."""
    rounds = list(zip(*samples.values(), strict=False))
    merged: list[tuple[float, bool, str | None]] = [(r[0][0], any(ok for _, ok, _ in r), None)
                                                    for r in rounds]
    return longest_outage(merged)


def restored_at(samples: dict[str, list[tuple[float, bool, str | None]]], t0: float, version: str) -> float | None:
    """Seconds from t0 until every node answers `version` healthy (and keeps doing so)."""
    worst = 0.0
    for ss in samples.values():
        last_bad = next((t for t, ok, v in reversed(ss) if not (ok and v == version)), None)
        if ss and last_bad == ss[-1][0]:
            return None  # still not back at the end
        worst = max(worst, (last_bad or t0) - t0)
    return round(worst, 3)


# --- sides ------------------------------------------------------------------------------------
AGENT_NOTES: list[str] = []


def agent_deploy(root: SwarmRoot, tag: str) -> int:
    res = root.agent("deploy", tag, timeout=300)
    AGENT_NOTES[:] = [line for line in res.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    return res.returncode


def swarm_alone_deploy(root: SwarmRoot, lab: SwarmLab, tag: str) -> int:
    """`docker stack deploy` of the user's own file, then wait like --detach=false."""
    env = root.env(IMAGE_TAG=tag)
    for line in (root.path / ".env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value
    env.update({"QTS_OBSERVER_STANDALONE": "1", "PYTHONPATH": "/app/src"})
    # An update of an existing service has an UpdateStatus once Swarm starts it: wait for that.
    updating = lab.manager.docker("service", "inspect", f"{root.project}_observer",
                                  check=False).returncode == 0
    res = subprocess.run(["docker", "-H", lab.manager.host, "stack", "deploy", "--compose-file",
                          str(root.path / "alone.yml"), "--with-registry-auth", root.project],
                         env=env, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(res.stderr)
    deadline = time.monotonic() + 180
    service = f"{root.project}_observer"
    while time.monotonic() < deadline:
        out = lab.manager.docker("service", "inspect", service, "--format", "{{json .UpdateStatus}}").stdout
        status = json.loads(out or "null") or {}
        if status.get("State") in SETTLED:
            return 0  # what the CLI returns, rolled back or not (docker/cli#6752)
        if not status and not updating:  # the first deploy: no update; wait for the replicas
            tasks = lab.manager.docker("service", "ps", service, "--filter", "desired-state=running",
                                       "--format", "{{.CurrentState}}").stdout.split("\n")
            if sum(1 for t in tasks if t.startswith("Running")) == 2:
                return 0
        time.sleep(0.2)
    return 124


def alone_compose(root: SwarmRoot) -> None:
    text = (root.path / "docker-compose.server.yml").read_text()
    text = text.replace("      endpoint_mode: dnsrr\n", "      endpoint_mode: dnsrr\n      update_config:\n"
                        "        order: stop-first\n        failure_action: rollback\n"
                        "      rollback_config:\n        order: stop-first\n")
    (root.path / "alone.yml").write_text(text)


def measure(side: str, root: SwarmRoot, lab: SwarmLab, prober: NetnsProber, scenario: str) -> dict[str, Any]:
    base = "v1.0.0"
    deploy = (lambda tag: agent_deploy(root, tag)) if side == "obs-agent" else \
        (lambda tag: swarm_alone_deploy(root, lab, tag))
    if deploy(base) != 0:
        raise RuntimeError(f"{side}: the base release did not deploy")
    time.sleep(1)
    tag = SCENARIOS[scenario]
    t0 = time.monotonic()
    code = deploy(tag)
    wall = round(time.monotonic() - t0, 3)
    time.sleep(2)  # what follows the command's return counts too
    window = prober.window(t0)
    expect = tag if scenario == "good" else base
    final = {a: (ss[-1][2] if ss else None) for a, ss in window.items()}
    return {
        "side": side, "scenario": scenario, "exit_code": code, "wall_s": wall,
        "downtime_s": max(longest_outage(ss) for ss in window.values()),
        "service_down_s": service_outage(window),
        "restored_s": restored_at(window, t0, expect),
        "final_versions": final, "right_release": all(v == expect for v in final.values()),
        "agent_log": list(AGENT_NOTES) if side == "obs-agent" else [],
    }


def median(rs: list[dict[str, Any]], key: str) -> float:
    return statistics.median([r[key] for r in rs if r[key] is not None] or [float("nan")])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default=",".join(SCENARIOS), help="scenarios, comma-separated")
    ap.add_argument("--json-out", default=str(REPO / "bench" / "results" / "swarm.json"))
    args = ap.parse_args()
    lab = SwarmLab()
    runs: list[dict[str, Any]] = []
    try:
        lab.start()
        lab.push_fixture_images()
        for scenario in args.only.split(","):
            for side in ("obs-agent", "swarm alone"):
                for _ in range(args.runs):
                    with tempfile.TemporaryDirectory(prefix="obsw-bench-") as tmp:
                        root = make_swarm_root(Path(tmp) / "observer", lab, stabilize_seconds=2)
                        alone_compose(root)
                        prober = NetnsProber(lab.switch, [n.address for n in lab.nodes], root.port).start()
                        try:
                            runs.append(measure(side, root, lab, prober, scenario))
                        finally:
                            prober.stop()
                            root.down()
                            time.sleep(2)
                    print(json.dumps(runs[-1]), flush=True)
    finally:
        lab.destroy()
    table = []
    for scenario in args.only.split(","):
        for side in ("obs-agent", "swarm alone"):
            rs = [r for r in runs if r["scenario"] == scenario and r["side"] == side]
            table.append({"scenario": scenario, "side": side, "runs": len(rs),
                          "exit_codes": sorted({r["exit_code"] for r in rs}),
                          "wall_s": median(rs, "wall_s"), "downtime_s": median(rs, "downtime_s"),
                          "service_down_s": median(rs, "service_down_s"),
                          "restored_s": median(rs, "restored_s"),
                          "right_release": all(r["right_release"] for r in rs)})
    print(f"{'scenario':<8} {'side':<12} {'exit':<8} {'wall s':>7} {'node down s':>11} "
          f"{'all down s':>10} {'restored s':>10}  right release")
    for row in table:
        print(f"{row['scenario']:<8} {row['side']:<12} {str(row['exit_codes']):<8} {row['wall_s']:>7.2f} "
              f"{row['downtime_s']:>11.2f} {row['service_down_s']:>10.2f} {row['restored_s']:>10.2f}  "
              f"{row['right_release']}")
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"table": table, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
