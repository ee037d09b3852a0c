"""The swarm backend on a real two-node Docker Swarm.

The module builds the swarm itself (tests/parts_swarm.py: two dockerds, each in a network
namespace of its own, joined into one swarm, a registry both reach) and removes all of it at
the end, even on failure. The agent runs as it would on the manager: inside the manager's
network namespace, talking to the manager's engine.

The release service runs 2 replicas, one per node (its port is published in host mode on
each node: this kernel has no IPVS, so no routing mesh; see the README).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests import parts
from tests.parts import no_traceback
from tests.parts_swarm import SwarmLab, SwarmRoot, make_swarm_root


@pytest.fixture
def swarm_root(tmp_path: Path, lab: SwarmLab) -> Iterator[SwarmRoot]:
    root = make_swarm_root(tmp_path / "observer", lab)
    yield root
    root.down()
    leaks = root.secret_leaks()
    assert not leaks, f"secret values leaked into: {leaks}"


def deploy(root: SwarmRoot, tag: str, **env: str) -> subprocess.CompletedProcess[str]:
    res = root.agent("deploy", tag, env=root.env(**env))
    no_traceback(res)
    return res


def by_node(tasks: list[dict[str, Any]]) -> dict[str, str | None]:
    running = [t for t in tasks if t["state"] == "running"]
    return {t["node_address"]: t["tag"] for t in running}


def assert_on_every_node(root: SwarmRoot, tag: str) -> None:
    assert root.lab is not None
    tasks = root.tasks()
    assert by_node(tasks) == {n.address: tag for n in root.lab.nodes}, tasks
    assert len([t for t in tasks if t["state"] == "running"]) == 2, tasks
    assert root.answers() == {n.address: tag for n in root.lab.nodes}


# --- the tests ----------------------------------------------------------------------------------
def test_swarm_deploy_spreads_over_both_nodes_and_failed_releases_roll_back_everywhere(
        swarm_root: SwarmRoot) -> None:
    first = deploy(swarm_root, "v1.0.0")
    assert first.returncode == 0, first.stdout + first.stderr
    assert_on_every_node(swarm_root, "v1.0.0")

    good = deploy(swarm_root, "v1.1.0")
    assert good.returncode == 0, good.stdout + good.stderr
    assert_on_every_node(swarm_root, "v1.1.0")
    assert swarm_root.last_good() == "v1.1.0"

    # A release that crashes at start: Swarm's task fails, the agent fails the release at
    # once and every task is back on v1.1.0 on both nodes.
    t = time.monotonic()
    crash = deploy(swarm_root, "v2.0.0-crash")
    crash_s = time.monotonic() - t
    assert crash.returncode == 20, crash.stdout + crash.stderr
    assert_on_every_node(swarm_root, "v1.1.0")
    assert crash_s < 50, f"the crash was not caught fast: {crash_s:.1f}s"

    # A release whose tasks run and pass Docker's healthcheck but answer health_url with an
    # error: Swarm alone would call it good; the agent's gate does not.
    error = deploy(swarm_root, "v2.0.0-error")
    assert error.returncode == 20, error.stdout + error.stderr
    assert_on_every_node(swarm_root, "v1.1.0")
    assert swarm_root.last_good() == "v1.1.0"

    history = parts.history(swarm_root)
    assert [(h["action"], h["tag"], h["result"]) for h in history[:4]] == [
        ("deploy", "v2.0.0-error", "rolled_back"), ("deploy", "v2.0.0-crash", "rolled_back"),
        ("deploy", "v1.1.0", "success"), ("deploy", "v1.0.0", "success")]
    assert history[0]["from_tag"] == "v1.1.0"
    assert "health_url answered a failure" in history[0]["failure"]["reason"]
    assert "exit code 3" in history[1]["failure"]["reason"], history[1]["failure"]
    assert history[1]["failure"]["tasks"], history[1]["failure"]
    assert history[2]["backup"], history[2]
    status = parts.status(swarm_root)
    assert status["current_tag"] == "v1.1.0" and status["healthy"] is True, status
    assert {n["state"] for n in status["nodes"]} == {"ready"} and len(status["nodes"]) == 2


# A json:// endpoint for apprise: appends each POSTed body as one line to a file.
SINK = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
port, out = int(sys.argv[1]), sys.argv[2]
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with open(out, "ab") as f:
            f.write(body.replace(b"\\n", b" ") + b"\\n")
        self.send_response(200)
        self.end_headers()
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_swarm_rollback_command_goes_back_on_every_node(swarm_root: SwarmRoot, tmp_path: Path) -> None:
    """Also: the same notifications and metrics file as with compose (SPEC §16-§17). The agent
    runs in the manager's network namespace, so the notification endpoint listens there."""
    assert swarm_root.lab is not None
    received = tmp_path / "received.jsonl"
    port = parts.free_port()
    sink = subprocess.Popen(swarm_root.lab.manager.netns_argv(sys.executable, "-c", SINK, str(port), str(received)))
    metrics = tmp_path / "textfile" / "obsdeploy.prom"
    metrics.parent.mkdir()
    env = {"OBS_AGENT_NOTIFY": json.dumps([f"json://127.0.0.1:{port}/hook"]),
           "OBS_AGENT_METRICS_FILE": str(metrics)}
    try:
        for tag in ("v1.0.0", "v1.1.0"):
            res = deploy(swarm_root, tag, **env)
            assert res.returncode == 0, res.stdout + res.stderr
        back = swarm_root.agent("rollback", env=swarm_root.env(**env))
        no_traceback(back)
        assert back.returncode == 0, back.stdout + back.stderr
    finally:
        sink.terminate()
        sink.wait(10)
    assert_on_every_node(swarm_root, "v1.0.0")
    assert swarm_root.last_good() == "v1.0.0"
    messages = [json.loads(line)["message"] for line in received.read_text().splitlines()]
    assert len(messages) == 3, messages
    assert "release: v1.0.0 -> v1.1.0" in messages[1] and "result: success" in messages[1]
    assert "action: rollback" in messages[2] and "release: v1.1.0 -> v1.0.0" in messages[2], messages[2]
    text = metrics.read_text()
    assert f'obsdeploy_release_info{{project="{swarm_root.project}",tag="v1.0.0"}} 1.0' in text, text
    assert f'obsdeploy_healthy{{project="{swarm_root.project}"}} 1.0' in text, text
    assert (f'obsdeploy_attempts_total{{action="rollback",project="{swarm_root.project}",'
            'result="success"} 1.0') in text, text


