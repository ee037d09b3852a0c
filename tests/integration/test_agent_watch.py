"""The watch window after the gate and `obs-agent verify` (SPEC §16), against a real
Prometheus scraping an exporter in this process (its value raised after the switch), the
fixture observer's health JSON, and its container logs."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import missing
from tests.faults import collect, serving, spawn, wait_for
from tests.parts import AgentRootDir, free_port, history, no_traceback
from tests.parts_watch import Exporter, Prometheus

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    exp = Exporter().start()
    yield exp
    exp.stop()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, exporter: Exporter) -> Iterator[Prometheus]:
    if not shutil.which("prometheus"):
        missing("prometheus (Debian package `prometheus`)")
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{exporter.port}"]).start()
    yield prom
    prom.stop()


@pytest.fixture
def series(exporter: Exporter, prometheus: Prometheus) -> Iterator[Callable[[float], None]]:
    """This test's own series of the exporter's gauge; set(v) waits until Prometheus has it."""
    case = uuid.uuid4().hex[:8]
    query = f'obs_test_value{{case="{case}"}}'

    def set_value(v: float, wait: bool = True) -> None:
        exporter.gauge.labels(case).set(v)
        if wait:
            prometheus.wait_value(query, v)

    set_value.query = query  # type: ignore[attr-defined]
    yield set_value
    exporter.gauge.remove(case)


def watch_env(root: AgentRootDir, **watch: Any) -> dict[str, str]:
    return root.env(OBS_AGENT_WATCH=json.dumps(watch))


def prom_check(prom_url: str, query: str, **limits: float) -> dict[str, Any]:
    return {"kind": "prometheus", "name": "errors", "url": prom_url, "query": query, **limits}


def health_check(root: AgentRootDir, **fields: str) -> dict[str, Any]:
    return {"kind": "http", "url": f"http://127.0.0.1:{root.port}/health", "status": 200, "json": fields}


def deploy_on_probation(root: AgentRootDir, tag: str, env: dict[str, str],
                        during: Callable[[], None] = lambda: None) -> subprocess.CompletedProcess[str]:
    """Deploy `tag`; once its watch has begun (its gates passed), check that it serves and is
    not yet the last good release, then call `during`."""
    before = root.last_good()
    proc = spawn(root, "deploy", tag, env=env)
    try:
        wait_for(lambda: watching(root), 60, f"the watch of {tag} to begin", interval=0.05)
        assert serving(root) == tag
        assert root.last_good() == before, "last_good_tag was written before the watch ended"
        during()
    finally:
        res = collect(proc)
    no_traceback(res)
    return res


def watching(root: AgentRootDir) -> bool:
    """The attempt's journal says its watch runs."""
    try:
        journal = json.loads((root.path / "state" / "attempt.json").read_text())
    except (FileNotFoundError, ValueError):
        return False
    return (journal.get("watch") or {}).get("result") == "watching"


def first(root: AgentRootDir, tag: str = "v1.0.0") -> None:
    res = root.agent("deploy", tag)
    assert res.returncode == 0, res.stdout + res.stderr


# --- prometheus ------------------------------------------------------------------------------
def test_a_rise_over_max_after_the_switch_rolls_back(agent_root: AgentRootDir, prometheus: Prometheus,
                                                    series: Any) -> None:
    series(0)
    first(agent_root)
    env = watch_env(agent_root, seconds=20, interval=0.5,
                    checks=[prom_check(prometheus.url, series.query, max=0.5)])
    raised: list[float] = []

    def raise_it() -> None:
        series(1, wait=False)
        raised.append(time.monotonic())

    res = deploy_on_probation(agent_root, "v1.1.0", env, raise_it)
    assert res.returncode == 20, res.stdout + res.stderr
    # Within a scrape and a round of the rise, far from the end of the 20 s watch.
    assert time.monotonic() - raised[0] < 10
    assert serving(agent_root) == "v1.0.0" and agent_root.last_good() == "v1.0.0"
    rec = history(agent_root)[0]
    assert rec["result"] == "rolled_back" and rec["tag"] == "v1.1.0"
    assert "watch: check 'errors' fail: 1 > max 0.5" in rec["failure"]["reason"], rec["failure"]
    assert rec["watch"]["result"] == "failed"
    assert [(m["verdict"], m["value"]) for m in rec["watch"]["failures"]] == [("fail", 1.0)]
    # The history view says why the watch rolled the release back.
    text = agent_root.agent("history", "--limit", "1").stdout
    assert "rolled_back" in text and "errors fail: 1 > max 0.5" in text, text


