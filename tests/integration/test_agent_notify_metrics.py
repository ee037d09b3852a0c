"""Notifications through apprise and the metrics file (SPEC §16), end to end: a local HTTP
endpoint receives apprise's json:// posts; a real node_exporter reads the metrics file."""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import missing
from tests.parts import OUTPUTS, REPO, SECRETS, AgentRootDir, history, no_traceback
from tests.parts_watch import HangingEndpoint, NodeExporter, NotificationSink, Prometheus, http_json

pytestmark = pytest.mark.integration

TOKEN = "tok-NOTIFY-SENTINEL-93be1f"  # the notification URL's secret part


@pytest.fixture
def sink() -> Iterator[NotificationSink]:
    s = NotificationSink()
    yield s
    s.stop()


def test_every_deploy_and_rollback_is_notified_without_secrets(agent_root: AgentRootDir,
                                                              sink: NotificationSink) -> None:
    url = f"json://obs:{TOKEN}@127.0.0.1:{sink.port}/hook"
    env = agent_root.env(OBS_AGENT_NOTIFY=json.dumps([url]))
    start = len(OUTPUTS)
    assert agent_root.agent("deploy", "v1.0.0", env=env).returncode == 0
    res = agent_root.agent("deploy", "v2.0.0-error", env=env)
    assert res.returncode == 20, res.stdout + res.stderr
    res = agent_root.agent("rollback", "v1.0.0", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert [r["path"] for r in sink.received] == ["/hook"] * 3
    messages = [r["body"]["title"] + "\n" + r["body"]["message"] for r in sink.received]
    host = socket.gethostname()
    for m in messages:
        assert f"host: {host}" in m and f"project: {agent_root.project}" in m, m
        assert re.search(r"duration: [0-9.]+ s", m), m
    assert "action: deploy" in messages[0] and "release: (none) -> v1.0.0" in messages[0]
    assert "result: success" in messages[0] and "reason: healthy" in messages[0]
    assert "release: v1.0.0 -> v2.0.0-error" in messages[1] and "result: rolled_back" in messages[1]
    assert "reason: health_url answered a failure 3 times in a row" in messages[1], messages[1]
    assert "action: rollback" in messages[2] and "release: v1.0.0 -> v1.0.0" in messages[2]
    assert [r["body"]["type"] for r in sink.received] == ["success", "warning", "success"]
    # The token went where it belongs (apprise's basic auth) and nowhere else.
    assert all("Authorization" in r["headers"] for r in sink.received)
    for r in sink.received:
        text = json.dumps(r["body"])
        assert TOKEN not in text and not any(v in text for v in SECRETS.values()), text
    assert not any(TOKEN in out for out in OUTPUTS[start:])
    leaked = [str(p) for p in agent_root.path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert not leaked, leaked


def test_a_bad_notify_url_is_refused_without_showing_it(agent_root: AgentRootDir) -> None:
    res = agent_root.agent("check", env=agent_root.env(OBS_AGENT_NOTIFY=json.dumps([f"{TOKEN}-no-scheme"])))
    assert res.returncode == 10
    assert "notify" in res.stdout and "not an apprise URL" in res.stdout
    assert TOKEN not in res.stdout + res.stderr


@pytest.mark.parametrize("tag, code", [("v1.1.0", 0), ("v2.0.0-error", 20)])
def test_a_hanging_notification_endpoint_costs_at_most_5_s_and_never_the_exit_code(
        agent_root: AgentRootDir, tag: str, code: int) -> None:
    hang = HangingEndpoint()
    try:
        assert agent_root.agent("deploy", "v1.0.0").returncode == 0
        # rto/cto: apprise itself would wait 30 s for the answer; the agent must not.
        url = f"json://127.0.0.1:{hang.port}/hook?rto=30&cto=30"
        t = time.monotonic()
        res = agent_root.agent("deploy", tag, env=agent_root.env(OBS_AGENT_NOTIFY=json.dumps([url])))
        took = time.monotonic() - t
    finally:
        hang.stop()
    no_traceback(res)
    assert res.returncode == code, res.stdout + res.stderr
    assert hang.held, "apprise never reached the endpoint"
    assert "notify: no answer within 5s" in res.stderr
    rec = history(agent_root)[0]
    # The attempt itself, plus the 5 s budget, plus the agent's start and exit (~1 s).
    assert took - rec["duration_s"] < 5 + 2.5, (took, rec["duration_s"])


def test_node_exporter_reads_the_metrics_file_and_the_dashboard_shows_it(
        agent_root: AgentRootDir, tmp_path: Path) -> None:
    for binary, package in (("prometheus-node-exporter", "prometheus-node-exporter"),
                            ("prometheus", "prometheus")):
        if not shutil.which(binary):
            missing(f"{binary} (Debian package `{package}`)")
    textfiles = tmp_path / "textfile"
    node = NodeExporter(textfiles).start()
    prom = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{node.port}"]).start()
    try:
        env = agent_root.env(OBS_AGENT_METRICS_FILE=str(textfiles / "obsdeploy.prom"))
        assert agent_root.agent("deploy", "v1.0.0", env=env).returncode == 0
        first = node.scrape()
        assert agent_root.agent("deploy", "v2.0.0-error", env=env).returncode == 20
        assert agent_root.agent("deploy", "v1.1.0", env=env).returncode == 0
        text = node.scrape()
        assert_dashboard_queries_answer(prom, agent_root.project)
    finally:
        prom.stop()
        node.stop()
    p = agent_root.project
    assert "node_textfile_scrape_error 0" in first and "node_textfile_scrape_error 0" in text, text
    assert f'obsdeploy_attempts_total{{action="deploy",project="{p}",result="success"}} 1' in first
    for line in (
        f'obsdeploy_attempts_total{{action="deploy",project="{p}",result="success"}} 2',
        f'obsdeploy_attempts_total{{action="deploy",project="{p}",result="rolled_back"}} 1',
        f'obsdeploy_release_info{{project="{p}",tag="v1.1.0"}} 1',
        f'obsdeploy_healthy{{project="{p}"}} 1',
    ):
        assert line in text, f"{line} not in:\n{text}"
    for name in ("obsdeploy_last_attempt_timestamp_seconds", "obsdeploy_attempt_duration_seconds"):
        assert re.search(rf'^{name}{{action="deploy",project="{p}".*}} [0-9.e+]+$', text, re.M), text
    ts = float(re.search(rf'obsdeploy_last_attempt_timestamp_seconds{{action="deploy",project="{p}",'
                         r'result="success"} ([0-9.e+]+)', text).group(1))  # type: ignore[union-attr]
    assert abs(ts - time.time()) < 120
    # Written atomically: nothing but the file itself is left beside it.
    assert [f.name for f in textfiles.iterdir()] == ["obsdeploy.prom"]


def assert_dashboard_queries_answer(prom: Prometheus, project: str) -> None:
    """Every panel of compose/grafana-dashboard.json, with its variables filled in, asks the
    real Prometheus (scraping the node_exporter) something it answers with data."""
    dashboard = json.loads((REPO / "compose" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert {m for e in exprs for m in re.findall(r"obsdeploy_\w+", e)} >= {
        "obsdeploy_release_info", "obsdeploy_attempts_total", "obsdeploy_last_attempt_timestamp_seconds",
        "obsdeploy_attempt_duration_seconds", "obsdeploy_healthy"}
    import urllib.parse

    for expr in exprs:
        query = (expr.replace("$project", project).replace("$instance", ".*")
                 .replace("$__range", "1h"))
        deadline = time.monotonic() + 20
        while True:
            doc = http_json(f"{prom.url}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
            assert doc["status"] == "success", (query, doc)
            if doc["data"]["result"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert doc["data"]["result"], f"no data for the dashboard's {query}"