def test_swarm_preflight_refuses_a_worker_and_a_missing_image(swarm_root: SwarmRoot, lab: SwarmLab) -> None:
    worker = swarm_root.agent("deploy", "v1.0.0", env=swarm_root.env(DOCKER_HOST=lab.nodes[1].host))
    no_traceback(worker)
    assert worker.returncode == 10, worker.stdout + worker.stderr
    assert "swarm.not_manager" in worker.stdout + worker.stderr
    check = swarm_root.agent("check", "--json", env=swarm_root.env(DOCKER_HOST=lab.nodes[1].host))
    assert check.returncode == 10, check.stdout + check.stderr
    assert [p["code"] for p in json.loads(check.stdout)["problems"]] == ["swarm.not_manager"]
    assert swarm_root.agent("check").returncode == 0  # on the manager
    watching = swarm_root.agent("check", "--json", env=swarm_root.env(OBS_AGENT_WATCH='{"seconds": 30}'))
    assert watching.returncode == 0, watching.stdout + watching.stderr  # the watch works on a swarm
    proxied = swarm_root.agent("check", "--json", env=swarm_root.env(OBS_AGENT_PROXY=json.dumps(
        {"kind": "nginx", "service": "observer", "port": 8000,
         "upstream_file": str(swarm_root.path / "observer.upstream")})))
    assert proxied.returncode == 10, proxied.stdout + proxied.stderr
    assert "swarm.proxy" in [p["code"] for p in json.loads(proxied.stdout)["problems"]]
    absent = deploy(swarm_root, "v9.9.9")
    assert absent.returncode == 11, absent.stdout + absent.stderr
    assert "does not resolve" in absent.stdout + absent.stderr
    assert swarm_root.tasks() == []  # nothing was deployed