def test_a_rise_over_the_baseline_by_more_than_max_increase_rolls_back(
        agent_root: AgentRootDir, prometheus: Prometheus, series: Any) -> None:
    series(5)
    first(agent_root)
    env = watch_env(agent_root, seconds=20, interval=0.5,
                    checks=[prom_check(prometheus.url, series.query, max=100, max_increase=1)])
    res = deploy_on_probation(agent_root, "v1.1.0", env, lambda: series(7, wait=False))
    assert res.returncode == 20, res.stdout + res.stderr
    rec = history(agent_root)[0]
    assert rec["watch"]["baseline"] == {"errors": 5.0}
    assert "7 rose 2 above the baseline 5 (max_increase 1)" in rec["failure"]["reason"], rec["failure"]
    assert serving(agent_root) == "v1.0.0"


def test_a_watch_that_ends_well_commits_after_it(agent_root: AgentRootDir, prometheus: Prometheus,
                                                 series: Any) -> None:
    """Steady value, the health JSON names the release ({tag}), no panic in the log:
    exit 0, and last_good_tag is written only when the watch is over. Then `verify`."""
    series(0.2)
    first(agent_root)
    checks = [prom_check(prometheus.url, series.query, max=0.5, max_increase=0.1),
              health_check(agent_root, version="{tag}", status="healthy"),
              {"kind": "log", "pattern": "panic|fatal:", "max_per_minute": 0}]
    env = watch_env(agent_root, seconds=3, interval=0.5, checks=checks)
    res = deploy_on_probation(agent_root, "v1.1.0", env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert agent_root.last_good() == "v1.1.0"
    rec = history(agent_root)[0]
    assert rec["result"] == "success" and rec["steps"]["watch"] >= 3
    assert rec["watch"]["result"] == "passed" and rec["watch"]["rounds"] >= 5
    assert [m["verdict"] for m in rec["watch"]["last"]] == ["pass"] * 3
    assert "version as expected" in rec["watch"]["last"][1]["detail"]

    # verify: the same checks once against the running release.
    out = agent_root.agent("verify", "--json", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True and report["tag"] == "v1.1.0"
    assert [m["verdict"] for m in report["checks"]] == ["pass"] * 3
    series(0.7)  # over max
    out = agent_root.agent("verify", env=env)
    assert out.returncode == 22, out.stdout + out.stderr
    assert "FAILED" in out.stdout and "0.7 > max 0.5" in out.stdout
    assert serving(agent_root) == "v1.1.0"  # verify changes nothing


def test_an_unreachable_prometheus_is_inconclusive(agent_root: AgentRootDir) -> None:
    first(agent_root)
    nowhere = f"http://127.0.0.1:{free_port()}"
    check = prom_check(nowhere, "sum(rate(errors_total[1m]))", max=0.01)
    res = agent_root.agent("deploy", "v1.1.0", env=watch_env(agent_root, seconds=1, interval=0.3,
                                                             checks=[check]))
    assert res.returncode == 20, res.stdout + res.stderr
    rec = history(agent_root)[0]
    assert "check 'errors' inconclusive: cannot be measured" in rec["failure"]["reason"], rec
    assert serving(agent_root) == "v1.0.0"
    # With inconclusive: "pass" it is reported and the release stays.
    res = agent_root.agent("deploy", "v1.2.0", env=watch_env(agent_root, seconds=1, interval=0.3,
                                                             checks=[check], inconclusive="pass"))
    assert res.returncode == 0, res.stdout + res.stderr
    rec = history(agent_root)[0]
    assert rec["watch"]["last"][0]["verdict"] == "inconclusive"
    assert rec["watch"]["failures"] and agent_root.last_good() == "v1.2.0"


# --- http and log checks, containers ---------------------------------------------------------
def test_an_http_check_with_the_wrong_version_rolls_back(agent_root: AgentRootDir) -> None:
    env = watch_env(agent_root, seconds=2, interval=0.3, checks=[health_check(agent_root, version="v9.9.9")])
    res = agent_root.agent("verify", "--json", env=env)  # nothing runs yet
    assert res.returncode == 22 and json.loads(res.stdout)["reason"] == "no release is running", res.stdout
    first(agent_root)
    res = agent_root.agent("verify", env=env)
    assert res.returncode == 22 and "version='v1.0.0', expected 'v9.9.9'" in res.stdout, res.stdout
    res = agent_root.agent("deploy", "v1.1.0", env=env)
    assert res.returncode == 20, res.stdout + res.stderr
    reason = history(agent_root)[0]["failure"]["reason"]
    assert "version='v1.1.0', expected 'v9.9.9'" in reason, reason
    assert serving(agent_root) == "v1.0.0"


def test_a_log_check_counts_lines_since_the_switch(agent_root: AgentRootDir) -> None:
    first(agent_root)
    # The fixture says "observer v1.1.0 ready" once after its start: one line > 0 per minute.
    env = watch_env(agent_root, seconds=2, interval=0.3,
                    checks=[{"kind": "log", "name": "ready lines", "pattern": "ready", "max_per_minute": 0}])
    res = agent_root.agent("deploy", "v1.1.0", env=env)
    assert res.returncode == 20, res.stdout + res.stderr
    reason = history(agent_root)[0]["failure"]["reason"]
    assert "check 'ready lines' fail: 1 matching line(s)" in reason, reason
    # One a minute allowed: passes.
    env = watch_env(agent_root, seconds=1, interval=0.3,
                    checks=[{"kind": "log", "pattern": "ready", "max_per_minute": 1}])
    assert agent_root.agent("deploy", "v1.1.0", env=env).returncode == 0


def test_a_release_container_that_exits_during_the_watch_fails_at_once(agent_root: AgentRootDir) -> None:
    first(agent_root)
    env = watch_env(agent_root, seconds=60, interval=5, checks=[health_check(agent_root, version="{tag}")])
    killed: list[float] = []

    def kill_release() -> None:
        ids = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project="
                              f"{agent_root.project}", "--filter", "label=obsdeploy.release=v1.1.0"],
                             capture_output=True, text=True).stdout.split()
        assert len(ids) == 1
        subprocess.run(["docker", "kill", ids[0]], check=True, capture_output=True)
        killed.append(time.monotonic())

    res = deploy_on_probation(agent_root, "v1.1.0", env, kill_release)
    assert res.returncode == 20, res.stdout + res.stderr
    assert time.monotonic() - killed[0] < 10, "the agent waited for the watch instead of failing at once"
    rec = history(agent_root)[0]
    assert "watch: container" in rec["failure"]["reason"] and "exited" in rec["failure"]["reason"]
    assert serving(agent_root) == "v1.0.0" and agent_root.last_good() == "v1.0.0"
    # The kept previous release was started again, not re-created.
    assert rec["steps"]["restore"] < 10


def test_bad_watch_settings_are_refused_naming_the_field(agent_root: AgentRootDir, tmp_path: Path) -> None:
    env = watch_env(agent_root, seconds=5, checks=[{"kind": "prometheus", "url": "http://x", "query": "up"}])
    res = agent_root.agent("check", env=env)
    assert res.returncode == 10
    assert "watch.checks.0.prometheus" in res.stdout + res.stderr
    assert "needs `max`, `max_increase` or both" in res.stdout + res.stderr
