"""The canary by weight (server_agent/canary.py, the proxies' splits): settings, the access
log, the verdicts, and the run of the steps against a fake clock and a real log file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from server_agent.canary import (
    REQUEST_FILE,
    AccessLog,
    Answer,
    Answers,
    Canary,
    CanaryPlan,
    judge_latency,
    judge_success_rate,
    leave_request,
    parse_line,
    quantile_ms,
)
from server_agent.common.errors import UsageError
from server_agent.proxy import (
    ProxyError,
    caddy_change,
    caddy_server,
    caddy_slotted_server,
    caddy_version,
    nginx_upstreams,
    parse_nginx_upstreams,
    split_weights,
    traefik_weighted,
)
from server_agent.settings import AgentSettings, CanarySettings, LatencyCheck, SuccessRateCheck, load_settings

NGINX = {"kind": "nginx", "service": "observer", "port": 8000, "upstream_file": "/etc/nginx/o.upstream",
         "access_log": "/var/log/nginx/o.log"}
SEED = {"steps": [{"weight": 5, "seconds": 900}, {"weight": 25, "seconds": 900},
                  {"weight": 50, "seconds": 900}],
        "checks": [{"kind": "success_rate", "min": 0.999},
                   {"kind": "latency", "quantile": 0.95, "max_ms": 500, "max_ratio": 1.5}]}


# --- settings ---------------------------------------------------------------------------------
def test_the_seeds_plan_is_valid_with_its_defaults() -> None:
    s = AgentSettings(proxy=NGINX, canary=SEED)
    assert s.canary is not None
    c = s.canary
    assert [st.weight for st in c.steps] == [5, 25, 50]
    assert (c.interval, c.min_requests, c.inconclusive, c.max_hold_seconds, c.sticky) == (10, 100, "hold", 900, False)


@pytest.mark.parametrize("canary, proxy, names", [
    ({**SEED, "steps": [{"weight": 25, "seconds": 1}, {"weight": 5, "seconds": 1}]}, NGINX,
     ["agent.canary.steps", "must rise", "step 2 has 5 after 25"]),
    ({**SEED, "steps": [{"weight": 100, "seconds": 1}]}, NGINX, ["agent.canary.steps.0.weight", "less than 100"]),
    ({**SEED, "steps": []}, NGINX, ["agent.canary.steps"]),
    ({**SEED, "inconclusive": "maybe"}, NGINX, ["agent.canary.inconclusive", "'hold', 'fail' or 'pass'"]),
    ({**SEED, "checks": [{"kind": "latency", "quantile": 0.95}]}, NGINX,
     ["agent.canary.checks.0.latency", "max_ms", "max_ratio"]),
    ({**SEED, "checks": [{"kind": "success_rate", "min": 2}]}, NGINX, ["agent.canary.checks.0.success_rate.min"]),
    ({**SEED, "stepz": []}, NGINX, ["agent.canary.stepz", "unknown key"]),
    (SEED, None, ["canary needs proxy"]),
    (SEED, {k: v for k, v in NGINX.items() if k != "access_log"}, ["needs proxy.access_log"]),
    ({**SEED, "max_hold_seconds": -1}, NGINX, ["agent.canary.max_hold_seconds"]),
])
def test_bad_canary_settings_name_the_key(canary: dict[str, Any], proxy: dict[str, Any] | None,
                                          names: list[str]) -> None:
    agent: dict[str, Any] = {"canary": canary}
    if proxy is not None:
        agent["proxy"] = proxy
    with pytest.raises(UsageError) as exc:
        load_settings(agent, "deployment_config.json")
    for name in names:
        assert name in str(exc.value), str(exc.value)


# --- the proxies' splits ------------------------------------------------------------------------
def test_split_weights_give_the_canary_its_share_over_any_number_of_containers() -> None:
    assert split_weights(["s1"], ["c1"], 5) == [("s1", 95), ("c1", 5)]
    pairs = split_weights(["s1", "s2"], ["c1"], 25)
    canary = sum(w for a, w in pairs if a.startswith("c"))
    assert canary / sum(w for _, w in pairs) == 0.25
    for bad in ((["s"], [], 5), ([], ["c"], 5), (["s"], ["c"], 0), (["s"], ["c"], 100)):
        with pytest.raises(ProxyError):
            split_weights(*bad)  # type: ignore[arg-type]


def test_caddy_slotted_server_and_its_access_log() -> None:
    server = caddy_slotted_server("obsdeploy-o", [":80"], [], ["/p/canary-00", "/p/canary-01"], access_log=True)
    handle = server["routes"][0]["handle"]
    assert handle[0] == {"handler": "log_append", "key": "upstream",
                         "value": "{http.reverse_proxy.upstream.hostport}"}
    assert handle[1]["upstreams"] == [{"dial": "{file./p/canary-00}"}, {"dial": "{file./p/canary-01}"}]
    assert handle[1]["load_balancing"] == {"selection_policy": {"policy": "round_robin"}}
    assert server["logs"] == {"default_logger_name": "obsdeploy_o"}
    plain = caddy_server("obsdeploy-o", [":80"], [], ["s:1"])
    assert "logs" not in plain and "load_balancing" not in plain["routes"][0]["handle"][0]
    # The logger goes under logging.logs, created as deep as needed.
    assert caddy_change({"apps": {"http": {}}}, "obsdeploy_o", {"x": 1}, ["logging", "logs"]) == \
        ("/config/logging", {"logs": {"obsdeploy_o": {"x": 1}}})
    assert caddy_change({"logging": {"logs": {"default": {}}}}, "obsdeploy_o", {"x": 1}, ["logging", "logs"]) == \
        ("/config/logging/logs/obsdeploy_o", {"x": 1})


def test_slot_addresses_give_the_canary_its_share_and_a_rising_weight_only_adds_slots() -> None:
    from server_agent.proxy import CANARY_SLOTS, canary_slot_order, slot_addresses

    assert sorted(canary_slot_order()) == list(range(CANARY_SLOTS))
    five = slot_addresses(["s:1"], ["c:1"], 5)
    assert five.count("c:1") == 5 and five.count("s:1") == 95
    spots = sorted(i for i, a in enumerate(five) if a == "c:1")
    assert max(b - a for a, b in zip(spots, spots[1:], strict=False)) <= 30, spots  # spread, not bunched
    quarter = slot_addresses(["s:1"], ["c:1"], 25)
    assert {i for i, a in enumerate(five) if a == "c:1"} <= {i for i, a in enumerate(quarter) if a == "c:1"}
    two = slot_addresses(["s:1", "s:2"], ["c:1", "c:2"], 50)
    assert {a: two.count(a) for a in set(two)} == {"s:1": 25, "s:2": 25, "c:1": 25, "c:2": 25}
    assert set(slot_addresses(["s:1"], [], 0)) == {"s:1"}
    assert set(slot_addresses([], ["c:1"], 100)) == {"c:1"}
    with pytest.raises(ProxyError):
        slot_addresses(["s:1"], [], 5)


def test_a_canary_through_caddy_changes_its_config_once_and_then_only_slot_files(tmp_path: Path) -> None:
    """Every caddy config change closes a few client connections: with a canary configured,
    the first release puts the slotted server, and every later switch, split, promotion
    or abort only rewrites slot files (those whose address moves)."""
    from server_agent.proxy import Caddy, CaddyHold
    from tests.unit.fakes import CaddyAdmin

    admin = CaddyAdmin()
    posts = admin.posts

    hold = CaddyHold(tmp_path / "upstream", str(tmp_path / "upstream"), 30)
    caddy = Caddy("http://127.0.0.1:2019", "obsdeploy-p", [":80"], [], hold, canary=True)
    caddy._request = admin  # type: ignore[method-assign]  # the admin API, faked
    caddy.point_at(["s:1"])
    assert posts == ["/config/apps/http/servers/obsdeploy-p"]
    assert caddy.current() == ["s:1"]
    caddy.point_at(["s:2"])
    mtimes = {f: f.stat().st_mtime_ns for f in hold.slot_files()}
    caddy.split(["s:2"], ["c:1"], 5)
    moved = [f for f in hold.slot_files() if f.stat().st_mtime_ns != mtimes[f]]
    assert len(moved) == 5 and all(f.read_text() == "c:1\n" for f in moved)
    assert caddy.current() == list(dict.fromkeys(f.read_text().strip() for f in hold.slot_files()))
    caddy.split(["s:2"], ["c:1"], 25)
    caddy.point_at(["c:1"])  # the promotion
    assert caddy.current() == ["c:1"]
    assert len(posts) == 1, posts
    # Without a canary configured, a server already slotted stays so.
    plain = Caddy("http://127.0.0.1:2019", "obsdeploy-p", [":80"], [], hold)
    plain._request = admin  # type: ignore[method-assign]
    plain.point_at(["c:2"])
    assert plain.current() == ["c:2"] and len(posts) == 1, posts


def test_caddy_version_is_read_from_its_own_words() -> None:
    assert caddy_version("v2.11.7 h1:yj0Y4fYZGPkSvib=") == (2, 11, 7)
    assert caddy_version("2.6.2") == (2, 6, 2)
    assert caddy_version("nothing") is None


def test_nginx_weights_and_reading_them_back() -> None:
    text = nginx_upstreams(["s:1", "c:1"], [95, 5])
    assert "server s:1 weight=95;\n" in text and "server c:1 weight=5;\n" in text
    assert parse_nginx_upstreams(text) == ["s:1", "c:1"]
    assert "weight" not in nginx_upstreams(["s:1"])


def test_traefik_weighted_service_with_and_without_sticky() -> None:
    doc = traefik_weighted("obsdeploy-o", "web", "PathPrefix(`/`)", ["s:1"], ["c:1"], 5, sticky=False)
    services = doc["http"]["services"]
    assert services["obsdeploy-o"] == {"weighted": {"services": [
        {"name": "obsdeploy-o-stable", "weight": 95}, {"name": "obsdeploy-o-canary", "weight": 5}]}}
    assert services["obsdeploy-o-canary"]["loadBalancer"]["servers"] == [{"url": "http://c:1"}]
    assert doc["http"]["routers"]["obsdeploy-o"]["service"] == "obsdeploy-o"
    sticky = traefik_weighted("obsdeploy-o", "web", "r", ["s:1"], ["c:1"], 5, sticky=True)
    assert sticky["http"]["services"]["obsdeploy-o"]["weighted"]["sticky"]["cookie"]["name"] == "obsdeploy_canary"


# --- the access log -----------------------------------------------------------------------------
def test_each_proxys_line() -> None:
    caddy = json.dumps({"level": "info", "msg": "handled request", "status": 502, "duration": 0.0123,
                        "upstream": "127.0.0.1:32768", "request": {"uri": "/api"}})
    assert parse_line(caddy, "caddy") == Answer("127.0.0.1:32768", 502, 0.0123)
    nginx = '{"upstream":"127.0.0.1:1, 127.0.0.1:2","status":200,"duration":0.004}'
    assert parse_line(nginx, "nginx") == Answer("127.0.0.1:2", 200, 0.004)
    traefik = json.dumps({"ServiceAddr": "127.0.0.1:5", "DownstreamStatus": 200, "Duration": 3_000_000})
    assert parse_line(traefik, "traefik") == Answer("127.0.0.1:5", 200, 0.003)
    for other in ("not json", "[]", '{"status": 200, "duration": 1}', '{"upstream": "-", "status": 502}',
                  '{"upstream": "a:1", "status": "x"}'):
        assert parse_line(other, "nginx") is None, other


def test_the_log_is_read_from_where_it_was_and_again_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    line = '{"upstream":"a:1","status":200,"duration":0.001}\n'
    path.write_text(line * 3)
    log = AccessLog(path, "nginx")
    log.start()
    assert log.read() == []
    with path.open("a") as f:
        f.write(line + line[:10])  # a line being written: read once it is whole
    assert len(log.read()) == 1
    with path.open("a") as f:
        f.write(line[10:])
    assert len(log.read()) == 1
    path.rename(tmp_path / "access.log.1")
    path.write_text(line * 2)
    assert len(log.read()) == 2
    path.unlink()
    assert log.read() == []


# --- verdicts -----------------------------------------------------------------------------------
def _answers(canary: list[tuple[int, float]], stable: list[tuple[int, float]] = ()) -> Answers:  # type: ignore[assignment]
    return Answers([Answer("c", s, t) for s, t in canary], [Answer("s", s, t) for s, t in stable])


def test_success_rate() -> None:
    check = SuccessRateCheck(kind="success_rate", min=0.99)
    ok = judge_success_rate(check, _answers([(200, 0.01)] * 99 + [(404, 0.01)]), 100)
    assert ok.verdict == "pass" and ok.value == 1.0, ok  # a 4xx is an answer
    bad = judge_success_rate(check, _answers([(200, 0.01)] * 90 + [(500, 0.01)] * 10), 100)
    assert bad.verdict == "fail" and "90/100" in bad.detail, bad
    few = judge_success_rate(check, _answers([(500, 0.01)] * 5), 100)
    assert few.verdict == "inconclusive" and "fewer than min_requests 100" in few.detail, few
    assert judge_success_rate(check, _answers([]), 0).verdict == "inconclusive"


def test_latency_quantile_and_ratio() -> None:
    assert quantile_ms([Answer("c", 200, t / 1000) for t in range(1, 101)], 0.95) == pytest.approx(95.05, abs=0.1)
    assert quantile_ms([Answer("c", 200, 0.2)], 0.95) == 200
    fast = [(200, 0.010)] * 100
    slow = [(200, 0.300)] * 100
    by_ms = LatencyCheck(kind="latency", quantile=0.95, max_ms=100)
    assert judge_latency(by_ms, _answers(fast, fast), 100).verdict == "pass"
    m = judge_latency(by_ms, _answers(slow, fast), 100)
    assert m.verdict == "fail" and "300.0 ms > max_ms 100" in m.detail, m
    by_ratio = LatencyCheck(kind="latency", max_ratio=2)
    m = judge_latency(by_ratio, _answers(slow, fast), 100)
    assert m.verdict == "fail" and "30.00 times" in m.detail, m
    m = judge_latency(by_ratio, _answers(slow, fast[:3]), 100)
    assert m.verdict == "pass" and "ratio not judged" in m.detail, m
    assert judge_latency(by_ratio, _answers(slow[:10], fast), 100).verdict == "inconclusive"


# --- the run ------------------------------------------------------------------------------------
class World:
    """A fake clock whose sleeps are traffic: every second of sleep, `rate` answers are
    written to a real access log, each release's by the share the last split gave it."""

    def __init__(self, tmp_path: Path, rate: int = 100, canary_status: int = 200,
                 canary_seconds: float = 0.01) -> None:
        self.now = 0.0
        self.rate = rate
        tmp_path.mkdir(exist_ok=True)
        self.path = tmp_path / "access.log"
        self.path.write_text("")
        self.state_dir = tmp_path / "state"
        self.state_dir.mkdir(parents=True)
        self.weight = 0
        self.splits: list[int] = []
        self.canary_status = canary_status
        self.canary_seconds = canary_seconds
        self.due = 0.0
        self.sent = 0
        self.on_time: dict[float, str] = {}  # a request left at this time (promote, abort)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        seconds = max(seconds, 0.05)
        self.due += seconds * self.rate
        n, self.due = int(self.due), self.due - int(self.due)
        lines = []
        for _ in range(n):
            self.sent += 1
            if self.sent % 100 < self.weight:  # the share, spread evenly
                lines.append({"upstream": "c:1", "status": self.canary_status, "duration": self.canary_seconds})
            else:
                lines.append({"upstream": "s:1", "status": 200, "duration": 0.01})
        with self.path.open("a") as f:
            f.writelines(json.dumps(x) + "\n" for x in lines)
        self.now += seconds
        for at in [t for t in self.on_time if t <= self.now]:
            leave_request(self.state_dir, self.on_time.pop(at))

    def split(self, weight: int) -> tuple[list[str], list[str]]:
        self.weight = weight
        self.splits.append(weight)
        return ["s:1"], ["c:1"]

    def run(self, **settings: Any) -> Any:
        s = CanarySettings(**{"steps": [{"weight": 10, "seconds": 30}, {"weight": 50, "seconds": 30}],
                              "interval": 5, "min_requests": 50,
                              "checks": [{"kind": "success_rate", "min": 0.99},
                                         {"kind": "latency", "max_ms": 100, "max_ratio": 3}], **settings})
        canary = Canary(CanaryPlan.of(s), AccessLog(self.path, "nginx"), self.state_dir, self.clock, self.sleep)
        canary.begin()
        rounds: list[dict[str, Any]] = []
        result = canary.run("v2", "v1", self.split, Containers(), 0.0, {},
                            on_round=lambda r: rounds.append(r.as_dict()))
        return result, rounds


