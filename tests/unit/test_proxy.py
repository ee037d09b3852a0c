"""SPEC §15 as values: caddy's one change, nginx's upstream file, addresses, settings, plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server_agent.common.errors import UsageError
from server_agent.compose import ComposeConfig
from server_agent.engine import ContainerInfo
from server_agent.plan import build_plan
from server_agent.proxy import (
    Nginx,
    ProxyCutover,
    Traefik,
    caddy_change,
    caddy_server,
    caddy_upstreams,
    migrate_req_advice,
    nginx_upstreams,
    parse_nginx_upstreams,
    rewrite_url,
    traefik_dynamic,
    traefik_servers,
)
from server_agent.root import AgentRoot

SERVER = caddy_server("obsdeploy-p", [":80"], [], ["127.0.0.1:32768"])


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("OBS_AGENT_"):
            monkeypatch.delenv(k)


def test_caddy_server_is_one_reverse_proxy_with_an_optional_host_match() -> None:
    assert SERVER == {"@id": "obsdeploy-p", "listen": [":80"], "routes": [{
        "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": "127.0.0.1:32768"}]}],
        "terminal": True}]}
    with_hosts = caddy_server("s", [":443"], ["a.example"], ["10.0.0.2:8000", "10.0.0.3:8000"])
    assert with_hosts["routes"][0]["match"] == [{"host": ["a.example"]}]
    assert caddy_upstreams(with_hosts) == ["10.0.0.2:8000", "10.0.0.3:8000"]
    assert caddy_upstreams(None) == []


@pytest.mark.parametrize("config, path, body", [
    (None, "/config/", {"apps": {"http": {"servers": {"obsdeploy-p": SERVER}}}}),
    ({"admin": {"listen": "x"}}, "/config/apps", {"http": {"servers": {"obsdeploy-p": SERVER}}}),
    ({"apps": {"tls": {}}}, "/config/apps/http", {"servers": {"obsdeploy-p": SERVER}}),
    ({"apps": {"http": {}}}, "/config/apps/http/servers", {"obsdeploy-p": SERVER}),
    ({"apps": {"http": {"servers": {"theirs": {}}}}}, "/config/apps/http/servers/obsdeploy-p", SERVER),
    ({"apps": {"http": {"servers": {"obsdeploy-p": {"old": 1}}}}},
     "/config/apps/http/servers/obsdeploy-p", SERVER),
])
def test_caddy_change_is_one_post_under_the_deepest_existing_parent(config: object, path: str,
                                                                   body: object) -> None:
    """Caddy's POST needs an existing parent; the other servers are never touched."""
    assert caddy_change(config, "obsdeploy-p", SERVER) == (path, body)


def test_nginx_upstream_file_round_trips_and_a_failed_reload_restores_it(tmp_path: Path) -> None:
    text = nginx_upstreams(["127.0.0.1:1", "10.0.0.2:8000"])
    assert parse_nginx_upstreams(text) == ["127.0.0.1:1", "10.0.0.2:8000"]
    assert parse_nginx_upstreams("server a:1 max_fails=3; # x\n#server b:2;\n") == ["a:1"]
    f = tmp_path / "app.upstream"
    f.write_text("server 127.0.0.1:9;\n")
    from server_agent.proxy import ProxyError

    with pytest.raises(ProxyError, match="nginx did not reload"):
        Nginx(f, ["false"]).point_at(["127.0.0.1:2"])
    assert f.read_text() == "server 127.0.0.1:9;\n"
    Nginx(f, ["true"]).point_at(["127.0.0.1:2"])
    assert Nginx(f, ["true"]).current() == ["127.0.0.1:2"]
    assert Nginx(tmp_path / "none" / "f", ["true"]).problem() is not None
    assert Nginx(f, ["no-such-reload-binary"]).problem() is not None


def _container(ports: tuple[tuple[str, str], ...], ips: tuple[str, ...], stop_timeout: int | None = 5,
               service: str = "web") -> ContainerInfo:
    return ContainerInfo(
        id="c1", name="p-web-1", service=service, number=1, image="i", state="running",
        health=None, exit_code=0, restart_count=0, env_names=frozenset(), stop_timeout=stop_timeout,
        restart_policy={}, tag="v1", role="release", config_hash="", binds=frozenset(),
        ports=frozenset(), host_ports=ports, ips=ips)


