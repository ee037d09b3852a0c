"""What users read points inside the repository: README.md, docs/, every --help and every
message of the CLIs speak of the product, never of a specification file users do not have."""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from deploy_tool.cli import cli as obsdeploy
from server_agent.cli import cli as obs_agent
from tests.parts import REPO

OUTSIDE = re.compile(r"SPEC|\.\./shared")


def test_readme_and_docs_cite_no_file_outside_the_repository() -> None:
    res = subprocess.run(["grep", "-rn", r"SPEC\|\.\./shared", "README.md", "docs/"], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 1 and not res.stdout, res.stdout or res.stderr


def test_readme_section_titles_say_what_they_describe() -> None:
    titles = [line for line in (REPO / "README.md").read_text().splitlines()
              if line.startswith("#") and not line.startswith("#!")]
    assert len(titles) > 10
    bad = [t for t in titles if re.search(r"\b(issue|session)s? *\d|SPEC|§", t, re.I)]
    assert not bad, bad


def commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from commands(cmd, (*path, name))
        else:
            yield (*path, name)


HELP = [pytest.param(cli, path, id=" ".join([label, *path]))
        for label, cli in (("obsdeploy", obsdeploy), ("obs-agent", obs_agent))
        for path in commands(cli)]


def test_every_command_is_walked() -> None:
    walked = {p.id for p in HELP}
    assert {"obsdeploy", "obsdeploy deploy", "obsdeploy setup", "obs-agent", "obs-agent verify",
            "obs-agent backup", "obs-agent backup restore"} <= walked, walked


@pytest.mark.parametrize(("cli", "path"), HELP)
def test_help_cites_no_file_outside_the_repository(cli: click.Group, path: tuple[str, ...]) -> None:
    res = CliRunner().invoke(cli, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output
    assert not OUTSIDE.search(res.output), res.output


def message_strings(source: Path) -> Iterator[tuple[int, str]]:
    """Every string constant of a module but its docstrings (developers' notes; a click
    command's docstring is its help, checked above), f-strings' literal parts included."""
    tree = ast.parse(source.read_text())
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


SOURCES = sorted(str(p.relative_to(REPO)) for d in ("server_agent", "deploy_tool")
                 for p in (REPO / d).rglob("*.py"))


@pytest.mark.parametrize("source", SOURCES)
def test_messages_cite_no_file_outside_the_repository(source: str) -> None:
    bad = [f"{source}:{line}: {text!r}" for line, text in message_strings(REPO / source)
           if OUTSIDE.search(text)]
    assert not bad, "\n".join(bad)
