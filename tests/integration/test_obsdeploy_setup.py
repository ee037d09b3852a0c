"""obsdeploy setup: a fresh server gets the agent (a wheel of this project, pip over SSH) and is
deployable right after, with the agent found through the link setup made."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.obsdeploy_fixtures import (  # noqa: F401 (fixtures)
    Server,
    make_server,
    obsdeploy,
)

pytestmark = pytest.mark.integration


def test_setup_installs_the_agent_and_the_server_is_deployable(
    make_server: Callable[[str], Server], tmp_path: Path  # noqa: F811
) -> None:
    server = make_server("fresh")
    venv, link = tmp_path / "remote" / "venv", tmp_path / "remote" / "bin" / "obs-agent"
    link.parent.mkdir(parents=True)
    ssh = server.ssh_args()[:6]  # --host, --identity, --known-hosts (not --agent-command)
    res = obsdeploy("setup", *ssh, "--venv", str(venv), "--link", str(link), "--json",
                    timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    [host] = json.loads(res.stdout)["hosts"]
    assert host["result"] == "ok" and host["message"].startswith("obsdeploy 0.1.0")
    assert link.resolve() == (venv / "bin" / "obs-agent").resolve()

    deploy = obsdeploy("deploy", "v1.0.0", *ssh, "--agent-command", str(link))
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert server.root.last_good() == "v1.0.0"
