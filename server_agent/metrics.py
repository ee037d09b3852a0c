"""`agent.metrics_file`: the deploy status in Prometheus text format (SPEC §16), for
node_exporter's textfile collector, rewritten atomically after every attempt.

The numbers are read from history (the one record of attempts), so an attempt that was
killed counts as `interrupted` from the next run on, and the file can always be rebuilt.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

RESULTS = ("success", "rolled_back", "failed", "interrupted")


def _timestamp(value: Any) -> float | None:
    # History writes "...Z"; Python 3.10's fromisoformat (the agent supports it) wants +00:00.
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class DeployCollector:
    """prometheus-client collector over history records (oldest first)."""

    def __init__(self, project: str, records: list[dict[str, Any]], release: str | None,
                 healthy: bool, canary: tuple[str, int] | None = None) -> None:
        self.canary = canary
        self.project = project
        self.records = records
        self.release = release
        self.healthy = healthy

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        p = self.project
        info = GaugeMetricFamily("obsdeploy_release_info", "The release that runs (label tag); 1",
                                 labels=["project", "tag"])
        if self.release:
            info.add_metric([p, self.release], 1)
        yield info
        healthy = GaugeMetricFamily("obsdeploy_healthy",
                                    "1 when the last attempt left a release that passed its gate running",
                                    labels=["project"])
        healthy.add_metric([p], 1 if self.healthy else 0)
        yield healthy
        weight = GaugeMetricFamily("obsdeploy_canary_weight",
                                   "The percent of requests the proxy sends to a canary release "
                                   "(100 once promoted, 0 once aborted)", labels=["project", "tag"])
        if self.canary is not None:
            weight.add_metric([p, self.canary[0]], self.canary[1])
        yield weight
        attempts = CounterMetricFamily("obsdeploy_attempts", "Deploy and rollback attempts by result",
                                       labels=["project", "action", "result"])
        counts = Counter((str(r.get("action")), str(r.get("result"))) for r in self.records)
        for (action, result), n in sorted(counts.items()):
            attempts.add_metric([p, action, result], n)
        yield attempts
        last = GaugeMetricFamily("obsdeploy_last_attempt_timestamp_seconds",
                                 "When the newest attempt of this action and result ended (Unix time)",
                                 labels=["project", "action", "result"])
        newest: dict[tuple[str, str], float] = {}
        durations: dict[str, float] = {}
        for r in self.records:
            ts = _timestamp(r.get("finished_at")) or _timestamp(r.get("started_at"))
            key = (str(r.get("action")), str(r.get("result")))
            if ts is not None:
                newest[key] = max(ts, newest.get(key, ts))
            if isinstance(r.get("duration_s"), int | float):
                durations[str(r.get("action"))] = float(r["duration_s"])
        for (action, result), ts in sorted(newest.items()):
            last.add_metric([p, action, result], ts)
        yield last
        duration = GaugeMetricFamily("obsdeploy_attempt_duration_seconds",
                                     "How long the newest finished attempt of this action took",
                                     labels=["project", "action"])
        for action, seconds in sorted(durations.items()):
            duration.add_metric([p, action], seconds)
        yield duration


def write(path: Path, project: str, records: list[dict[str, Any]], release: str | None,
          healthy: bool, canary: tuple[str, int] | None = None) -> None:
    """Replace `path` atomically (prometheus-client writes a temporary file beside it, whose
    name does not end in .prom, and renames it)."""
    from prometheus_client import CollectorRegistry, write_to_textfile

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DeployCollector(project, records, release, healthy, canary))  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
