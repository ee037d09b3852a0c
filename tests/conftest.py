"""Session-wide real parts: one engine, one registry, fixture images built once.

Under CI=true a missing part fails the test (a green CI means the real parts ran); on a
developer machine it skips with the command that installs it.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests import parts

if TYPE_CHECKING:
    from tests.parts_swarm import SwarmLab

IN_CI = os.environ.get("CI", "").lower() == "true"
# Set once the session has built the fixture images (so it used the engine, and the base
# image is there for the end-of-session check).
ENGINE_USED: list[str] = []


def missing(part: str) -> None:
    msg = f"{part} is not available; run `bash scripts/setup-machine.sh`"
    if IN_CI:
        pytest.fail(msg + " (CI=true: integration tests never skip)")
    pytest.skip(msg)


@pytest.fixture(scope="session", autouse=True)
def host_engine_keeps_its_bridge() -> Iterator[None]:
    """Issue 12: once a session has used the engine, the machine's engine must still run a
    container on its default bridge when the session ends. A second dockerd on the machine
    deletes docker0 when started with `--bridge=none` (or restarted with
    `--default-address-pool`), which breaks `docker build` and `docker run` of the host engine
    until it is restarted (tests/faults.py `PrivateEngine` has a bridge of its own for that)."""
    had = parts.interfaces()
    yield
    if not ENGINE_USED:
        return
    problem = parts.default_bridge_problem(ENGINE_USED[0])
    if problem:
        iface = parts.default_bridge_name() or "docker0"
        when = ("" if iface in had else
                f" {iface} was already missing when this session started: an earlier run or"
                " something else on the machine removed it.")
        pytest.fail(
            "the host engine cannot run a container on its default bridge after the test session:"
            f" {problem}. Likely cause: a second dockerd started by the suite (tests/faults.py"
            " PrivateEngine) with --bridge=none or --default-address-pool, or on the host engine's"
            f" own bridge, deleted or took over that bridge.{when} Restart the host dockerd to recreate it (as"
            " scripts/setup-machine.sh starts it).",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def docker_client():  # type: ignore[no-untyped-def]
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:
        missing(f"the Docker engine ({exc})")
    return client


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[parts.Registry]:
    import shutil

    if not shutil.which("docker-registry"):
        missing("docker-registry")
    reg = parts.Registry(tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def images(docker_client, registry: parts.Registry) -> dict[str, str]:  # type: ignore[no-untyped-def]
    refs = parts.build_fixture_images(docker_client, registry.address)
    ENGINE_USED.append(parts.FIXTURE_BASE)
    return refs


@pytest.fixture(scope="session")
def service_images() -> dict[str, str]:
    """Real service images built here from Debian's packages (tests/parts_images.py): name ->
    reference, for debian (the base), postgres, redis, mariadb, nginx and pyapp. Cached on the
    engine by content hash, so a machine builds them once (a few minutes)."""
    from tests import parts_images

    try:
        built = parts_images.ensure_images()
    except FileNotFoundError as exc:
        missing(str(exc))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        msg = f"building the service images failed: {exc}"
        if IN_CI:
            pytest.fail(msg + " (CI=true: never skipped)", pytrace=False)
        pytest.skip(msg)
    ENGINE_USED.append(built.refs["debian"])
    return built.refs


@pytest.fixture
def agent_root(tmp_path: Path, images: dict[str, str], registry: parts.Registry) -> Iterator[parts.AgentRootDir]:
    root = parts.make_agent_root(tmp_path / "observer", registry.address, f"obs-{uuid.uuid4().hex[:8]}")
    yield root
    root.down()
    leaks = root.secret_leaks()
    assert not leaks, f"secret values leaked into: {leaks}"


@pytest.fixture(scope="session")
def lab() -> Iterator[SwarmLab]:
    """A two-node Docker Swarm (tests/parts_swarm.py), built once per session."""
    import shutil

    from tests.parts_swarm import SwarmLab

    if os.geteuid() != 0:
        missing("root (network namespaces for the swarm lab)")
    for tool in ("dockerd", "docker-registry", "nsenter", "curl", "ip"):
        if not shutil.which(tool):
            missing(tool)
    # The host engine is never used here (the end-of-session bridge check needs no entry).
    lab = SwarmLab()
    try:
        lab.start()
        lab.push_fixture_images()
        yield lab
    finally:
        lab.destroy()