class Containers:
    problem_after: int | None = None

    def problem(self) -> str | None:
        return None

    def logs_since(self, since: float) -> str:
        return ""


def test_a_good_canary_steps_through_its_weights(tmp_path: Path) -> None:
    world = World(tmp_path)
    result, rounds = world.run()
    assert result.ok and result.ended and result.reason is None, result
    assert world.splits == [10, 50]
    assert [s.result for s in result.steps] == ["passed", "passed"]
    assert result.as_dict()["weight"] == 100 and result.as_dict()["result"] == "promoted"
    first = result.steps[0]
    assert first.requests["canary"] >= 50 and first.seconds >= 30, first
    assert {m["check"] for m in first.measurements} == {"success_rate", "latency p95"}
    assert any(r["result"] == "running" and r["weight"] == 50 for r in rounds)


def test_a_failing_canary_is_aborted_by_success_rate(tmp_path: Path) -> None:
    world = World(tmp_path, canary_status=503)
    result, _ = world.run()
    assert not result.ok and "success_rate" in (result.reason or "") and "at 10 %" in (result.reason or ""), result
    assert world.splits == [10] and result.steps[0].result == "failed"
    assert result.as_dict()["weight"] == 0
    # At the first round that had min_requests of the canary's answers.
    assert result.steps[0].requests["canary"] < 100, result.steps[0]


