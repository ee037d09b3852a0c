"""One list of exit codes (`ExitCode`): both CLIs' --help and the README say what it says."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from deploy_tool.cli import cli as obsdeploy
from server_agent.cli import cli as obs_agent
from server_agent.common.errors import ExitCode
from tests.parts import REPO


def test_every_exit_code_has_a_name_and_a_meaning() -> None:
    for code in ExitCode:
        assert code.result_name and code.meaning, code
    assert len({c.result_name for c in ExitCode}) == len(ExitCode)


@pytest.mark.parametrize("group", [obsdeploy, obs_agent], ids=["obsdeploy", "obs-agent"])
def test_help_lists_every_exit_code_with_its_meaning(group: click.Group) -> None:
    res = CliRunner().invoke(group, ["--help"])
    assert res.exit_code == 0, res.output
    listed = {int(m.group(1)): m.group(2) for m in re.finditer(r"^ +(\d+)  (.+)$", res.output, re.M)}
    assert listed == {int(c): c.meaning for c in ExitCode}, res.output


def test_the_readme_lists_every_exit_code_as_help_does() -> None:
    readme = (REPO / "README.md").read_text()
    rows = {int(m.group(1)): (m.group(2), m.group(3))
            for m in re.finditer(r"^\| (\d+) \| `(\w+)` \| (.+) \|$", readme, re.M)}
    assert rows == {int(c): (c.result_name, c.meaning) for c in ExitCode}