def test_traefik_file_is_one_router_and_one_service_read_back_from_file(tmp_path: Path) -> None:
    """The file the agent owns, as a value; current() and problem() without traefik's API
    (with it, tests/integration/test_agent_proxy.py drives the real traefik)."""
    import yaml

    assert traefik_dynamic("obsdeploy-p", "web", "Host(`a.example`)", ["127.0.0.1:1", "10.0.0.2:8000"]) == {
        "http": {"routers": {"obsdeploy-p": {"entryPoints": ["web"], "rule": "Host(`a.example`)",
                                             "service": "obsdeploy-p"}},
                 "services": {"obsdeploy-p": {"loadBalancer": {"servers": [
                     {"url": "http://127.0.0.1:1"}, {"url": "http://10.0.0.2:8000"}]}}}}}
    f = tmp_path / "dyn" / "obsdeploy-p.yml"
    t = Traefik(f, "obsdeploy-p", "web", "PathPrefix(`/`)", None)
    assert "does not exist" in str(t.problem())
    f.parent.mkdir()
    assert t.problem() is None and t.current() == []
    assert "api_url is not set" in str(t.advice())
    f.write_text(yaml.safe_dump(traefik_dynamic("obsdeploy-p", "web", "PathPrefix(`/`)", ["127.0.0.1:7"])))
    assert t.current() == ["127.0.0.1:7"]
    f.write_text("http: [")
    assert "is not YAML" in str(t.problem())
    assert traefik_servers(None) == [] and traefik_servers({"loadBalancer": {}}) == []


def test_addresses_prefer_the_published_port_then_the_network_address() -> None:
    published = _container((("8000/tcp", "127.0.0.1:32768"),), ("172.18.0.2",))
    network = _container((), ("172.18.0.2",))
    cut = ProxyCutover("web", 8000, Nginx(Path("/x"), ["true"]), None)
    assert cut.addresses([published, network, _container((), (), service="other")]) == [
        "127.0.0.1:32768", "172.18.0.2:8000"]
    assert cut.drain_seconds([published]) == 5
    assert cut.drain_seconds([_container((), (), stop_timeout=None)]) == 10
    assert cut.drain_seconds([_container((), (), stop_timeout=120)]) == 30
    assert ProxyCutover("web", 8000, Nginx(Path("/x"), ["true"]), 0.5).drain_seconds([published]) == 0.5
    assert rewrite_url("https://example.com/health?x=1", "127.0.0.1:32768") == \
        "http://127.0.0.1:32768/health?x=1"


def _settings(tmp_path: Path, proxy: dict[str, object]) -> AgentRoot:
    (tmp_path / "deployment_config.json").write_text(json.dumps({"agent": {"proxy": proxy}}))
    return AgentRoot(tmp_path)


def test_proxy_settings_are_validated_with_their_path(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"agent\.proxy: .*kind caddy needs listen"):
        _settings(tmp_path, {"kind": "caddy", "service": "web", "port": 8000}).validate()
    with pytest.raises(UsageError, match=r"agent\.proxy: .*kind nginx needs upstream_file"):
        _settings(tmp_path, {"kind": "nginx", "service": "web", "port": 8000}).validate()
    with pytest.raises(UsageError, match=r"agent\.proxy: .*kind traefik needs dynamic_file"):
        _settings(tmp_path, {"kind": "traefik", "service": "web", "port": 8000}).validate()
    with pytest.raises(UsageError, match=r"agent\.proxy\.kind"):
        _settings(tmp_path, {"kind": "haproxy", "service": "web", "port": 8000}).validate()
    for bad in ("dynamic.yml", "/etc/traefik/dynamic.toml"):
        with pytest.raises(UsageError, match=r"agent\.proxy\.dynamic_file: .*\.yml or \.yaml"):
            _settings(tmp_path, {"kind": "traefik", "service": "web", "port": 8000,
                                 "dynamic_file": bad}).validate()
    with pytest.raises(UsageError, match=r"agent\.proxy\.api_url: .*traefik's API"):
        _settings(tmp_path, {"kind": "traefik", "service": "web", "port": 8000,
                             "dynamic_file": "/d/o.yml", "api_url": "127.0.0.1:8080"}).validate()
    t = _settings(tmp_path, {"kind": "traefik", "service": "web", "port": 8000,
                             "dynamic_file": "/d/o.yml", "api_url": "http://127.0.0.1:8080/"})
    assert t.settings.proxy is not None
    assert (t.settings.proxy.entrypoint, t.settings.proxy.rule, t.settings.proxy.api_url) == (
        "web", "PathPrefix(`/`)", "http://127.0.0.1:8080")
    with pytest.raises(UsageError, match=r"agent\.proxy\.upstream_file: .*absolute"):
        _settings(tmp_path, {"kind": "nginx", "service": "web", "port": 8000,
                             "upstream_file": "up.conf"}).validate()
    s = _settings(tmp_path, {"kind": "caddy", "service": "web", "port": 8000, "listen": [":80"],
                             "admin_url": "http://127.0.0.1:2019/"}).settings.proxy
    assert s is not None and s.admin_url == "http://127.0.0.1:2019" and s.drain_seconds is None