def test_a_slow_canary_is_aborted_by_latency(tmp_path: Path) -> None:
    result, _ = World(tmp_path, canary_seconds=0.4).run()
    assert not result.ok and "latency" in (result.reason or "") and "max_ms 100" in (result.reason or ""), result


def test_an_inconclusive_step_holds_then_fails(tmp_path: Path) -> None:
    world = World(tmp_path, rate=2)  # 10 % of 2 requests/s: never 50 answers in a step
    result, rounds = world.run(max_hold_seconds=20)
    assert not result.ok and "inconclusive" in (result.reason or "") and "max_hold_seconds 20" in (result.reason or "")
    assert world.now >= 30 + 20 and result.steps[0].result == "failed", (world.now, result)
    assert any(r["steps"][0]["held_s"] > 0 for r in rounds)


@pytest.mark.parametrize("policy, ok", [("fail", False), ("pass", True)])
def test_inconclusive_fail_and_pass(tmp_path: Path, policy: str, ok: bool) -> None:
    world = World(tmp_path, rate=2)
    result, _ = world.run(inconclusive=policy)
    assert result.ok is ok, result
    assert world.now < 30 + 10 if not ok else world.now < 70
    if ok:
        assert [s.result for s in result.steps] == ["inconclusive-passed", "inconclusive-passed"]


