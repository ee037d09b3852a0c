"""Maintenance as values: its state file, caddy's routes and nginx's file (the real proxies
answer them in tests/integration/test_agent_maintenance.py)."""

from __future__ import annotations

import json
from pathlib import Path

from server_agent import maintenance
from server_agent.maintenance import Maintenance
from server_agent.proxy import (
    CaddyHold,
    caddy_server,
    caddy_with_maintenance,
    nginx_maintenance,
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
