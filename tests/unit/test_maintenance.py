"""Maintenance as values: its state file, caddy's routes, nginx's file and traefik's router;
traefik's answer server as the real process it is (the real proxies answer them in
tests/integration/test_agent_maintenance.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from server_agent import maintenance
from server_agent.maintenance import Maintenance
from server_agent.maintenance_answer import AnswerServer
from server_agent.proxy import (
    TRAEFIK_HELD_PRIORITY,
    CaddyHold,
    caddy_server,
    caddy_with_maintenance,
    nginx_maintenance,
    traefik_dynamic,
    traefik_expects,
    traefik_hold_dynamic,
    traefik_with_maintenance,
)

M = Maintenance("back {soon} at $5", "2026-12-07T10:00:00Z", 90)


def test_the_state_file_round_trips_and_a_broken_one_stays_on(tmp_path: Path) -> None:
    assert maintenance.read(tmp_path) is None
    assert maintenance.shown(None) == {"on": False, "message": None, "since": None, "retry_after": None}
    maintenance.write(tmp_path, M)
    assert maintenance.read(tmp_path) == M
    assert maintenance.shown(M) == {"on": True, "message": M.message, "since": M.since, "retry_after": 90}
    (tmp_path / maintenance.STATE_FILE).write_text("{not json")
    assert maintenance.read(tmp_path) == Maintenance(maintenance.DEFAULT_MESSAGE, "")  # only `off` ends it
    maintenance.write(tmp_path, None)
    assert maintenance.read(tmp_path) is None


def test_caddy_maintenance_routes_come_first_and_go_whole() -> None:
    server = caddy_server("obsdeploy-p", [":80"], ["app.example"], ["10.0.0.2:8000"])
    on = caddy_with_maintenance(server, "obsdeploy-p", ["app.example"], M)
    json_route, html_route, proxied = on["routes"]
    assert proxied == server["routes"][0]
    assert json_route["match"] == [{"host": ["app.example"], "header": {"Accept": ["*json*"]}}]
    assert html_route["match"] == [{"host": ["app.example"]}]
    handler = json_route["handle"][0]
    assert handler["status_code"] == 503 and handler["headers"]["Retry-After"] == ["90"]
    # Braces escaped: caddy must not read them as placeholders.
    assert json.loads(handler["body"].replace("\\{", "{").replace("\\}", "}"))["message"] == M.message
    assert "{" not in handler["body"].replace("\\{", "")
    # On again (a new message) replaces the routes; off takes them out.
    again = caddy_with_maintenance(on, "obsdeploy-p", ["app.example"], Maintenance("new", "t"))
    assert len(again["routes"]) == 3 and "new" in again["routes"][1]["handle"][0]["body"]
    assert caddy_with_maintenance(again, "obsdeploy-p", ["app.example"], None) == server


def test_every_server_caddy_writes_keeps_maintenance(tmp_path: Path) -> None:
    from server_agent.proxy import Caddy

    hold = CaddyHold(tmp_path / "dial", str(tmp_path / "dial"), 30)
    caddy = Caddy("http://127.0.0.1:1", "obsdeploy-p", [":80"], [], hold, maintenance=M)
    held = caddy._held_server()
    assert [r.get("@id") for r in held["routes"]][:2] == ["obsdeploy-p-maintenance-json", "obsdeploy-p-maintenance"]
    assert caddy._maintained(caddy_server("obsdeploy-p", [":80"], [], ["a:1"]))["routes"][0]["@id"] \
        == "obsdeploy-p-maintenance-json"


def test_nginx_maintenance_file() -> None:
    off = nginx_maintenance(None)
    assert [line for line in off.splitlines() if not line.startswith("#")] == []
    on = nginx_maintenance(Maintenance("it's $5 \\ \"x\"", "t", 90))
    assert "rewrite ^ /.obsdeploy-maintenance.$obsdeploy_maintenance last;" in on
    assert on.count("add_header Retry-After 90 always;") == 2 and on.count("return 503 '") == 2
    # No `$` reaches nginx's strings but its own variable; quotes and backslashes escaped.
    body_lines = [line for line in on.splitlines() if "return 503" in line]
    assert all("$" not in line for line in body_lines)
    assert "it\\'s" in on and "\\\\u0024" in on and "&#36;5" in on


def test_the_answer_is_one_shape_for_every_proxy() -> None:
    headers, body = M.answer("text/html,application/json;q=0.9")
    assert headers == {"Retry-After": "90", "Content-Type": "application/json", "Cache-Control": "no-store"}
    assert json.loads(body)["message"] == M.message
    headers, body = M.answer("*/*")
    assert headers["Content-Type"] == "text/html; charset=utf-8" and body == M.html_body()
    # caddy's routes carry the same headers.
    route = caddy_with_maintenance(caddy_server("n", [":80"], [], []), "n", [], M)["routes"][0]
    assert route["handle"][0]["headers"] == {k: [v] for k, v in M.answer("application/json")[0].items()}


def test_traefik_maintenance_router_outranks_the_agents_and_goes_whole() -> None:
    served = traefik_dynamic("obsdeploy-p", "web", "Host(`a`)", ["127.0.0.1:7"])
    on = traefik_with_maintenance(served, "obsdeploy-p", "web", "Host(`a`)", "http://127.0.0.1:9")
    router = on["http"]["routers"]["obsdeploy-p-maintenance"]
    assert router == {"entryPoints": ["web"], "rule": "Host(`a`)", "priority": TRAEFIK_HELD_PRIORITY - 1,
                      "service": "obsdeploy-p-maintenance"}
    assert on["http"]["services"]["obsdeploy-p-maintenance"] == {
        "loadBalancer": {"servers": [{"url": "http://127.0.0.1:9"}]}}
    assert traefik_expects(on, "obsdeploy-p") == traefik_expects(served, "obsdeploy-p")  # the release's, as before
    assert traefik_with_maintenance(on, "obsdeploy-p", "web", "Host(`a`)", None) == served
    # Held: the held router (the agent's own marked hops) stays above maintenance.
    held = traefik_with_maintenance(traefik_hold_dynamic("obsdeploy-p", "web", "Host(`a`)", "http://h:80", 30),
                                    "obsdeploy-p", "web", "Host(`a`)", "http://127.0.0.1:9")
    assert held["http"]["routers"]["obsdeploy-p-held"]["priority"] > router["priority"]
    # Before the first deploy: the maintenance router alone.
    alone = traefik_with_maintenance({}, "obsdeploy-p", "web", "Host(`a`)", "http://127.0.0.1:9")
    assert set(alone["http"]["routers"]) == {"obsdeploy-p-maintenance"}
    assert traefik_expects(alone, "obsdeploy-p") == (None, [], None)
    # Off again: not an empty file (traefik would skip it and keep the maintenance router).
    assert traefik_with_maintenance(alone, "obsdeploy-p", "web", "Host(`a`)", None) == {
        "http": {"services": {"obsdeploy-p": {"loadBalancer": {"servers": []}}}}}


def test_the_answer_server_answers_every_request_and_stops(tmp_path: Path) -> None:
    import requests

    answer = AnswerServer(tmp_path / "maintenance", "127.0.0.1:0")
    assert answer.running() is None
    answer.write(M)
    url = answer.ensure()
    try:
        assert answer.ensure() == url  # running: the same one
        got = requests.post(f"{url}/any/path?x=1", data=b"x" * 5000, headers={"Accept": "application/json"},
                            timeout=5)
        assert got.status_code == 503 and got.headers["Retry-After"] == "90"
        assert got.headers["Cache-Control"] == "no-store" and got.json()["message"] == M.message
        answer.write(Maintenance("again", "t2", 5))  # read for each request: no restart
        with requests.Session() as s:  # keep-alive across answers
            page = s.get(url, timeout=5)
            assert page.status_code == 503 and page.text == Maintenance("again", "t2", 5).html_body()
            assert s.head(url, timeout=5).headers["Retry-After"] == "5"
    finally:
        answer.stop()
    assert answer.running() is None
    with pytest.raises(requests.ConnectionError):
        for _ in range(50):  # until its SIGTERM took effect
            requests.get(url, timeout=1)
            time.sleep(0.1)


def test_an_answer_server_that_cannot_bind_says_why(tmp_path: Path) -> None:
    import socket

    from server_agent.maintenance_answer import AnswerError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        answer = AnswerServer(tmp_path / "m", f"127.0.0.1:{taken.getsockname()[1]}")
        with pytest.raises(AnswerError, match="did not start on 127.0.0.1:.*Address already in use"):
            answer.ensure()
