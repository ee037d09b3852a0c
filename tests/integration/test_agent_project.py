"""SPEC §14 end to end on a project like the seed's: an accessory, a job, two ordered release
services (one with container_name), a start-first worker with 2 replicas; real engine,
registry and compose."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import parts, runs
from tests.parts import history, no_traceback, status
from tests.parts_project import (
    build_project_images,
    containers,
    make_project_root,
    release_of,
    running,
)


@pytest.fixture(scope="session")
def project_images(docker_client, images, registry: parts.Registry) -> None:  # type: ignore[no-untyped-def]
    """Built and pushed once per run, whichever worker gets there first."""
    runs.shared("project-images", lambda _: build_project_images(docker_client, registry.address) or {})


@pytest.fixture
def project(tmp_path: Path, project_images: None, registry: parts.Registry) -> Iterator[parts.AgentRootDir]:
    root = make_project_root(tmp_path / "seed", registry.address, f"prj-{uuid.uuid4().hex[:8]}",
                             health_timeout=20)
    yield root
    root.down()
    leaks = root.secret_leaks()
    assert not leaks, f"secret values leaked into: {leaks}"


def deploy(root: parts.AgentRootDir, *args: str, **env: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    res = root.agent(*args, "--json", env=root.env(**env))
    no_traceback(res)
    doc = json.loads(res.stdout) if res.stdout.strip() else {}
    return res.returncode, doc


def service_state(root: parts.AgentRootDir) -> dict[str, list[str | None]]:
    """service -> the releases of its running containers."""
    out: dict[str, list[str | None]] = {}
    for c in containers(root.project):
        if c["State"]["Running"]:
            out.setdefault(c["Config"]["Labels"]["com.docker.compose.service"], []).append(release_of(c))
    return {k: sorted(v, key=str) for k, v in out.items()}


def at(tag: str) -> dict[str, list[str | None]]:
    return {"kv": [None], "gateway": [tag], "scanner": [tag], "worker": [tag, tag]}


def gateway_name_is_on(root: parts.AgentRootDir, tag: str) -> None:
    [c] = running(root.project, "gateway")
    assert c["Name"] == f"/{root.project}-gateway" and release_of(c) == tag


def kv_identity(root: parts.AgentRootDir) -> tuple[str, str]:
    [c] = running(root.project, "kv")
    return c["Id"], c["State"]["StartedAt"]


def migrations(root: parts.AgentRootDir) -> list[str]:
    log = root.path / "data" / "migrations.log"
    return log.read_text().split() if log.exists() else []


class WorkerWatch:
    """Counts the worker's running containers every 50 ms while a deploy runs."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.counts: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.counts.append(len(running(self.project, "worker")))
                time.sleep(0.05)
        except Exception as exc:  # raised again in the test, not lost with the thread
            self.error = exc

    def __enter__(self) -> WorkerWatch:
        self.error: Exception | None = None
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise self.error


