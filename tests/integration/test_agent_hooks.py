"""agent.hooks end to end: the real engine, compose and registry, an HTTP endpoint on loopback,
commands in the observer's container and on the host.

The order of every hook around a good deploy and a failed one (post_switch after the walk
back), a failed pre_switch (exit 13, the old release still serving), every run in the history
record, and a secret in a hook's URL and command never shown (the agent_root fixture scans
every output and file of the root for the secret values)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests import parts_project
from tests.parts import SECRETS, AgentRootDir, history, no_traceback

pytestmark = pytest.mark.integration

SECRET = SECRETS["KIS_API_KEY"]  # in .env and the observer's environment: masked wherever it shows
# A token the hooks' URL and command are written with, also in .env (so it is a secret). It
# is in deployment_config.json (and the copies the agent keeps of it: kept releases, backups),
# and must be nowhere else.
TOKEN = "hook-token-5b1f0e7a"


class Endpoint(BaseHTTPRequestHandler):
    """The trading pause a pre_switch/post_switch pair calls: records each request; /fail answers 500."""

    seen: list[tuple[str, dict[str, Any]]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        path = self.path.split("?", 1)[0]
        type(self).seen.append((path, body))
        code = 500 if path == "/fail" else 200
        data = f"no: {SECRET}".encode() if code == 500 else b"{}"  # an answer holding a secret
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    Endpoint.seen = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def set_hooks(root: AgentRootDir, hooks: dict[str, Any]) -> None:
    path = root.path / "deployment_config.json"
    config = json.loads(path.read_text())
    config["agent"]["hooks"] = hooks
    path.write_text(json.dumps(config, indent=2))
    env = root.path / ".env"
    if TOKEN not in env.read_text():
        env.write_text(env.read_text() + f"HOOK_TOKEN={TOKEN}\n")


def token_leaks(root: AgentRootDir) -> list[str]:
    """Where TOKEN shows besides the configuration it is written in: the agent's output so
    far, history, the journal, the agent log."""
    from tests.parts import OUTPUTS

    found = [f"output #{i}" for i, out in enumerate(OUTPUTS) if TOKEN in out]
    return found + [str(p) for p in (root.path / "state").glob("*") if p.is_file() and TOKEN in p.read_text()]


def hooks_of(base: str, host_log: Path, pre: str = "/pause") -> dict[str, Any]:
    """Every hook: an HTTP call (a secret in its URL), a command in the observer's container
    (it writes where the host sees it, ./config) and one on the host (a secret in its argv)."""
    in_container = ['sh', '-c', 'echo "$0 $OBSDEPLOY_ACTION $OBSDEPLOY_TAG $OBSDEPLOY_RESULT $VERSION" '
                    '>> /app/config/hooks.log']
    on_host = ["sh", "-c", f'echo "$0 $OBSDEPLOY_FROM_TAG>$OBSDEPLOY_TAG $OBSDEPLOY_RESULT" >> {host_log}; '
               f': {TOKEN}']
    return {
        "pre_switch": [{"http": f"{base}{pre}?key={TOKEN}"},
                       {"exec": {"service": "observer", "argv": [*in_container, "pre_switch"]}}],
        "post_switch": [{"http": f"{base}/resume?key={TOKEN}"},
                        {"exec": {"service": "observer", "argv": [*in_container, "post_switch"]}}],
        "on_rollback": [{"command": [*on_host, "on_rollback"]}],
        # One that fails, printing a secret of the container's environment: recorded, masked,
        # and the exit code stays the attempt's.
        "post_deploy": [{"command": [*on_host, "post_deploy"]},
                        {"exec": {"service": "observer", "argv": ["sh", "-c", 'echo "key $KIS_API_KEY"; exit 4']}}],
    }


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_hooks_run_in_order_around_good_and_failed_deploys(agent_root: AgentRootDir, endpoint: str,
                                                           tmp_path: Path) -> None:
    root = agent_root
    assert root.agent("deploy", "v1.0.0").returncode == 0
    host_log = tmp_path / "host-hooks.log"
    set_hooks(root, hooks_of(endpoint, host_log))

    res = root.agent("deploy", "v1.1.0")
    no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
    # The pause is asked of the old release, the resume of the new one; each told the attempt.
    assert Endpoint.seen == [
        ("/pause", {"action": "deploy", "tag": "v1.1.0", "from_tag": "v1.0.0", "result": None}),
        ("/resume", {"action": "deploy", "tag": "v1.1.0", "from_tag": "v1.0.0", "result": None})]
    assert lines(root.path / "config/hooks.log") == ["pre_switch deploy v1.1.0  v1.0.0",
                                                     "post_switch deploy v1.1.0  v1.1.0"]
    assert lines(host_log) == ["post_deploy v1.0.0>v1.1.0 success"]
    record = history(root)[0]
    assert [(h["hook"], h["result"]) for h in record["hooks"]] == [
        ("pre_switch", "ok"), ("pre_switch", "ok"), ("post_switch", "ok"), ("post_switch", "ok"),
        ("post_deploy", "ok"), ("post_deploy", "failed")]
    assert record["hooks"][0]["action"] == f"POST {endpoint}/pause?key=***"
    assert record["hooks"][-2]["action"].endswith(": ***' post_deploy")
    assert record["hooks"][-1]["detail"] == "exit 4; output: key ***"
    assert all(h["duration_s"] >= 0 for h in record["hooks"])

    # A release that crashes: post_switch runs after the walk back, then on_rollback, post_deploy.
    Endpoint.seen.clear()
    res = root.agent("deploy", "v2.0.0-crash")
    no_traceback(res)
    assert res.returncode == 20, res.stdout + res.stderr
    assert [p for p, _ in Endpoint.seen] == ["/pause", "/resume"]
    assert Endpoint.seen[1][1]["result"] == "rolled_back"
    # The resume ran in the release that serves again.
    assert lines(root.path / "config/hooks.log")[-1] == "post_switch deploy v2.0.0-crash rolled_back v1.1.0"
    assert lines(host_log)[-2:] == ["on_rollback v1.1.0>v2.0.0-crash rolled_back",
                                    "post_deploy v1.1.0>v2.0.0-crash rolled_back"]
    record = history(root)[0]
    assert [h["hook"] for h in record["hooks"]] == ["pre_switch", "pre_switch", "post_switch",
                                                    "post_switch", "on_rollback", "post_deploy",
                                                    "post_deploy"]
    assert root.health()["version"] == "v1.1.0"
    assert not token_leaks(root)


def test_a_failed_pre_switch_is_exit_13_and_the_old_release_keeps_serving(
        agent_root: AgentRootDir, endpoint: str, tmp_path: Path) -> None:
    root = agent_root
    assert root.agent("deploy", "v1.0.0").returncode == 0
    before = {c["Id"] for c in parts_project.running(root.project, "observer")}
    set_hooks(root, hooks_of(endpoint, tmp_path / "host-hooks.log", pre="/fail"))

    res = root.agent("deploy", "v1.1.0")
    no_traceback(res)
    assert res.returncode == 13, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert f"pre_switch hook POST {endpoint}/fail?key=*** failed: HTTP 500: no: ***" in out, out
    assert "nothing running was switched" in out
    # Nothing was switched: the same container serves v1.0.0; the resume still ran (the
    # pause's exec after the failed call did not).
    assert {c["Id"] for c in parts_project.running(root.project, "observer")} == before
    assert root.health()["version"] == "v1.0.0" and root.last_good() == "v1.0.0"
    assert [p for p, _ in Endpoint.seen] == ["/fail", "/resume"]
    assert lines(root.path / "config/hooks.log") == ["post_switch deploy v1.1.0 failed v1.0.0"]
    record = history(root)[0]
    assert record["result"] == "failed" and record["failure"]["hook"]["detail"] == "HTTP 500: no: ***"
    shown = root.agent("history").stdout
    assert f"hook pre_switch failed: POST {endpoint}/fail?key=***: HTTP 500: no: ***" in shown, shown
    assert [(h["hook"], h["result"]) for h in record["hooks"]] == [
        ("pre_switch", "failed"), ("post_switch", "ok"), ("post_switch", "ok"), ("post_deploy", "ok"),
        ("post_deploy", "failed")]
    assert not token_leaks(root)


def test_an_exec_hook_in_a_service_the_project_does_not_have_is_a_preflight_problem(
        agent_root: AgentRootDir) -> None:
    set_hooks(agent_root, {"post_switch": [{"exec": {"service": "observr", "argv": ["true"]}}]})
    res = agent_root.agent("check", "--json")
    no_traceback(res)
    assert res.returncode == 10, res.stdout + res.stderr
    problems = {p["code"]: p["message"] for p in json.loads(res.stdout)["problems"]}
    assert problems == {"hooks.exec_service": "agent.hooks.post_switch.0.exec.service: 'observr' is not a "
                                              "service of docker-compose.server.yml (its services: observer)"}
    assert agent_root.agent("deploy", "v1.0.0").returncode == 10
