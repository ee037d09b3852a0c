"""agent.hooks: validation, the plan as values, and the runner's http and command actions
against a real HTTP server on loopback and real host commands (no Docker: exec actions are
covered in tests/unit/test_transaction.py over a fake backend and end to end in
tests/integration/test_agent_hooks.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from server_agent.common.errors import UsageError
from server_agent.common.redact import REDACTOR
from server_agent.hooks import HookAction, HookContext, HookPlan, run_hook
from server_agent.settings import load_settings

TOKEN = "tok" + "e" * 20  # long enough to be a token in a URL
CTX = HookContext("deploy", "v2.0.0", "v1.0.0")


def settings(hooks: Any) -> Any:
    return load_settings({"hooks": hooks}, "deployment_config.json")


@pytest.mark.parametrize(("hooks", "says"), [
    ({"pre_switch": [{"foo": 1}]}, "agent.hooks.pre_switch.0: an action is an object with exactly one of"),
    ({"pre_switch": [{"http": "http://a:1/", "command": ["x"]}]}, "agent.hooks.pre_switch.0: an action is"),
    ({"post_switch": [{"http": f"ftp://x/{TOKEN}"}]}, "agent.hooks.post_switch.0.http: Value error, must be"),
    ({"post_switch": [{"command": []}]}, "agent.hooks.post_switch.0.command: List should have at least 1"),
    ({"on_rollback": [{"exec": {"service": "observer"}}]}, "agent.hooks.on_rollback.0.exec.argv: Field required"),
    ({"pre_switch": [{"http": "http://a:1/", "method": "FETCH"}]}, "agent.hooks.pre_switch.0.method"),
    ({"pre": []}, "agent.hooks.pre: unknown key"),
])
def test_bad_hooks_are_refused_naming_the_key(hooks: Any, says: str) -> None:
    with pytest.raises(UsageError) as err:
        settings(hooks)
    assert says in str(err.value) and "deployment_config.json" in str(err.value)
    assert TOKEN not in str(err.value)


def test_the_plan_is_values_in_order() -> None:
    plan = HookPlan.of(settings({
        "pre_switch": [{"http": "http://127.0.0.1:8000/pause"},
                       {"exec": {"service": "observer", "argv": ["kill", "-USR1", "1"]}, "timeout": 5}],
        "post_deploy": [{"command": ["logger", "deployed"]}]}).hooks)
    assert plan.pre_switch == (HookAction("http", 10, url="http://127.0.0.1:8000/pause", method="POST"),
                               HookAction("exec", 5, service="observer", argv=("kill", "-USR1", "1")))
    assert plan.post_deploy == (HookAction("command", 60, argv=("logger", "deployed")),)
    assert plan.post_switch == plan.on_rollback == ()
    assert [a.shown for a in plan.pre_switch] == ["POST http://127.0.0.1:8000/pause",
                                                  "exec in observer: kill -USR1 1"]


def test_a_token_in_a_hook_url_is_masked_but_not_its_host() -> None:
    masked = settings({"pre_switch": [
        {"http": f"http://user:pa55word@127.0.0.1:8000/pause?key={TOKEN}"}]}).hooks.url_secrets()
    assert TOKEN in masked and "pa55word" in masked
    assert not [m for m in masked if "127.0.0.1" in m]


class Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []
    status = 204

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "body": body, "action": self.headers["Obsdeploy-Action"]})
        data = f"refused, key {TOKEN}".encode() if self.status >= 300 else b""
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    Recorder.seen, Recorder.status = [], 204
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def plan_of(hooks: Any) -> HookPlan:
    s = settings(hooks)
    REDACTOR.add(s.hooks.url_secrets())  # as AgentRoot.settings does
    return HookPlan.of(s.hooks)


def test_an_http_action_posts_the_attempt_and_2xx_passes(server: ThreadingHTTPServer) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/pause?key={TOKEN}"
    runs = run_hook(plan_of({"pre_switch": [{"http": url}]}), "pre_switch", CTX, backend=None)  # type: ignore[arg-type]
    assert [(r.ok, r.detail) for r in runs] == [(True, "HTTP 204")]
    assert Recorder.seen == [{"path": f"/pause?key={TOKEN}", "action": "deploy", "body": {
        "action": "deploy", "tag": "v2.0.0", "from_tag": "v1.0.0", "result": None}}]
    assert TOKEN not in runs[0].action and "127.0.0.1" in runs[0].action


def test_a_refused_or_unanswered_http_action_fails_redacted(server: ThreadingHTTPServer) -> None:
    Recorder.status = 503
    port = server.server_address[1]
    plan = plan_of({"post_switch": [{"http": f"http://127.0.0.1:{port}/resume?key={TOKEN}"},
                                    {"http": f"http://127.0.0.1:1/resume?key={TOKEN}", "timeout": 2}]})
    runs = run_hook(plan, "post_switch", CTX, backend=None)  # type: ignore[arg-type]
    assert [r.ok for r in runs] == [False, False]  # post_switch runs every action
    assert runs[0].detail == "HTTP 503: refused, key ***"
    assert runs[1].detail.startswith("no answer: ConnectionError")
    assert all(TOKEN not in json.dumps(r.record()) for r in runs)


def test_a_command_action_gets_the_attempt_in_its_environment_and_its_output_is_redacted() -> None:
    REDACTOR.add(["s3cr3t-value"])
    plan = plan_of({"post_deploy": [
        {"command": ["sh", "-c",
                     'test "$OBSDEPLOY_TAG/$OBSDEPLOY_FROM_TAG/$OBSDEPLOY_RESULT" = v2.0.0/v1.0.0/success']},
        {"command": ["sh", "-c", "echo key s3cr3t-value; exit 3"]},
        {"command": ["/nonexistent/hook"]}]})
    runs = run_hook(plan, "post_deploy", HookContext("deploy", "v2.0.0", "v1.0.0", "success"), backend=None)  # type: ignore[arg-type]
    assert [(r.ok, r.detail) for r in runs] == [
        (True, "exit 0"), (False, "exit 3; output: key ***"),
        (False, "CommandError: command failed (exit 127): /nonexistent/hook\n"
                "/nonexistent/hook: not found (No such file or directory)")]


def test_a_failed_pre_switch_action_stops_the_list() -> None:
    plan = plan_of({"pre_switch": [{"command": ["false"]}, {"command": ["true"]}]})
    runs = run_hook(plan, "pre_switch", CTX, backend=None)  # type: ignore[arg-type]
    assert [(r.action, r.ok) for r in runs] == [("false", False)]
