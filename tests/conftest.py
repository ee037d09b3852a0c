"""Session-wide real parts: one engine, one registry, fixture images built once.

Under CI=true a missing part fails the test (a green CI means the real parts ran); on a
developer machine it skips with the command that installs it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import parts

IN_CI = os.environ.get("CI", "").lower() == "true"


def missing(part: str) -> None:
    msg = f"{part} is not available; run `bash scripts/setup-machine.sh`"
    if IN_CI:
        pytest.fail(msg + " (CI=true: integration tests never skip)")
    pytest.skip(msg)


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
    return parts.build_fixture_images(docker_client, registry.address)


@pytest.fixture
def agent_root(tmp_path: Path, images: dict[str, str], registry: parts.Registry) -> Iterator[parts.AgentRootDir]:
    root = parts.make_agent_root(tmp_path / "observer", registry.address, f"obs-{uuid.uuid4().hex[:8]}")
    yield root
    root.down()
    leaks = root.secret_leaks()
    assert not leaks, f"secret values leaked into: {leaks}"
