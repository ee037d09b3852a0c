"""Issue 12: the shipped compose/ templates and examples/observer, deployed end to end.

The example's Dockerfile is built as it is, FROM python:3.11-slim, which the machine cannot
pull: a local stand-in is made once with debootstrap and cached in the engine
(tests/parts_debian.py). The templates are used as shipped, except for what only a test
must change: the image's registry (GHCR -> the test registry), the host port (8000 -> a
free loopback port, other sessions share the machine) and the agent's project name and
health_url."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import parts, runs
from tests.conftest import missing
from tests.parts import REPO, SECRETS, AgentRootDir, Registry, history, status

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def example_images(docker_client, registry: Registry) -> dict[str, str]:  # type: ignore[no-untyped-def]
    from tests import parts_debian

    if not shutil.which("debootstrap"):
        missing("debootstrap")
    repo = f"{registry.address}/tawbury/observer-e2e"

    def build(_: Path) -> dict[str, str]:  # once per run, whichever worker gets there first
        parts_debian.ensure_base_image()
        docker_client.images.build(path=str(REPO / "examples" / "observer"), tag=f"{repo}:v1.0.0", rm=True)
        docker_client.images.get(f"{repo}:v1.0.0").tag(repo, "v1.1.0")
        for tag in ("v1.0.0", "v1.1.0"):
            for line in docker_client.api.push(repo, tag=tag, stream=True, decode=True):
                if "error" in line:
                    raise RuntimeError(f"push {repo}:{tag}: {line['error']}")
        return {"repo": repo}

    return runs.shared("example-images", build)  # type: ignore[return-value]


@pytest.fixture
def template_root(tmp_path: Path, example_images: dict[str, str]) -> Iterator[AgentRootDir]:
    path = tmp_path / "observer"
    path.mkdir()
    port = parts.free_port()
    project = f"obs-e2e-{uuid.uuid4().hex[:8]}"
    compose = (REPO / "compose" / "docker-compose.server.yml").read_text()
    assert "ghcr.io/tawbury/observer:" in compose and '"8000:8000"' in compose
    compose = compose.replace("ghcr.io/tawbury/observer:", example_images["repo"] + ":")
    compose = compose.replace('"8000:8000"', f'"127.0.0.1:{port}:8000"')
    (path / "docker-compose.server.yml").write_text(compose)
    config = json.loads((REPO / "compose" / "deployment_config.json").read_text())
    config["agent"].update(project_name=project, health_url=f"http://127.0.0.1:{port}/health",
                           min_free_mb=10, stabilize_seconds=1)
    # The template's probation (the seed's smoke test) runs too, on the test's port and for
    # 3 s instead of 5 minutes.
    watch = config["agent"]["watch"]
    for check in watch["checks"]:
        if "url" in check:
            check["url"] = check["url"].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    watch.update(seconds=3, interval=1)
    (path / "deployment_config.json").write_text(json.dumps(config, indent=2))
    env_file = path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    env_file.chmod(0o600)
    root = AgentRootDir(path, port, example_images["repo"], project)
    yield root
    root.down()
    assert not root.secret_leaks()


def _container(project: str, tag: str) -> dict:  # type: ignore[type-arg]
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}",
                          "--filter", f"label=obsdeploy.release={tag}"],
                         capture_output=True, text=True, timeout=60).stdout.split()
    assert len(ids) == 1, (tag, ids)
    return json.loads(subprocess.run(["docker", "inspect", ids[0]], capture_output=True, text=True,
                                     timeout=60).stdout)[0]  # type: ignore[no-any-return]


def test_the_templates_deploy_the_example_observer_end_to_end(template_root: AgentRootDir) -> None:
    root = template_root
    res = root.agent("deploy", "v1.0.0", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    # Preflight made the contract directories for the template's user, 1000:1000.
    for d in ("data", "logs", "config"):
        st = (root.path / d).stat()
        assert (st.st_uid, st.st_gid) == (1000, 1000), d
    health = root.health()
    assert health is not None and health["status"] == "healthy" and health["version"] == "v1.0.0"
    assert health["checks"]["environment"] == {"QTS_OBSERVER_STANDALONE": True, "PYTHONPATH": True,
                                     "KIS_API_KEY": True, "KIS_API_SECRET": True}
    first = _container(root.project, "v1.0.0")
    assert first["Config"]["User"] == "1000:1000"
    env = dict(e.split("=", 1) for e in first["Config"]["Env"])
    assert env["PYTHONPATH"] == "/app/src:/app" and env["QTS_OBSERVER_STANDALONE"] == "1"
    archive = root.path / "config" / "observer" / "observer.jsonl"
    assert archive.exists()
    time.sleep(1.5)  # a record or two more

    res = root.agent("deploy", "v1.1.0", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert root.health()["version"] == "v1.1.0"  # type: ignore[index]
    # The old release stopped gracefully on SIGTERM: exit 0, its shutdown logged, and every
    # line of the archive it shared with the new release parses (no partial record).
    old = _container(root.project, "v1.0.0")
    assert old["State"]["Running"] is False and old["State"]["ExitCode"] == 0, old["State"]
    logs = subprocess.run(["docker", "logs", old["Id"]], capture_output=True, text=True, timeout=60)
    assert "received SIGTERM: shutting down" in logs.stdout + logs.stderr
    assert "observer stopped after" in logs.stdout + logs.stderr
    lines = archive.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert {r.get("version") for r in records} >= {"v1.0.0", "v1.1.0"}, records[-3:]
    st = status(root)
    assert st["current_tag"] == "v1.1.0" and st["healthy"] is True
    records = history(root)
    assert [r["result"] for r in records] == ["success", "success"]
    watched = records[0]["watch"]
    assert watched["result"] == "passed" and watched["rounds"] >= 2, watched
