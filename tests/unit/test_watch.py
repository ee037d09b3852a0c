"""SPEC §16 without daemons: verdicts of the watch's checks, settings, redaction of
notification URLs, the notice, the metrics text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server_agent import metrics
from server_agent.common.redact import Redactor, url_secrets
from server_agent.notify import notice
from server_agent.settings import AgentSettings, HttpCheck, LogCheck, PrometheusCheck, WatchSettings
from server_agent.watch import counts_as_failed, judge_http, judge_log, judge_prometheus, prometheus_value


def prom(**limits: float) -> PrometheusCheck:
    return PrometheusCheck(kind="prometheus", name="err", url="http://p:9090", query="q", **limits)


def http(**fields: object) -> HttpCheck:
    return HttpCheck.model_validate({"kind": "http", "url": "http://s/health", "json": fields})


def test_http_verdicts_substitute_the_tag() -> None:
    body = json.dumps({"status": "healthy", "version": "v1.2.0", "build": {"commit": "abc"}}).encode()
    assert judge_http(http(version="{tag}"), "v1.2.0", 200, body).verdict == "pass"
    assert judge_http(http(**{"build.commit": "abc"}), "v1.2.0", 200, body).verdict == "pass"
    m = judge_http(http(version="{tag}"), "v1.3.0", 200, body)
    assert m.verdict == "fail" and "version='v1.2.0', expected 'v1.3.0'" in m.detail
    assert judge_http(http(), "v1", 500, b"").detail == "HTTP 500, expected 200"
    assert judge_http(http(missing="x"), "v1", 200, body).verdict == "fail"
    assert judge_http(http(version="v1"), "v1", 200, b"<html>").detail.endswith("not JSON")
    # The service under watch not answering is a failure of the release, not inconclusive.
    assert judge_http(http(), "v1", None, b"", "refused").verdict == "fail"


def test_prometheus_verdicts() -> None:
    assert judge_prometheus(prom(max=0.01), 0.01, None).verdict == "pass"
    assert judge_prometheus(prom(max=0.01), 0.02, None).detail == "0.02 > max 0.01"
    assert judge_prometheus(prom(max_increase=0.5), 1.4, 1.0).verdict == "pass"
    m = judge_prometheus(prom(max_increase=0.5), 1.6, 1.0)
    assert m.verdict == "fail" and "rose 0.6 above the baseline 1" in m.detail
    assert judge_prometheus(prom(max=1), None, None, "connection refused").verdict == "inconclusive"
    assert judge_prometheus(prom(max_increase=1), 3, None).verdict == "inconclusive"  # no baseline
    assert judge_prometheus(prom(max=1, max_increase=1), 3, None).verdict == "fail"  # max decides
    # verify has no switch to rise from: only max applies.
    assert judge_prometheus(prom(max_increase=0.1), 9, None, switched=False).verdict == "pass"


def test_prometheus_answers_must_hold_one_value() -> None:
    vec = {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "0.5"]}]}}
    assert prometheus_value(vec) == 0.5
    assert prometheus_value({"status": "success", "data": {"resultType": "scalar", "result": [1, "2"]}}) == 2
    two = {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "1"]}] * 2}}
    for bad, why in ((two, "2 series"), ({"status": "error", "error": "parse error"}, "parse error"),
                     ({"status": "success", "data": {"resultType": "vector", "result": []}}, "0 series"),
                     ({"status": "success", "data": {"resultType": "vector",
                                                     "result": [{"value": [1, "NaN"]}]}}, "NaN")):
        with pytest.raises(ValueError, match=why):
            prometheus_value(bad)


def test_log_verdicts_count_a_short_window_as_a_minute() -> None:
    check = LogCheck(kind="log", pattern="ERROR", max_per_minute=10)
    assert judge_log(check, 10, 0.1).verdict == "pass"  # not 100/min after 6 s
    assert judge_log(check, 11, 0.1).verdict == "fail"
    assert judge_log(check, 30, 2.0).verdict == "fail" and judge_log(check, 20, 2.0).verdict == "pass"
    assert judge_log(check, None, 1, "engine away").verdict == "inconclusive"


def test_inconclusive_fails_unless_pass() -> None:
    m = judge_prometheus(prom(max=1), None, None, "down")
    assert counts_as_failed(m, "fail") and not counts_as_failed(m, "pass")


def test_watch_settings() -> None:
    assert WatchSettings().seconds == 0 and WatchSettings().interval == 5
    assert WatchSettings().failure_limit == 1 and WatchSettings().inconclusive == "fail"
    for bad in ({"checks": [{"kind": "prometheus", "url": "http://p", "query": "q"}]},
                {"checks": [{"kind": "log", "pattern": "("}]},
                {"checks": [{"kind": "tcp"}]},
                {"checks": [{"kind": "http", "url": "ftp://x"}]},
                {"interval": 0}, {"inconclusive": "maybe"}, {"failure_limit": 0}):
        with pytest.raises(ValueError):
            WatchSettings.model_validate(bad)
    with pytest.raises(ValueError):
        AgentSettings(notify=["no-scheme"])


def test_notification_urls_are_redacted() -> None:
    url = "tgram://123456789:AAbbCCddEEffGGhhIIjj/987654"
    red = Redactor(url_secrets([url, "json://user:pass-word@10.0.0.1:8080/hook"]))
    assert red(f"sending to {url}") == "sending to ***"
    assert "AAbbCCddEEffGGhhIIjj" not in red("apprise: tgram://123456789:AAbbCCddEEffGGhhIIjj failed")
    assert red("auth pass-word refused") == "auth *** refused"
    assert red("user hook 10.0.0.1") == "user hook 10.0.0.1"  # words and addresses stay


def test_notice_says_what_happened() -> None:
    n = notice({"action": "deploy", "tag": "v2", "from_tag": "v1", "result": "rolled_back",
                "failure": {"reason": "watch: check 'err' fail: 0.2 > max 0.1"}, "duration_s": 31.5},
               "observer", host="vm1")
    assert n.level == "warning" and n.title == "[observer@vm1] deploy v2: rolled_back"
    assert n.body.splitlines() == ["host: vm1", "project: observer", "action: deploy", "release: v1 -> v2",
                                   "result: rolled_back", "reason: watch: check 'err' fail: 0.2 > max 0.1",
                                   "duration: 31.5 s"]


def test_metrics_text(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    records = [
        {"action": "deploy", "result": "success", "finished_at": "2026-01-01T00:00:10.000Z", "duration_s": 4},
        {"action": "deploy", "result": "rolled_back", "finished_at": "2026-01-01T00:01:00.000Z", "duration_s": 9},
        {"action": "deploy", "result": "interrupted", "started_at": "2026-01-01T00:02:00.000Z", "duration_s": None},
        {"action": "rollback", "result": "success", "finished_at": "2026-01-01T00:03:00.000Z", "duration_s": 3},
    ]
    path = tmp_path / "m" / "obsdeploy.prom"
    metrics.write(path, "obs", records, "v1", healthy=True)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(path.read_text()) for s in f.samples}
    assert samples[("obsdeploy_release_info", (("project", "obs"), ("tag", "v1")))] == 1
    assert samples[("obsdeploy_healthy", (("project", "obs"),))] == 1
    assert samples[("obsdeploy_attempts_total", (("action", "deploy"), ("project", "obs"),
                                                 ("result", "rolled_back")))] == 1
    assert samples[("obsdeploy_attempt_duration_seconds", (("action", "deploy"), ("project", "obs")))] == 9
    assert samples[("obsdeploy_last_attempt_timestamp_seconds", (
        ("action", "deploy"), ("project", "obs"), ("result", "interrupted")))] == 1767225720.0
    assert not any(n.endswith("_created") for n, _ in samples)
