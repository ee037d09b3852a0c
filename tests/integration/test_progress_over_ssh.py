"""Issue 15: a long pull over SSH is not silent. The agent, its stderr not a terminal, says how
far its pull is every `progress_seconds`; obsdeploy streams those lines with the host's name
while stdout stays one JSON document."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import parts
from tests.faults import FaultProxy
from tests.integration.obsdeploy_fixtures import (  # noqa: F401 (fixtures)
    Server,
    make_server,
    obsdeploy,
)

pytestmark = pytest.mark.integration

BIG_TAG = "v1.3.0-big"


@pytest.fixture(scope="module")
def big_release(docker_client, registry: parts.Registry) -> str:  # type: ignore[no-untyped-def]
    """A release with a 4 MB incompressible layer (the registry gzips nothing of it away)."""
    ref = f"{registry.address}/{parts.REPOSITORY}:{BIG_TAG}"
    with tempfile.TemporaryDirectory() as ctx:
        Path(ctx, "blob").write_bytes(os.urandom(4 * 1024 * 1024))
        Path(ctx, "Dockerfile").write_text(
            f"FROM {parts.FIXTURE_BASE}\nCOPY blob /blob\nENV MODE=healthy VERSION={BIG_TAG}\n")
        docker_client.images.build(path=ctx, tag=ref, rm=True)
    for line in docker_client.api.push(f"{registry.address}/{parts.REPOSITORY}", tag=BIG_TAG,
                                       stream=True, decode=True):
        assert "error" not in line, line
    docker_client.images.remove(ref, force=True)
    return ref


def test_a_slow_pull_over_ssh_reports_its_progress_with_the_host_name(
        make_server: Callable[[str], Server], registry: parts.Registry,  # noqa: F811
        big_release: str) -> None:
    server = make_server("progress")
    root = server.root
    proxy = FaultProxy(registry.address).start()
    try:
        compose = root.path / "docker-compose.server.yml"
        compose.write_text(compose.read_text().replace(registry.address, proxy.address))
        config = json.loads((root.path / "deployment_config.json").read_text())
        config["agent"]["progress_seconds"] = 0.5
        (root.path / "deployment_config.json").write_text(json.dumps(config))
        proxy.set("slow", delay=0.05)  # each chunk from the registry held back: a pull of ~3 s

        res = obsdeploy("deploy", BIG_TAG, *server.ssh_args(), "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        report = json.loads(res.stdout)  # stdout: the JSON report, nothing else
        assert report["hosts"][0]["to_tag"] == BIG_TAG
        label = server.sshd.address
        pull = re.compile(rf"^{re.escape(label)} \| .* pull {re.escape(proxy.address)}/\S+:"
                          rf"{BIG_TAG}: (\d+\.\d) MB of (\d+\.\d) MB \(\d+%\), (\d+)/(\d+) layers",
                          re.M)
        seen = pull.findall(res.stderr)
        assert len(seen) >= 2, res.stderr  # several lines while it pulled, not one at the end
        done = [float(m[0]) for m in seen]
        assert done == sorted(done) and done[-1] > done[0], seen
        assert re.search(rf"^{re.escape(label)} \| .* pull \S+:{BIG_TAG}: done, ", res.stderr,
                         re.M), res.stderr
    finally:
        proxy.stop()
        subprocess.run(["docker", "rmi", f"{proxy.address}/{parts.REPOSITORY}:{BIG_TAG}"],
                       capture_output=True)