def test_promote_and_abort_from_another_shell(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.on_time[12.0] = "promote"
    result, _ = world.run()
    assert result.ok and result.steps[-1].result == "promoted" and world.now < 20, (world.now, result)
    assert not (world.state_dir / REQUEST_FILE).exists()

    world = World(tmp_path / "again")
    world.on_time[36.0] = "abort"
    result, _ = world.run()
    assert not result.ok and "aborted by obs-agent canary abort" in (result.reason or "")
    assert world.splits == [10, 50] and world.now < 40, world.now


def test_an_old_request_is_dropped_when_a_canary_begins(tmp_path: Path) -> None:
    world = World(tmp_path)
    leave_request(world.state_dir, "abort")
    result, _ = world.run()
    assert result.ok, result


def test_the_same_split_again_is_no_change_of_the_proxy() -> None:
    from server_agent.proxy import ProxyCutover

    class Driver:
        def __init__(self) -> None:
            self.changes: list[Any] = []

        def split(self, stable: Any, canary: Any, weight: int) -> None:
            self.changes.append(("split", weight))

        def point_at(self, addresses: Any, held: bool = False) -> None:
            self.changes.append(("point_at", list(addresses)))

    class C:
        def __init__(self, address: str) -> None:
            self.service, self.name, self._a = "observer", address, address

        def address(self, port: int) -> str:
            return self._a

    driver = Driver()
    cut = ProxyCutover("observer", 8000, driver, None)  # type: ignore[arg-type]
    old, new = [C("s:1")], [C("c:1")]
    assert cut.split(old, new, 20) == (["s:1"], ["c:1"])  # type: ignore[arg-type]
    cut.split(old, new, 20)  # type: ignore[arg-type]
    cut.split(old, new, 50)  # type: ignore[arg-type]
    cut.point_at(old)  # type: ignore[arg-type]
    cut.split(old, new, 50)  # type: ignore[arg-type]
    cut.split(old, new, 100)  # type: ignore[arg-type]
    assert driver.changes == [("split", 20), ("split", 50), ("point_at", ["s:1"]), ("split", 50),
                              ("point_at", ["c:1"])]


def test_the_notice_of_a_promotion_and_of_an_abort() -> None:
    from server_agent.notify import canary_notice

    journal = {"tag": "v2", "canary": {"stable": "v1", "reason": "canary: check 'success_rate' failed",
                                       "steps": [{"weight": 5, "result": "passed"},
                                                 {"weight": 25, "result": "failed"}]}}
    aborted = canary_notice(journal, "obs", promoted=False, host="vm1")
    assert aborted.title == "[obs@vm1] canary v2: aborted" and aborted.level == "warning"
    assert "canary: v2 aborted, back to v1" in aborted.body and "5 % passed, 25 % failed" in aborted.body
    assert "success_rate" in aborted.body
    promoted = canary_notice(journal, "obs", promoted=True, host="vm1")
    assert promoted.level == "success" and "promoted to 100 %" in promoted.body


def test_the_canary_weight_metric(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from server_agent import metrics

    path = tmp_path / "m.prom"

    def weights() -> dict[str, float]:
        return {s.labels["tag"]: s.value for f in text_string_to_metric_families(path.read_text())
                if f.name == "obsdeploy_canary_weight" for s in f.samples}

    metrics.write(path, "obs", [], "v1", healthy=True, canary=("v2", 25))
    assert weights() == {"v2": 25}
    metrics.write(path, "obs", [], "v1", healthy=True)
    assert weights() == {}


def test_traefik_expects_a_splits_children_and_weights() -> None:
    from server_agent.proxy import traefik_expects

    doc = traefik_weighted("obsdeploy-o", "web", "r", ["s:1"], ["c:1"], 25, sticky=False)
    assert traefik_expects(doc, "obsdeploy-o") == ("obsdeploy-o", ["s:1", "c:1"], [75, 25])
