"""The reference in docs/ agrees with the code: the generated files are current, the JSON
Schema takes the templates and refuses what the agent refuses, and the hand-written pages name
what the code reads and writes."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from server_agent import reference
from server_agent.common.errors import ExitCode, UsageError
from server_agent.settings import AgentSettings, load_settings

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
TEMPLATES = [REPO / "compose" / name for name in (
    "deployment_config.json", "deployment_config.proxied.json", "deployment_config.traefik.json")]


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
OURS = ["settings.md", "exit-codes.md", "labels.md", "files.md", "json.md", reference.SCHEMA_FILE]


@pytest.mark.parametrize("name", OURS)
def test_docs_do_not_point_outside_the_repository(name: str) -> None:
    text = (DOCS / name).read_text(encoding="utf-8")
    for word in ("SPEC", "../shared"):
        assert word not in text, f"docs/{name} mentions {word!r}, which users do not have"


# --- the hand-written pages name what the code reads and writes ----------------------------
SOURCE = sorted((REPO / "server_agent").rglob("*.py"))


def _source_strings(pattern: str) -> set[str]:
    return {m for path in SOURCE for m in re.findall(pattern, path.read_text(encoding="utf-8"))}


def _doc_keys(name: str, section: str) -> set[str]:
    """The backquoted first cells of the tables under the `## ...` heading `section`."""
    text = (DOCS / name).read_text(encoding="utf-8")
    parts = re.split(r"^## ", text, flags=re.M)
    body = next(p for p in parts if p.split("\n", 1)[0].strip() == section)
    return set(re.findall(r"^\| `([^`]+)` \|", body, flags=re.M))


def test_labels_doc_has_every_obsdeploy_label_of_the_agent() -> None:
    in_code = _source_strings(r"obsdeploy\.[a-z_]+") - {"obsdeploy.toml", "obsdeploy.prom"}
    in_doc = set(re.findall(r"^\| `(obsdeploy\.[a-z_]+)` \|", (DOCS / "labels.md").read_text(), flags=re.M))
    assert in_code == in_doc, "docs/labels.md: add " + ", ".join(sorted(in_code - in_doc)) + \
        "; drop " + ", ".join(sorted(in_doc - in_code))


def test_files_doc_has_every_file_the_agent_names_under_the_root(tmp_path: Path) -> None:
    from server_agent.names import CONFIG_NAME
    from server_agent.root import KEPT_COMPOSE, AgentRoot
    from server_agent.state import ReleaseState
    from server_agent.transaction import KEPT_RELEASES

    text = (DOCS / "files.md").read_text(encoding="utf-8")
    root = AgentRoot(tmp_path)
    state = ReleaseState(root.state_dir)
    paths = [root.env_file, root.state_dir, root.backups_dir, root.releases_dir, root.config_file,
             state.last_good_path, state.journal_path, state.history.path, state.lock.path,
             root.path / AgentSettings().compose_file]
    named = {str(p.relative_to(tmp_path)) for p in paths}
    # Literal names under the state directory anywhere in the agent (the log, scratch files).
    named |= {f"state/{n}" for n in _source_strings(r'state_dir / "([^"]+)"')}
    named |= {f"{host.removeprefix('./')}/" for host in AgentSettings().mounts}
    missing = sorted(n for n in named if not re.search(rf"`{re.escape(n.rstrip('/'))}/?[`A-Z]", text))
    assert not missing, f"docs/files.md does not describe {missing}"
    assert f"`{CONFIG_NAME}`" in text and f"(`{KEPT_COMPOSE}`)" in text
    assert f"newest good releases ({KEPT_RELEASES})" in text


def _status_root(tmp_path: Path, agent: dict[str, Any]) -> Any:
    from server_agent.root import AgentRoot
    from server_agent.state import ReleaseState

    (tmp_path / "deployment_config.json").write_text(json.dumps({"agent": agent}))
    root = AgentRoot(tmp_path)
    state = ReleaseState(root.state_dir)
    state.ensure()
    state.history.append({"action": "deploy", "tag": "v1.0.0", "from_tag": None, "result": "success",
                          "started_at": "t", "finished_at": "t", "duration_s": 1.0, "backup": None})
    return root


def _paths(value: Any, maps: tuple[str, ...] = ()) -> set[str]:
    """`a`, `a.b`, `a[].b` for every key of a JSON value; not into the objects at `maps`,
    whose keys are data (service names)."""
    def walk(v: Any, prefix: str) -> set[str]:
        out: set[str] = set()
        if isinstance(v, dict) and prefix not in maps:
            for k, sub in v.items():
                path = f"{prefix}.{k}" if prefix else k
                out.add(path)
                out |= walk(sub, path)
        elif isinstance(v, list):
            for item in v:
                out |= walk(item, f"{prefix}[]")
        return out
    return walk(value, "")


def _container(**kw: Any) -> Any:
    from server_agent.engine import ContainerInfo

    base: dict[str, Any] = dict(
        id="c1", name="observer-observer-1", service="observer", number=1, image="reg/observer:v1.0.0",
        state="running", health=None, exit_code=0, restart_count=0, env_names=frozenset(),
        stop_timeout=None, restart_policy={}, tag="v1.0.0", role="release", config_hash="",
        binds=frozenset(), ports=frozenset(), host_ports=(("8000/tcp", "127.0.0.1:32768"),))
    return ContainerInfo(**{**base, **kw})


class _Engine:
    def __init__(self, containers: list[Any]) -> None:
        self.containers = containers

    def project_containers(self, project: str) -> list[Any]:
        return self.containers


def test_json_doc_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import server_agent.proxy
    from server_agent.views import status

    class Cutover:
        service, port = "observer", 8000

        class driver:  # noqa: N801
            @staticmethod
            def current() -> list[str]:
                return ["127.0.0.1:32768", "10.0.0.9:8000"]

    root = _status_root(tmp_path, {"proxy": CADDY})
    monkeypatch.setattr(server_agent.proxy, "proxy_for", lambda root: Cutover())
    got = _paths(status(root, _Engine([_container()])))  # type: ignore[arg-type]

    def unreadable(root: Any) -> None:
        raise RuntimeError("caddy does not answer")

    monkeypatch.setattr(server_agent.proxy, "proxy_for", unreadable)
    got |= _paths(status(root, _Engine([_container()])))  # type: ignore[arg-type]
    # A deploy holding the lock with a canary in its journal: status shows the canary.
    from server_agent.state import ReleaseState

    state = ReleaseState(root.state_dir)
    state.begin({"action": "deploy", "tag": "v1.1.0", "canary": {
        "result": "running", "tag": "v1.1.0", "stable": "v1.0.0", "step": 1, "weight": 5,
        "since": "t", "measurements": [], "steps": []}})
    with state.lock.hold("deploy", "v1.1.0"):
        shown = status(root, _Engine([_container()]))  # type: ignore[arg-type]
    assert shown["canary"]["weight"] == 5, shown
    got |= _paths(shown)
    assert got == _doc_keys("json.md", "`obs-agent status --json`")


def test_json_doc_status_on_a_swarm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import server_agent.backends.swarm
    from server_agent.swarm import NodeInfo, TaskInfo
    from server_agent.views import status

    class Swarm:
        def __init__(self, engine: Any, stack: str) -> None:
            pass

        def services(self) -> dict[str, Any]:
            return {"observer": {"Spec": {"Labels": {"obsdeploy.role": "release", "obsdeploy.release": "v1.0.0"},
                                          "TaskTemplate": {"ContainerSpec": {"Image": "reg/observer:v1.0.0"}},
                                          "Mode": {"Replicated": {"Replicas": 1}}}}}

        def nodes(self) -> dict[str, Any]:
            return {"n1": NodeInfo("n1", "vm1", "10.0.0.1", "ready", "active")}

        def tasks(self, services: Any) -> list[Any]:
            return [TaskInfo("t1", "observer", 1, "n1", "running", "running", "v1.0.0", "", None, None,
                             frozenset())]

    root = _status_root(tmp_path, {"engine": "swarm"})
    monkeypatch.setattr(server_agent.backends.swarm, "Swarm", Swarm)
    got = _paths(status(root, _Engine([])))  # type: ignore[arg-type]
    # last_action and maintenance are the same objects as without a swarm, described there.
    got = {p for p in got if not p.startswith(("last_action.", "maintenance."))}
    assert got == _doc_keys("json.md", "`obs-agent status --json` with `engine: swarm`")


def test_json_doc_history() -> None:
    from server_agent.attempt import Attempt
    from server_agent.views import HISTORY_KEYS

    section = _doc_keys("json.md", "`obs-agent history --json [--limit N]`")
    attempt = Attempt("deploy", "v1.0.0", failure={"reason": "x"}, watch={"result": "passed"},
                      canary={"result": "promoted"}, rollback_gate={"healthy": True, "reason": "healthy"},
                      dumps=[{"accessory": "db"}], irreversible_jobs=["migrate"], warnings=["w"],
                      hooks=[{"hook": "pre_switch"}])
    record = attempt.record("success")
    assert set(HISTORY_KEYS) <= section
    assert set(record) == section, "docs/json.md: the history keys are " + ", ".join(record)
    # The stages whose seconds `steps` holds.
    text = (DOCS / "json.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `steps` |"))
    stages = _source_strings(r'attempt\.(?:took|add)\(f?"([a-z_:]+)')
    assert stages, "the pattern no longer finds the stages"
    missing = sorted(st for st in stages if f"`{st}" not in row)
    assert not missing, f"docs/json.md: steps also holds {missing}"


def test_json_doc_plan_and_check() -> None:
    from server_agent.plan import AccessoryPlan, RolloutPlan, ServicePlan, Step
    from server_agent.preflight import Problem

    plan = RolloutPlan("v1.0.0", ("migrate",), (Step(1, (ServicePlan("observer", "stop-first", 1, None, True),)),),
                       (AccessoryPlan("redis", "leave", False),), {"observer": ["image a -> b"]},
                       canary=((5, 900.0),), canary_checks=("success_rate",), canary_interval=10)
    problems = [Problem("env.missing", "x").as_dict()]
    # What cli.plan prints: the plan, today's problems over the plan's own, and ok.
    printed = {**plan.as_dict(), "problems": problems, "ok": False}
    assert _paths(printed, maps=("changes",)) == _doc_keys("json.md", "`obs-agent plan TAG --json`")
    assert _paths({"ok": False, "problems": problems, "notes": ["n"]}) == \
        _doc_keys("json.md", "`obs-agent check --json`")


def test_json_doc_matches_what_the_cli_prints() -> None:
    """plan, check, deploy, verify and backup list build their JSON in cli.py: the keys
    written there are the documented ones."""
    import ast

    tree = ast.parse((REPO / "server_agent" / "cli.py").read_text())
    printed: dict[str, set[str]] = {}
    for fn in [n for n in tree.body if isinstance(n, ast.FunctionDef)]:
        keys: set[str] = set()
        for node in ast.walk(fn):
            if isinstance(node, ast.Dict):
                keys |= {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
            if isinstance(node, ast.Tuple) and fn.name == "_finish":
                keys |= {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        printed[fn.name] = keys
    sections = {"plan": "`obs-agent plan TAG --json`", "check": "`obs-agent check --json`",
                "_finish": "`obs-agent deploy --json TAG`, `obs-agent rollback --json [TAG]`",
                "verify": "`obs-agent verify --json`", "backup_list": "`obs-agent backup list --json`"}
    for fn_name, section in sections.items():
        documented = _doc_keys("json.md", section)
        assert printed[fn_name] <= documented, (fn_name, printed[fn_name] - documented)