IMG = "reg/app:${IMAGE_TAG:?IMAGE_TAG required}"


def _config(ports: list[dict[str, object]]) -> ComposeConfig:
    raw = {"services": {"web": {"image": "reg/app:v2", "ports": ports}, "db": {"image": "pg:16"}}}
    return ComposeConfig(raw, {"web": IMG, "db": "pg:16"})


def test_the_proxied_service_is_start_first_and_must_not_publish_a_fixed_port() -> None:
    ephemeral = build_plan(_config([{"target": 8000, "host_ip": "127.0.0.1"}]), "v2", [], set(),
                           proxy_service="web")
    [web] = [s for s in ephemeral.release_services if s.name == "web"]
    assert ephemeral.problems == () and web.strategy == "start-first"
    assert ephemeral.proxied == "web" and ephemeral.as_dict()["proxied"] == "web"
    assert any("web (start-first" in line and "behind the proxy" in line
               for line in ephemeral.describe())
    fixed = build_plan(_config([{"target": 8000, "published": "8000"}]), "v2", [], set(),
                       proxy_service="web")
    assert [c for c, _ in fixed.problems] == ["plan.proxy_port"]
    assert [c for c, _ in build_plan(_config([]), "v2", [], set(), proxy_service="db").problems] == [
        "plan.proxy_service"]


def test_caddy_advice_names_the_sysctl_that_keeps_its_reloads_lossless(tmp_path: Path) -> None:
    setting = tmp_path / "tcp_migrate_req"
    setting.write_text("0\n")
    advice = migrate_req_advice(setting)
    assert advice is not None and "net.ipv4.tcp_migrate_req=1" in advice and "reset" in advice
    setting.write_text("1\n")
    assert migrate_req_advice(setting) is None
    assert "Linux 5.14" in (migrate_req_advice(tmp_path / "missing") or "")


def test_caddys_held_server_reads_its_dial_address_from_a_file_on_every_try() -> None:
    from server_agent.proxy import HOLD_DIAL, caddy_held_server

    server = caddy_held_server("obsdeploy-p", [":80"], [], "/srv/proxy/upstream", 30)
    [handler] = server["routes"][0]["handle"]
    assert handler["upstreams"] == [{"dial": "{file./srv/proxy/upstream}", "max_requests": 8}]
    assert handler["load_balancing"] == {"try_duration": "30s", "try_interval": "100ms"}
    # While holding, every try fails to connect at once (and is retried): a unix socket
    # that cannot exist, a valid dial address for caddy.
    assert HOLD_DIAL.startswith("unix//nonexistent/")


def test_a_single_writers_first_release_leaves_caddy_held_so_no_hold_changes_its_config(
        tmp_path: Path) -> None:
    """Every caddy config change closes a few client connections: a single writer's server
    takes its held shape at its first release (nothing held yet), and holding or releasing
    afterwards only rewrites the dial file."""
    from server_agent.proxy import HOLD_DIAL, Caddy, CaddyHold
    from tests.unit.fakes import CaddyAdmin

    admin = CaddyAdmin()
    config, posts = admin.config, admin.posts
    dial = tmp_path / "upstream"
    caddy = Caddy("http://127.0.0.1:2019", "obsdeploy-p", [":80"], [], CaddyHold(dial, str(dial), 30))
    caddy._request = admin  # type: ignore[method-assign]  # the admin API, faked
    caddy.point_at(["127.0.0.1:32768"], held=True)
    assert posts == ["/config/apps/http/servers/obsdeploy-p"]
    assert caddy_upstreams(config["apps"]["http"]["servers"]["obsdeploy-p"]) == [f"{{file.{dial}}}"]
    assert dial.read_text() == "127.0.0.1:32768\n"

    caddy.hold()
    assert dial.read_text() == HOLD_DIAL + "\n" and caddy.current() == []
    caddy.point_at(["127.0.0.1:32769"], held=True)
    assert dial.read_text() == "127.0.0.1:32769\n" and caddy.current() == ["127.0.0.1:32769"]
    assert len(posts) == 1, posts


