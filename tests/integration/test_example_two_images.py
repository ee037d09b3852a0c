"""examples/two-images: the observer and a worker released as one version by `obsdeploy
release` (images_from its compose.yaml) and deployed by the agent in order, the observer first;
then a release in which only the worker changed (the observer reused) deployed again. Real
engine, registry, git and compose; the examples' Dockerfiles build FROM python:3.11-slim, the
local stand-in of tests/parts_debian.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import parts
from tests.conftest import missing
from tests.integration.obsdeploy_fixtures import clean_env, obsdeploy

pytestmark = pytest.mark.integration

EXAMPLES = parts.REPO / "examples"


class Laptop:
    """A checkout of the examples (observer/ and two-images/) with a bare `origin`."""

    def __init__(self, tmp: Path, registry: str) -> None:
        self.repo, self.remote = tmp / "app", tmp / "origin.git"
        subprocess.run(["git", "init", "-q", "--bare", str(self.remote)], check=True, env=clean_env())
        for name in ("observer", "two-images"):
            shutil.copytree(EXAMPLES / name, self.repo / name)
        self.project = self.repo / "two-images"
        (self.project / ".env").write_text(f"REGISTRY={registry}\n")  # kept out of git
        self.git("init", "-q", "-b", "main")
        self.git("remote", "add", "origin", str(self.remote))
        self.commit("the example")

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", str(self.repo), *args], env=clean_env(), check=True,
                              capture_output=True, text=True).stdout.strip()

    def commit(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)

    def release(self, version: str) -> dict[str, Any]:
        res = obsdeploy("release", version, "--json", cwd=self.project)
        assert res.returncode == 0, res.stdout + res.stderr
        return json.loads(res.stdout)  # type: ignore[no-any-return]


class Server:
    """An agent root holding the same compose.yaml, its .env and deployment_config.json."""

    def __init__(self, path: Path, laptop: Laptop, registry: str) -> None:
        self.path = path
        path.mkdir()
        self.project = f"obs-two-{uuid.uuid4().hex[:8]}"
        compose = (laptop.project / "compose.yaml").read_text()
        compose, n = re.subn(r"^name: .*$", f"name: {self.project}", compose, count=1, flags=re.M)
        assert n == 1
        (path / "compose.yaml").write_text(compose)
        self.port = parts.free_port()
        (path / ".env").write_text(f"REGISTRY={registry}\nOBSERVER_PORT={self.port}\n")
        (path / ".env").chmod(0o600)  # the agent's rule for the file that holds secrets
        (path / "deployment_config.json").write_text(json.dumps({"agent": {
            "compose_file": "compose.yaml", "project_name": self.project,
            "health_url": f"http://127.0.0.1:{self.port}/health", "health_timeout": 60,
            "required_env": ["REGISTRY"], "secret_env": [], "mounts": {}, "verify": {"paths": []},
            "stabilize_seconds": 0.3, "min_free_mb": 10}}))

    def agent(self, *args: str) -> dict[str, Any]:
        env = {k: v for k, v in clean_env().items() if k not in ("REGISTRY", "IMAGE_TAG")}
        res = subprocess.run([str(parts.VENV_BIN / "obs-agent"), *args, "--json"],
                             env={**env, "OBS_AGENT_ROOT": str(self.path)}, capture_output=True,
                             text=True, timeout=600)
        parts.no_traceback(res)
        assert res.returncode == 0, res.stdout + res.stderr
        return json.loads(res.stdout)  # type: ignore[no-any-return]

    def deploy_in_order(self, version: str) -> None:
        """The plan switches the observer, then the worker; the deploy does, and each runs
        `version` (the worker's container started after the observer's)."""
        plan = self.agent("plan", version)
        assert [[s["name"] for s in step["services"]] for step in plan["steps"]] == [
            ["observer"], ["worker"]], plan
        outcome = self.agent("deploy", version)
        assert outcome["result"] == "success" and outcome["tag"] == version, outcome
        started = {}
        for service in ("observer", "worker"):
            ids = subprocess.run(
                ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
                 "--filter", f"label=com.docker.compose.service={service}",
                 "--filter", f"label=obsdeploy.release={version}"],
                capture_output=True, text=True, check=True).stdout.split()
            assert len(ids) == 1, (service, ids)
            started[service] = subprocess.run(
                ["docker", "inspect", "--format", "{{.State.StartedAt}}", ids[0]],
                capture_output=True, text=True, check=True).stdout.strip()
        assert started["observer"] < started["worker"], started

    def down(self) -> None:
        ids = subprocess.run(["docker", "ps", "-aq", "--filter",
                              f"label=com.docker.compose.project={self.project}"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", "-v", *ids], capture_output=True)
        subprocess.run(["docker", "network", "rm", f"{self.project}_default"], capture_output=True)


@pytest.fixture
def two(tmp_path: Path, registry: parts.Registry, docker_client) -> Iterator[tuple[Laptop, Server]]:  # type: ignore[no-untyped-def]
    from tests import parts_debian

    if not shutil.which("debootstrap"):
        missing("debootstrap")
    parts_debian.ensure_base_image()
    repo = f"{registry.address}/two-{uuid.uuid4().hex[:8]}"
    laptop = Laptop(tmp_path, repo)
    server = Server(tmp_path / "server", laptop, repo)
    yield laptop, server
    server.down()
    for img in docker_client.images.list():
        if any(t.startswith(repo + "/") for t in img.tags):
            subprocess.run(["docker", "rmi", "-f", img.id], capture_output=True)


def test_two_images_released_then_deployed_in_order(two: tuple[Laptop, Server]) -> None:
    laptop, server = two
    first = laptop.release("v1.0.0")
    assert sorted((i["name"], i["action"]) for i in first["images"]) == [
        ("observer", "build"), ("worker", "build")]
    server.deploy_in_order("v1.0.0")

    (laptop.project / "worker" / "worker.py").write_text(
        (laptop.project / "worker" / "worker.py").read_text().replace('"5"', '"2"'))
    laptop.commit("the worker asks every 2 s")
    second = laptop.release("v1.1.0")
    images = {i["name"]: i for i in second["images"]}
    assert (images["observer"]["action"], images["observer"]["reused_from"]) == ("reuse", "v1.0.0")
    observer_v1 = next(i for i in first["images"] if i["name"] == "observer")
    assert images["observer"]["digest"] == observer_v1["digest"]
    assert images["worker"]["action"] == "build"
    server.deploy_in_order("v1.1.0")
