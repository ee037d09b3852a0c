"""The reference in docs/ agrees with the code: the generated files are current, and the JSON
Schema takes the templates and refuses what the agent refuses."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from server_agent import reference
from server_agent.common.errors import ExitCode, UsageError
from server_agent.settings import AgentSettings, load_settings

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
TEMPLATES = [REPO / "compose" / "deployment_config.json", REPO / "compose" / "deployment_config.proxied.json"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("OBS_AGENT_"):
            monkeypatch.delenv(k)


@pytest.mark.parametrize("name", sorted(reference.GENERATED))
def test_generated_doc_is_current(name: str) -> None:
    path = DOCS / name
    assert path.is_file(), f"docs/{name} is missing; run: {reference.REGENERATE}"
    assert path.read_text(encoding="utf-8") == reference.GENERATED[name](), (
        f"docs/{name} is not what the code says any more; run: {reference.REGENERATE}")


def test_check_mode_names_the_stale_file_and_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert reference.main(["--write", "--docs", str(tmp_path)]) == 0
    assert reference.main(["--check", "--docs", str(tmp_path)]) == 0
    (tmp_path / "settings.md").write_text("old\n")
    assert reference.main(["--check", "--docs", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "settings.md is not current" in err and reference.REGENERATE in err


def test_every_setting_has_a_description() -> None:
    """The model is the one home of each key's meaning: a key without one would be a blank
    cell in docs/settings.md."""
    def missing(schema: dict[str, Any], where: str) -> list[str]:
        return [f"{where}{k}" for k, v in schema["properties"].items() if not v.get("description")]

    agent = reference.agent_schema()
    gaps = missing(agent, "agent.")
    for name, model in agent["$defs"].items():
        gaps += missing(model, f"{name}.")
    assert not gaps, "add Field(description=...) in server_agent/settings.py for " + ", ".join(gaps)


def test_settings_doc_lists_every_key_with_its_default() -> None:
    text = (DOCS / "settings.md").read_text(encoding="utf-8")
    defaults = AgentSettings().model_dump(mode="json", by_alias=True)
    for key, value in defaults.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{key}` |")), None)
        assert row is not None, key
        cell = row.split(" | ")[2]
        if cell != "see below":  # verify, watch: their keys' defaults are in their own tables
            assert json.loads(cell.strip("`")) == value, (key, row)
    for key in ("verify.paths", "watch.seconds", "watch.checks[].max_increase", "proxy.drain_seconds",
                "proxy.listen", "watch.checks[].json"):
        assert f"| `{key}` |" in text, key


def test_schema_defaults_are_the_models() -> None:
    schema = reference.agent_schema()
    defaults = AgentSettings().model_dump(mode="json", by_alias=True)
    assert {k: v.get("default") for k, v in schema["properties"].items()} == defaults


def test_drain_description_quotes_the_proxys_constants() -> None:
    from server_agent.proxy import DEFAULT_STOP_TIMEOUT, MAX_DRAIN_SECONDS

    description = reference.agent_schema()["$defs"]["ProxySettings"]["properties"]["drain_seconds"]["description"]
    assert f"else {DEFAULT_STOP_TIMEOUT:g}), at most {MAX_DRAIN_SECONDS:g}." in description


def test_exit_codes_doc_has_every_code() -> None:
    text = (DOCS / "exit-codes.md").read_text(encoding="utf-8")
    for code in ExitCode:
        assert f"| {int(code)} | `{code.result_name}` | {code.meaning} |" in text


# --- the JSON Schema of deployment_config.json --------------------------------------------
def validator() -> jsonschema.protocols.Validator:
    schema = reference.config_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_schema_accepts_the_templates(path: Path) -> None:
    config = json.loads(path.read_text())
    errors = [f"{e.json_path}: {e.message}" for e in validator().iter_errors(config)]
    assert not errors
    load_settings(config["agent"], str(path))  # and the agent agrees


def test_schema_accepts_its_own_hint_and_the_agent_ignores_it(tmp_path: Path) -> None:
    from server_agent.root import AgentRoot

    config = {"$schema": "./deployment_config.schema.json", "agent": {"health_timeout": 30}}
    validator().validate(config)
    (tmp_path / "deployment_config.json").write_text(json.dumps(config))
    assert AgentRoot(tmp_path).settings.health_timeout == 30


BASE = json.loads(TEMPLATES[0].read_text())
CADDY = {"kind": "caddy", "service": "observer", "port": 8000, "listen": [":80"]}


@pytest.mark.parametrize(("edit", "where"), [
    ({"agent": {"helth_url": "http://127.0.0.1:8000/health"}}, "$.agent"),
    ({"agent": {"health_timeout": "soon"}}, "$.agent.health_timeout"),
    ({"agent": {"health_timeout": 0}}, "$.agent.health_timeout"),
    ({"agent": {"backup_keep": 0}}, "$.agent.backup_keep"),
    ({"agent": {"engine": "kubernetes"}}, "$.agent.engine"),
    ({"agent": {"backup_paths": "config"}}, "$.agent.backup_paths"),
    ({"agent": {"verify": {"path": ["config/observer"]}}}, "$.agent.verify"),
    ({"agent": {"watch": {"seconds": 60, "checks": [{"kind": "smtp", "url": "x"}]}}}, "$.agent.watch.checks[0]"),
    ({"agent": {"watch": {"checks": [{"kind": "http"}]}}}, "$.agent.watch.checks[0]"),
    ({"agent": {"watch": {"inconclusive": "ignore"}}}, "$.agent.watch.inconclusive"),
    ({"agent": {"proxy": {**CADDY, "kind": "haproxy"}}}, "$.agent.proxy"),
    ({"agent": {"proxy": {**CADDY, "port": 70000}}}, "$.agent.proxy"),
    ({"environment": {"PYTHONPATH": ["/app"]}}, "$.environment.PYTHONPATH"),
    ({"agnet": {"health_timeout": 30}}, "$"),
])
def test_schema_rejects_a_bad_file(edit: dict[str, Any], where: str) -> None:
    config = copy.deepcopy(BASE)
    for key, value in edit.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    errors = list(validator().iter_errors(config))
    assert errors, "the schema took a file the agent refuses"
    assert where in {e.json_path for e in errors}
    if "agent" in edit:  # what the schema refuses in "agent", the agent refuses too
        with pytest.raises(UsageError):
            load_settings(config["agent"], "deployment_config.json")


def test_config_schema_command_prints_the_schema() -> None:
    from click.testing import CliRunner

    from server_agent.cli import cli

    res = CliRunner().invoke(cli, ["--root", "/nonexistent", "config", "schema"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == reference.config_schema()
    assert res.output == (DOCS / reference.SCHEMA_FILE).read_text(encoding="utf-8")


# --- what users read must not point outside the repository ---------------------------------
OURS = ["settings.md", "exit-codes.md", reference.SCHEMA_FILE]


@pytest.mark.parametrize("name", OURS)
def test_docs_do_not_point_outside_the_repository(name: str) -> None:
    text = (DOCS / name).read_text(encoding="utf-8")
    for word in ("SPEC", "../shared"):
        assert word not in text, f"docs/{name} mentions {word!r}, which users do not have"