def test_nginx_cannot_hold() -> None:
    from server_agent.proxy import Nginx, ProxyError

    nginx = Nginx(Path("/tmp/x.upstream"), ["nginx", "-s", "reload"])
    assert nginx.can_hold is False
    with pytest.raises(ProxyError):
        nginx.hold()


def test_traefik_holds_by_sending_requests_back_into_itself_marked() -> None:
    """While holding, the router retries (on traefik's own 418 and 429 only) a hop back
    into traefik's entrypoint; the marked hop gets the 418 until the release routes it, at
    most 8 at a time, to the container (SPEC §19; docs/held-requests.md)."""
    from server_agent.proxy import (
        traefik_expects,
        traefik_hold_dynamic,
        traefik_hop_url,
        traefik_released_dynamic,
    )

    hold = traefik_hold_dynamic("obsdeploy-p", "web", "Host(`a`)", "http://127.0.0.1:80", 30)["http"]
    assert hold["routers"]["obsdeploy-p"] == {
        "entryPoints": ["web"], "rule": "Host(`a`)", "service": "obsdeploy-p-hold",
        "middlewares": ["obsdeploy-p-hold", "obsdeploy-p-mark"]}
    assert hold["routers"]["obsdeploy-p-held"]["rule"] == "Header(`X-Obsdeploy-Held`, `obsdeploy-p`)"
    assert hold["routers"]["obsdeploy-p-held"]["service"] == "noop@internal"
    assert hold["services"] == {"obsdeploy-p-hold": {"loadBalancer": {"servers": [
        {"url": "http://127.0.0.1:80"}]}}}
    retry = hold["middlewares"]["obsdeploy-p-hold"]["retry"]
    assert (retry["timeout"], retry["initialInterval"], retry["status"]) == ("30s", "100ms", ["418", "429"])
    assert retry["attempts"] * 0.1 > 30 and retry["retryNonIdempotentMethod"] is True
    assert hold["middlewares"]["obsdeploy-p-mark"] == {
        "headers": {"customRequestHeaders": {"X-Obsdeploy-Held": "obsdeploy-p"}}}
    assert traefik_expects({"http": hold}, "obsdeploy-p") == ("obsdeploy-p-hold", [], None)

    released = traefik_released_dynamic("obsdeploy-p", "web", "Host(`a`)", ["127.0.0.1:7"])
    assert traefik_expects(released, "obsdeploy-p") == ("obsdeploy-p", ["127.0.0.1:7"], None)
    held = released["http"]["routers"]["obsdeploy-p-held"]
    assert (held["service"], held["middlewares"]) == (
        "obsdeploy-p", ["obsdeploy-p-redial", "obsdeploy-p-trickle", "obsdeploy-p-unmark"])
    assert released["http"]["middlewares"]["obsdeploy-p-redial"] == {
        "retry": {"attempts": 3, "initialInterval": "50ms"}}
    assert released["http"]["middlewares"]["obsdeploy-p-trickle"] == {"inFlightReq": {"amount": 8}}
    assert released["http"]["middlewares"]["obsdeploy-p-unmark"] == {
        "headers": {"customRequestHeaders": {"X-Obsdeploy-Held": ""}}}

    assert traefik_hop_url({"address": ":80"}) == "http://127.0.0.1:80"
    assert traefik_hop_url({"address": "0.0.0.0:8000/tcp"}) == "http://127.0.0.1:8000"
    assert traefik_hop_url({"address": "10.0.0.5:80"}) == "http://10.0.0.5:80"


def test_traefik_holds_only_with_its_api(tmp_path: Path) -> None:
    from server_agent.proxy import ProxyError

    t = Traefik(tmp_path / "o.yml", "obsdeploy-p", "web", "PathPrefix(`/`)", None)
    assert t.can_hold is False
    with pytest.raises(ProxyError, match="api_url"):
        t.hold()
    assert Traefik(tmp_path / "o.yml", "obsdeploy-p", "web", "PathPrefix(`/`)",
                   "http://127.0.0.1:8080").can_hold is True