def test_plan_then_deploy_in_order_accessory_untouched_job_once_rollback(project: parts.AgentRootDir) -> None:
    res = project.agent("plan", "v1.0.0", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    plan = json.loads(res.stdout)
    assert plan["jobs"] == ["migrate"]
    assert [[s["name"] for s in st["services"]] for st in plan["steps"]] == [
        ["gateway"], ["scanner"], ["worker"]]
    assert plan["steps"][2]["services"][0] | {"contract": None} == {
        "name": "worker", "strategy": "start-first", "replicas": 2, "container_name": None,
        "contract": None, "single_writer": False}
    assert plan["accessories"] == [{"name": "kv", "action": "start", "definition_changed": False,
                                  "needs": [], "after_step": 0, "dump": [], "restore": [],
                                  "build": False}]
    assert containers(project.project) == []  # plan changed nothing

    code, out = deploy(project, "deploy", "v1.0.0")
    assert code == 0, out
    assert service_state(project) == at("v1.0.0")
    gateway_name_is_on(project, "v1.0.0")
    assert migrations(project) == ["v1.0.0"]
    kv = kv_identity(project)
    st = status(project)
    assert st["current_tag"] == "v1.0.0" and st["healthy"]
    roles = {(s["name"], s["role"], s["tag"]) for s in st["services"]}
    assert roles == {("kv", "accessory", None), ("gateway", "release", "v1.0.0"),
                     ("scanner", "release", "v1.0.0"), ("worker", "release", "v1.0.0")}

    # The plan for the next tag names what differs from the running services.
    res = project.agent("plan", "v1.1.0")
    assert res.returncode == 0 and "v1.0.0 ->" in res.stdout and "kv: running, left alone" in res.stdout

    with WorkerWatch(project.project) as watch:
        code, out = deploy(project, "deploy", "v1.1.0")
    assert code == 0, out
    assert out["from_tag"] == "v1.0.0" and out["current_tag"] == "v1.1.0"
    assert service_state(project) == at("v1.1.0")
    gateway_name_is_on(project, "v1.1.0")
    assert kv_identity(project) == kv, "a deploy must never restart an accessory"
    assert migrations(project) == ["v1.0.0", "v1.1.0"]
    # start-first: the worker always had a running container, and at some moment four.
    assert watch.counts and min(watch.counts) >= 2 and max(watch.counts) == 4, watch.counts
    # Order: gateway's new container started before scanner's, scanner's before the worker's.
    started = {svc: max(c["State"]["StartedAt"] for c in running(project.project, svc))
               for svc in ("gateway", "scanner", "worker")}
    assert started["gateway"] < started["scanner"] < started["worker"]

    code, out = deploy(project, "rollback")
    assert code == 0, out
    assert service_state(project) == at("v1.0.0")
    gateway_name_is_on(project, "v1.0.0")
    assert kv_identity(project) == kv
    assert migrations(project) == ["v1.0.0", "v1.1.0"], "jobs never run on a rollback"
    assert project.last_good() == "v1.0.0"


def test_a_failing_later_step_sends_the_switched_steps_back(project: parts.AgentRootDir) -> None:
    assert deploy(project, "deploy", "v1.0.0")[0] == 0
    kv = kv_identity(project)
    code, out = deploy(project, "deploy", "v3.0.0-scannercrash")
    assert code == 20, out
    assert service_state(project) == at("v1.0.0")
    gateway_name_is_on(project, "v1.0.0")
    assert kv_identity(project) == kv
    rec = history(project)[0]
    assert rec["result"] == "rolled_back" and rec["from_tag"] == "v1.0.0"
    assert "step 2 (scanner)" in rec["failure"]["reason"] and "exited with code 3" in rec["failure"]["reason"]
    assert any("fixture crash" in tail for tail in rec["failure"]["log_tail"].values())
    assert project.last_good() == "v1.0.0"
    # Nothing of the failed release is left; the kept containers of v1.0.0 run again.
    assert not [c for c in containers(project.project) if release_of(c) == "v3.0.0-scannercrash"]


def test_a_failing_job_stops_the_deploy_before_any_switch(project: parts.AgentRootDir) -> None:
    assert deploy(project, "deploy", "v1.0.0")[0] == 0
    before = {c["Id"]: c["State"]["StartedAt"] for c in containers(project.project)}
    code, out = deploy(project, "deploy", "v3.0.0-badjob")
    assert code == 13, out
    after = {c["Id"]: c["State"]["StartedAt"] for c in containers(project.project)}
    assert after == before, "nothing running may be switched, restarted or created"
    assert service_state(project) == at("v1.0.0")
    rec = history(project)[0]
    assert (rec["action"], rec["tag"], rec["result"]) == ("deploy", "v3.0.0-badjob", "failed")
    assert rec["failure"]["job"]["exit_code"] == 4
    assert "migration 0042 failed" in rec["failure"]["job"]["log_tail"]

    # A job that outlives job_timeout is stopped, and nothing of it is left.
    t = time.monotonic()
    code, out = deploy(project, "deploy", "v2.0.0-slow", OBS_AGENT_JOB_TIMEOUT="2")
    assert code == 13 and "job_timeout=2s" in out["message"], out
    assert time.monotonic() - t < 30
    assert {c["Id"] for c in containers(project.project)} == set(before)
    assert project.last_good() == "v1.0.0" and migrations(project) == ["v1.0.0"]


def test_kill_mid_way_through_a_multi_step_deploy(project: parts.AgentRootDir) -> None:
    assert deploy(project, "deploy", "v1.0.0")[0] == 0
    res = project.agent("deploy", "v1.1.0", env=project.env(OBS_AGENT_DIE_AT="step1_done"))
    assert res.returncode == -9, res.stdout + res.stderr
    state = service_state(project)
    assert state["gateway"] == ["v1.1.0"] and state["scanner"] == ["v1.0.0"]  # half-way
    st = status(project)
    assert st["last_action"]["result"] == "interrupted" and st["current_tag"] is None
    assert project.last_good() == "v1.0.0"
    # The next deploy finishes the job without manual cleanup.
    code, out = deploy(project, "deploy", "v1.1.0")
    assert code == 0, out
    assert service_state(project) == at("v1.1.0")
    gateway_name_is_on(project, "v1.1.0")
    assert deploy(project, "rollback")[0] == 0
    assert service_state(project) == at("v1.0.0")
    gateway_name_is_on(project, "v1.0.0")


def test_preflight_refuses_a_plan_that_cannot_work(project: parts.AgentRootDir) -> None:
    compose = project.path / "docker-compose.server.yml"
    text = compose.read_text()
    # scanner ordered before the gateway it depends on; the start-first worker on a fixed port.
    text = text.replace('obsdeploy.order: "2"', 'obsdeploy.order: "0"')
    port = parts.free_port()
    text = text.replace("      ROLE: worker\n", f"      ROLE: worker\n    ports: ['127.0.0.1:{port}:8000']\n")
    compose.write_text(text)
    res = project.agent("check", "--json")
    assert res.returncode == 10, res.stdout + res.stderr
    codes = sorted(p["code"] for p in json.loads(res.stdout)["problems"])
    assert codes == ["plan.order_depends_on", "plan.start_first_port"]
    code, _ = deploy(project, "deploy", "v1.0.0")
    assert code == 10 and containers(project.project) == []


# The kill -9 matrix on the multi-service project: (deployed tag, checkpoint). Every case: the
# agent died; last_good_tag is whole; status reports the interrupted attempt; the next deploy
# brings every service, replica and container_name to the new tag without manual cleanup.
KILL_POINTS = [
    ("v1.1.0", "stopped"),               # step 1: the gateway's old container stopped, new not started
    ("v1.1.0", "step2_done"),            # gateway and scanner switched, the worker not yet
    ("v1.1.0", "gated"),                 # every step passed, last_good_tag not yet written
    ("v3.0.0-scannercrash", "failed_stopped"),  # walking back: the crashed scanner killed
    ("v3.0.0-scannercrash", "rolled_back"),     # walked back, not yet gated again
]


@pytest.mark.parametrize(("tag", "step"), KILL_POINTS, ids=[f"{t}@{s}" for t, s in KILL_POINTS])
def test_kill_9_at_every_stage_of_a_multi_step_deploy(project: parts.AgentRootDir, tag: str, step: str) -> None:
    assert deploy(project, "deploy", "v1.0.0")[0] == 0
    res = project.agent("deploy", tag, env=project.env(OBS_AGENT_DIE_AT=step))
    assert res.returncode == -9, f"did not die at {step}: {res.stdout}{res.stderr}"
    assert project.last_good() == "v1.0.0"
    st = status(project)
    assert (st["last_action"]["action"], st["last_action"]["tag"], st["last_action"]["result"]) == (
        "deploy", tag, "interrupted")
    assert [r["result"] for r in history(project)] == ["interrupted", "success"]
    code, out = deploy(project, "deploy", "v1.2.0")
    assert code == 0, out
    assert service_state(project) == at("v1.2.0")
    gateway_name_is_on(project, "v1.2.0")
    # Only the kept containers of the previous good release remain beside the running ones.
    stopped = {release_of(c) for c in containers(project.project) if not c["State"]["Running"]}
    assert stopped <= {"v1.0.0", None}, stopped


def test_a_stopped_accessory_is_started_and_a_changed_one_only_reported(project: parts.AgentRootDir) -> None:
    assert deploy(project, "deploy", "v1.0.0")[0] == 0
    [kv] = running(project.project, "kv")
    compose = project.path / "docker-compose.server.yml"
    compose.write_text(compose.read_text().replace(
        "  kv:\n", "  kv:\n    environment:\n      KV_MAXMEMORY: 64mb\n", 1))
    res = project.agent("check", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert any("accessory kv" in n and "differs" in n for n in json.loads(res.stdout)["notes"])
    res = project.agent("plan", "v1.1.0", "--json")
    assert [a for a in json.loads(res.stdout)["accessories"]] == [
        {"name": "kv", "action": "leave", "definition_changed": True, "needs": [], "after_step": 0,
         "dump": [], "restore": [], "build": False}]
    assert deploy(project, "deploy", "v1.1.0")[0] == 0
    assert [c["Id"] for c in running(project.project, "kv")] == [kv["Id"]], "reported, never applied"

    subprocess.run(["docker", "stop", kv["Id"]], check=True, capture_output=True)
    code, out = deploy(project, "deploy", "v1.2.0")
    assert code == 0, out
    [again] = running(project.project, "kv")
    assert again["Id"] == kv["Id"] and again["State"]["Health"]["Status"] == "healthy"
    assert service_state(project) == at("v1.2.0")


def test_a_worker_that_dies_during_the_watch_walks_every_step_back(project: parts.AgentRootDir) -> None:
    """SPEC §16 on the seed-like project: every step passed its gate, then one of the
    start-first worker's new containers dies on probation. The whole release goes back, as
    after a failed gate: every service on v1.0.0 again, the gateway's container_name on it,
    the accessory untouched, last_good_tag never moved."""
    from tests.faults import collect, spawn, wait_for

    assert deploy(project, "deploy", "v1.0.0")[0] == 0
    kv = kv_identity(project)
    watch = {"seconds": 60, "interval": 5, "checks": [{"kind": "log", "pattern": "fatal", "max_per_minute": 5}]}
    journal = project.path / "state" / "attempt.json"

    def watching() -> bool:
        try:
            return json.loads(journal.read_text()).get("watch", {}).get("result") == "watching"
        except (FileNotFoundError, ValueError):
            return False

    proc = spawn(project, "deploy", "v1.1.0", env=project.env(OBS_AGENT_WATCH=json.dumps(watch)))
    try:
        wait_for(watching, 90, "the watch to begin", interval=0.05)
        assert service_state(project) == at("v1.1.0") and project.last_good() == "v1.0.0"
        victim = running(project.project, "worker")[0]["Id"]
        subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
        t = time.monotonic()
    finally:
        res = collect(proc)
    no_traceback(res)
    assert res.returncode == 20, res.stdout + res.stderr
    assert time.monotonic() - t < 30
    assert service_state(project) == at("v1.0.0")
    gateway_name_is_on(project, "v1.0.0")
    assert kv_identity(project) == kv
    assert project.last_good() == "v1.0.0"
    rec = history(project)[0]
    assert rec["result"] == "rolled_back" and "watch: container" in rec["failure"]["reason"], rec["failure"]
    assert rec["watch"]["result"] == "failed"


def test_an_accessory_with_build_is_built_here_only_when_its_image_is_missing(
        project: parts.AgentRootDir) -> None:
    """SPEC §24: an accessory's `build:` is built on the server (that service only) when its
    image is missing, and plan says so; an image that exists is never built again."""
    image = f"obs-built-{uuid.uuid4().hex[:8]}:1"
    context = project.path / "tool"
    context.mkdir()
    (context / "Dockerfile").write_text('ARG BASE\nFROM ${BASE}\nCMD ["sleep", "3600"]\n')
    compose = project.path / "docker-compose.server.yml"
    text, n = re.subn(r"^services:\n", (
        "services:\n  tool:\n    image: " + image + "\n    build:\n      context: ./tool\n"
        "      args:\n        BASE: " + parts.FIXTURE_BASE + "\n"), compose.read_text(), count=1, flags=re.M)
    assert n == 1
    compose.write_text(text)
    try:
        res = project.agent("plan", "v1.0.0")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "tool: missing or stopped: started first; its image is missing: built here" in res.stdout
        assert subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0, \
            "plan built it"
        code, out = deploy(project, "deploy", "v1.0.0")
        assert code == 0, out
        built = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image],
                               capture_output=True, text=True, check=True).stdout.strip()
        [tool] = running(project.project, "tool")
        assert tool["Image"] == built

        res = project.agent("plan", "v1.1.0", "--json")
        assert [a["build"] for a in json.loads(res.stdout)["accessories"] if a["name"] == "tool"] == [False]
        # A build now would make another image: the deploy must start the one it has.
        (context / "Dockerfile").write_text('ARG BASE\nFROM ${BASE}\nLABEL rebuilt=yes\nCMD ["sleep", "3600"]\n')
        subprocess.run(["docker", "stop", tool["Id"]], check=True, capture_output=True)
        code, out = deploy(project, "deploy", "v1.1.0")
        assert code == 0, out
        [again] = running(project.project, "tool")
        assert again["Id"] == tool["Id"] and again["Image"] == built, "built or recreated again"
        assert subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image], capture_output=True,
                              text=True, check=True).stdout.strip() == built
    finally:
        project.down()
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