def test_swarm_kill_9_mid_deploy_then_the_next_deploy_works(swarm_root: SwarmRoot) -> None:
    res = deploy(swarm_root, "v1.0.0")
    assert res.returncode == 0, res.stdout + res.stderr
    killed = swarm_root.agent("deploy", "v1.1.0", env=swarm_root.env(OBS_AGENT_DIE_AT="started"))
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert swarm_root.last_good() == "v1.0.0"
    status = parts.status(swarm_root)
    assert status["last_action"]["result"] == "interrupted", status
    again = deploy(swarm_root, "v1.2.0")
    assert again.returncode == 0, again.stdout + again.stderr
    assert_on_every_node(swarm_root, "v1.2.0")
    assert [h["result"] for h in parts.history(swarm_root)[:2]] == ["success", "interrupted"]


def test_swarm_node_down_during_the_gate_is_rescheduled_and_gated(tmp_path: Path, lab: SwarmLab) -> None:
    """The worker drops off the network while v1.1.0 is being gated: Swarm reschedules its
    task on the manager, and the gate judges the rescheduled task (every task of the release,
    on the nodes that are up) instead of a task on a dead node."""
    root = make_swarm_root(tmp_path / "observer", lab, published=False, health_timeout=90)
    worker = lab.nodes[1]
    try:
        res = deploy(root, "v1.0.0")
        assert res.returncode == 0, res.stdout + res.stderr
        assert sorted(by_node(root.tasks()).values()) == ["v1.0.0", "v1.0.0"]
        proc = subprocess.Popen(root.argv("deploy", "v1.1.0"), env=root.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # Down once the agent has deployed v1.1.0 (a task of it exists): mid-gate.
        deadline = time.monotonic() + 60
        while "v1.1.0" not in lab.manager.docker("service", "ps", f"{root.project}_observer",
                                                 "--format", "{{.Image}}").stdout:
            assert proc.poll() is None and time.monotonic() < deadline, "v1.1.0 was never deployed"
            time.sleep(0.1)
        lab.node_down(worker)
        out, _ = proc.communicate(timeout=240)
        parts.OUTPUTS.append(out)
        assert proc.returncode == 0, out
        tasks = root.tasks()
        running = [t for t in tasks if t["state"] == "running"]
        assert [t["tag"] for t in running] == ["v1.1.0", "v1.1.0"], tasks
        assert {t["node_address"] for t in running} == {lab.manager.address}, tasks
        assert root.last_good() == "v1.1.0"
    finally:
        lab.node_up(worker)
        root.down()
        deadline = time.monotonic() + 60
        while lab.ready_nodes() != len(lab.nodes) and time.monotonic() < deadline:
            time.sleep(0.5)


# --- a seed-like project on the swarm: accessory, job, ordered steps, start-first ---------------
@pytest.fixture(scope="module")
def project_images(lab: SwarmLab) -> None:
    import docker

    from tests.parts_project import build_project_images

    client = docker.DockerClient(base_url=lab.manager.host, timeout=300)
    try:
        build_project_images(client, lab.registry)
    finally:
        client.close()


def make_swarm_project(path: Path, lab: SwarmLab) -> SwarmRoot:
    from tests.parts_project import KV_REPOSITORY, KV_TAG, PROJECT_TEMPLATE

    root = make_swarm_root(path, lab)
    text = PROJECT_TEMPLATE.format(registry=lab.registry, repository=parts.REPOSITORY, kv=KV_REPOSITORY,
                                   kv_tag=KV_TAG, project=root.project, port=root.port)
    # Swarm publishes in host mode (no IPVS here) and places tasks anywhere: a fixed loopback
    # address means nothing to it.
    text = text.replace(f'    ports:\n      - "127.0.0.1:{root.port}:8000"\n',
                        f"    ports:\n      - target: 8000\n        published: {root.port}\n        mode: host\n")
    (path / "docker-compose.server.yml").write_text(text)
    return root


def service_specs(lab: SwarmLab, project: str) -> dict[str, Any]:
    out = lab.manager.docker("service", "ls", "--filter", f"label=com.docker.stack.namespace={project}",
                             "--format", "{{.Name}}").stdout.split()
    res = {}
    for name in out:
        spec = json.loads(lab.manager.docker("service", "inspect", name).stdout)[0]
        res[name[len(project) + 1:]] = spec["Spec"]
    return res


def when(stamp: str) -> datetime:
    """Docker's RFC 3339 time with nanoseconds, to the microsecond."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def release_tags(root: SwarmRoot) -> dict[str, list[str | None]]:
    out: dict[str, list[str | None]] = {}
    for t in root.tasks():
        if t["state"] == "running":
            out.setdefault(t["name"], []).append(t["tag"])
    return {k: sorted(v, key=str) for k, v in sorted(out.items())}


def test_swarm_project_order_accessory_job_and_walk_back(tmp_path: Path, lab: SwarmLab,
                                                         project_images: None) -> None:
    root = make_swarm_project(tmp_path / "observer", lab)
    migrations = root.path / "data" / "migrations.log"
    try:
        first = deploy(root, "v1.0.0")
        assert first.returncode == 0, first.stdout + first.stderr
        assert release_tags(root) == {"gateway": ["v1.0.0"], "scanner": ["v1.0.0"],
                                      "worker": ["v1.0.0", "v1.0.0"]}
        before = service_specs(lab, root.project)
        assert set(before) == {"kv", "gateway", "scanner", "worker"}  # the job's service is gone
        worker = json.loads(lab.manager.docker("service", "inspect", f"{root.project}_worker").stdout)[0]
        assert worker["Spec"]["UpdateConfig"]["Order"] == "start-first"
        assert migrations.read_text().split() == ["v1.0.0"]

        # Step 2 (scanner) crashes: the gateway, switched and gated in step 1, goes back too;
        # the worker (step 3) and the accessory are never touched; the job ran once.
        crash = deploy(root, "v3.0.0-scannercrash")
        assert crash.returncode == 20, crash.stdout + crash.stderr
        assert release_tags(root) == {"gateway": ["v1.0.0"], "scanner": ["v1.0.0"],
                                      "worker": ["v1.0.0", "v1.0.0"]}
        after = service_specs(lab, root.project)
        assert after["kv"] == before["kv"] and after["worker"] == before["worker"], (before, after)
        gateway = json.loads(lab.manager.docker("service", "inspect", f"{root.project}_gateway").stdout)[0]
        # It was switched, then rolled back to exactly the spec it ran before.
        assert gateway["PreviousSpec"]["Labels"]["obsdeploy.release"] == "v3.0.0-scannercrash"
        assert after["gateway"] == before["gateway"]
        assert migrations.read_text().split() == ["v1.0.0", "v3.0.0-scannercrash"]
        record = parts.history(root)[0]
        assert record["result"] == "rolled_back" and "step 2 (scanner)" in record["failure"]["reason"]

        # A failing job: exit 13, nothing running was switched.
        before = service_specs(lab, root.project)
        bad = deploy(root, "v3.0.0-badjob")
        assert bad.returncode == 13, bad.stdout + bad.stderr
        assert service_specs(lab, root.project) == before
        record = parts.history(root)[0]
        assert "migration 0042 failed" in record["failure"]["job"]["log_tail"], record

        # A good release goes through in order: the gateway's update finished before the
        # scanner's started.
        good = deploy(root, "v1.1.0")
        assert good.returncode == 0, good.stdout + good.stderr
        assert release_tags(root) == {"gateway": ["v1.1.0"], "scanner": ["v1.1.0"],
                                      "worker": ["v1.1.0", "v1.1.0"]}
        status = {n: json.loads(lab.manager.docker("service", "inspect", f"{root.project}_{n}").stdout)[0]
                  for n in ("gateway", "scanner")}
        assert (when(status["gateway"]["UpdateStatus"]["CompletedAt"])
                <= when(status["scanner"]["UpdateStatus"]["StartedAt"])), status
    finally:
        root.down()
