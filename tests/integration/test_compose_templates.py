"""compose/ templates (SPEC §12): the agent's preflight accepts them, compose renders them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import missing
from tests.parts import REPO, SECRETS, VENV_BIN

pytestmark = pytest.mark.integration

COMPOSE_DIR = REPO / "compose"
TEMPLATES = ("docker-compose.server.yml", "deployment_config.json")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "observer"
    root.mkdir()
    for name in TEMPLATES:
        shutil.copy(COMPOSE_DIR / name, root / name)
    return root


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OBS_AGENT_") and k not in ("IMAGE_TAG", *SECRETS)}
    env.update(extra)
    return env


def agent_env(root: Path, **extra: str) -> dict[str, str]:
    # The test machine may have less free disk than the production default of 1024 MB.
    return base_env(OBS_AGENT_ROOT=str(root), OBS_AGENT_MIN_FREE_MB="0", **extra)


def check(root: Path, env: dict[str, str]) -> tuple[int, dict]:  # type: ignore[type-arg]
    res = subprocess.run([str(VENV_BIN / "obs-agent"), "--root", str(root), "check", "--json"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.stdout.strip(), res.stderr
    return res.returncode, json.loads(res.stdout)


def compose(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    from server_agent.common.errors import ObsError
    from server_agent.compose import compose_command

    try:
        cmd = compose_command()
    except ObsError:
        missing("compose v2 (docker compose plugin or docker-compose binary)")
    return subprocess.run(
        [*cmd, "--project-directory", str(root), "-f", str(root / TEMPLATES[0]), "-p", "observer",
         *args], env=env, capture_output=True, text=True, timeout=60, cwd=root,
    )


def test_deployment_config_agent_section_is_accepted_as_is() -> None:
    from server_agent.settings import AgentSettings

    data = json.loads((COMPOSE_DIR / "deployment_config.json").read_text())
    assert data["service"]["name"] == "observer"
    settings = AgentSettings(**data["agent"])  # unknown keys would raise
    assert settings.compose_file == "docker-compose.server.yml"
    assert settings.required_env == ["QTS_OBSERVER_STANDALONE", "PYTHONPATH"]
    assert settings.secret_env == ["KIS_API_KEY", "KIS_API_SECRET"]
    assert settings.mounts == {"./data": "/app/data/observer", "./logs": "/app/logs",
                               "./config": "/app/config"}
    # The seed's smoke test on probation after the gate (SPEC §16).
    assert settings.watch.seconds > 0
    assert [c.kind for c in settings.watch.checks] == ["http", "log"]
    # No secret is ever seeded in the config file.
    assert not set(SECRETS) & set(data.get("environment", {}))


def test_agent_preflight_accepts_the_templates(docker_client, root: Path) -> None:  # type: ignore[no-untyped-def]
    code, report = check(root, agent_env(root, **SECRETS))
    assert (code, report["ok"], report["problems"]) == (0, True, []), report
    # check creates nothing: it says what a deploy will create (the path contract).
    assert report["notes"][:3] == [
        f"a deploy will create the missing host directory {root.resolve() / d} owned by 1000:1000"
        for d in ("data", "logs", "config")]
    api = tuple(int(x) for x in docker_client.version()["ApiVersion"].split("."))
    # The template's start_interval: an engine older than 25 (API 1.44) ignores it, and says so.
    assert [n for n in report["notes"][3:] if "start_interval" in n] == (
        [] if api >= (1, 44) else [report["notes"][3]]), report["notes"]
    for d in ("data", "logs", "config"):
        assert not (root / d).exists()


def test_preflight_creates_the_contract_dirs_for_the_services_user(  # type: ignore[no-untyped-def]
        docker_client, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The template runs as 1000:1000: the directories a deploy's preflight creates are that
    user's, so the observer can write its archive at the first start. (The deploy's own
    preflight, in-process: the template's image is not in any registry here.)"""
    from server_agent.backends.select import backend_for
    from server_agent.engine import Engine
    from server_agent.preflight import run_preflight
    from server_agent.root import AgentRoot

    for name, value in agent_env(root, **SECRETS).items():
        monkeypatch.setenv(name, value)
    agent_root = AgentRoot(root)
    report = run_preflight(agent_root, backend_for(agent_root, Engine()), "v1.2.3")
    assert report.ok, report.problems
    for d in ("data", "logs", "config"):
        st = (root / d).stat()
        assert (st.st_uid, st.st_gid) == (1000, 1000), d
    assert [n for n in report.notes if n.startswith("created missing host directory")][:3] == [
        f"created missing host directory {root.resolve() / d} owned by 1000:1000"
        for d in ("data", "logs", "config")]


def test_preflight_checks_writability_as_the_services_user(docker_client, root: Path) -> None:  # type: ignore[no-untyped-def]
    """A root-owned 0755 logs/ is writable by the agent (root) but not by uid 1000."""
    for d in ("data", "config"):
        (root / d).mkdir()
        os.chown(root / d, 1000, 1000)
    (root / "logs").mkdir(mode=0o755)
    code, report = check(root, agent_env(root, **SECRETS))
    assert code == 10, report
    (problem,) = [p for p in report["problems"] if p["code"] == "mounts.not_writable"]
    assert str(root / "logs") in problem["message"] and "uid 1000" in problem["message"]
    assert "chown -R 1000:1000" in problem["message"]
    os.chown(root / "logs", 1000, 1000)
    assert check(root, agent_env(root, **SECRETS))[0] == 0


def test_deployment_config_keeps_the_seed_structure() -> None:
    """The seed's deployment_config.json, whole: its `deployment` and `paths` sections and its
    environment (PYTHONPATH /app/src:/app), with the standard standalone name."""
    data = json.loads((COMPOSE_DIR / "deployment_config.json").read_text())
    assert data["deployment"] == {"version": "1.0.0", "created": "2026-01-11T08:08:07+09:00",
                                  "structure": "/app", "mode": "standalone"}
    assert {k: data["paths"][k] for k in ("data_dir", "log_dir", "config_dir")} == {
        "data_dir": "/app/data/observer", "log_dir": "/app/logs", "config_dir": "/app/config"}
    env = data["environment"]
    assert env["PYTHONPATH"] == "/app/src:/app"
    assert env["QTS_OBSERVER_STANDALONE"] == "1" and "OBSERVER_STANDALONE" not in env
    assert env["OBSERVER_DATA_DIR"] == "/app/data/observer" and env["OBSERVER_LOG_DIR"] == "/app/logs"
    # The example image agrees with the contract.
    assert "PYTHONPATH=/app/src:/app" in (REPO / "examples" / "observer" / "Dockerfile").read_text()


def test_the_template_healthcheck_checks_often_while_starting() -> None:
    from ruamel.yaml import YAML

    svc = YAML(typ="safe", pure=True).load((COMPOSE_DIR / TEMPLATES[0]).read_text())["services"]["observer"]
    hc = svc["healthcheck"]
    assert hc["start_interval"] == "1s" and hc["interval"] == "10s" and hc["start_period"]


def test_agent_preflight_accepts_secrets_from_a_0600_env_file(docker_client, root: Path) -> None:  # type: ignore[no-untyped-def]
    env_file = root / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    env_file.chmod(0o600)
    code, report = check(root, agent_env(root))
    assert (code, report["ok"]) == (0, True), report


def test_agent_preflight_names_missing_secrets_without_values(docker_client, root: Path) -> None:  # type: ignore[no-untyped-def]
    code, report = check(root, agent_env(root, KIS_API_KEY=SECRETS["KIS_API_KEY"]))
    assert code == 10 and report["ok"] is False
    codes = {p["code"] for p in report["problems"]}
    assert "env.secret_missing" in codes
    assert any("KIS_API_SECRET" in p["message"] for p in report["problems"])
    assert SECRETS["KIS_API_KEY"] not in json.dumps(report)


def test_agent_preflight_refuses_the_non_standard_alias(docker_client, root: Path) -> None:  # type: ignore[no-untyped-def]
    code, report = check(root, agent_env(root, OBSERVER_STANDALONE="1", **SECRETS))
    assert code == 10
    assert "env.alias" in {p["code"] for p in report["problems"]}


def test_compose_renders_the_service_with_image_tag(root: Path) -> None:
    env = base_env(IMAGE_TAG="v1.2.3", QTS_OBSERVER_STANDALONE="1", PYTHONPATH="/app/src",
                   **SECRETS)
    res = compose(root, env, "config", "--format", "json")
    assert res.returncode == 0, res.stderr
    svc = json.loads(res.stdout)["services"]["observer"]
    assert svc["image"] == "ghcr.io/tawbury/observer:v1.2.3"
    assert svc["restart"] == "unless-stopped"
    assert svc["stop_grace_period"] in ("30s", 30_000_000_000)
    assert [p["target"] for p in svc["ports"]] == [8000]
    assert str(svc["ports"][0]["published"]) == "8000"
    binds = {v["source"]: v["target"] for v in svc["volumes"] if v["type"] == "bind"}
    assert binds == {str(root / "data"): "/app/data/observer", str(root / "logs"): "/app/logs",
                     str(root / "config"): "/app/config"}
    assert svc["environment"]["QTS_OBSERVER_STANDALONE"] == "1"
    assert svc["environment"]["PYTHONPATH"] == "/app/src"
    assert svc["environment"]["KIS_API_KEY"] == SECRETS["KIS_API_KEY"]
    assert "OBSERVER_STANDALONE" not in svc["environment"]
    res_ = svc["deploy"]["resources"]
    assert float(res_["limits"]["cpus"]) == 1.0 and float(res_["reservations"]["cpus"]) == 0.5
    assert int(res_["limits"]["memory"]) == 512 * 2**20
    assert int(res_["reservations"]["memory"]) == 256 * 2**20
    hc = svc["healthcheck"]
    assert hc["test"][0] == "CMD" and "urllib" in " ".join(hc["test"]) and "/health" in hc["test"][-1]
    user = svc["user"]
    assert user and user.split(":")[0] not in ("0", "root")


def test_compose_refuses_to_render_without_image_tag(root: Path) -> None:
    env = base_env(QTS_OBSERVER_STANDALONE="1", PYTHONPATH="/app/src", **SECRETS)
    res = compose(root, env, "config")
    assert res.returncode != 0
    assert "IMAGE_TAG required" in res.stderr


def test_compose_refuses_to_render_without_a_secret(root: Path) -> None:
    env = base_env(IMAGE_TAG="v1.2.3", QTS_OBSERVER_STANDALONE="1", PYTHONPATH="/app/src",
                   KIS_API_KEY="x")
    res = compose(root, env, "config")
    assert res.returncode != 0
    assert "KIS_API_SECRET required" in res.stderr


def test_the_healthcheck_command_is_valid_python() -> None:
    # The image is not pullable in the tests; at least the probe must compile.
    env = base_env(IMAGE_TAG="v1.0.0", QTS_OBSERVER_STANDALONE="1", PYTHONPATH="/app/src",
                   **SECRETS)
    res = compose(COMPOSE_DIR, env, "config", "--format", "json")
    assert res.returncode == 0, res.stderr
    test = json.loads(res.stdout)["services"]["observer"]["healthcheck"]["test"]
    assert test[1:3] == ["python", "-c"]
    compile(test[3], "<healthcheck>", "exec")


def test_the_healthcheck_probe_reads_the_example_observer(tmp_path: Path) -> None:
    """The compose healthcheck's Python, pointed at examples/observer on the host: it passes
    when the service is healthy and fails while it is initializing (503)."""
    import sys
    import time

    from tests.parts import free_port, wait_port

    env = base_env(IMAGE_TAG="v1.0.0", QTS_OBSERVER_STANDALONE="1", PYTHONPATH="/app/src",
                   **SECRETS)
    res = compose(COMPOSE_DIR, env, "config", "--format", "json")
    assert res.returncode == 0, res.stderr
    port = free_port()
    probe = json.loads(res.stdout)["services"]["observer"]["healthcheck"]["test"][3]
    probe = probe.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    obs = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "observer" / "observer.py")],
        env={**os.environ, "OBSERVER_HOST": "127.0.0.1", "OBSERVER_PORT": str(port),
             "OBSERVER_ARCHIVE": str(tmp_path / "config" / "observer" / "observer.jsonl"),
             "OBSERVER_STARTUP_SECONDS": "1.5"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def probe_rc() -> int:
            return subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                  timeout=10).returncode

        wait_port(port)
        assert probe_rc() == 1  # listening, but initializing: 503
        deadline = time.monotonic() + 10
        while probe_rc() != 0:
            assert time.monotonic() < deadline, "the probe never passed"
            time.sleep(0.1)
    finally:
        obs.terminate()
        assert obs.wait(15) == 0


@pytest.mark.parametrize("name, proxy", [("proxied", "caddy"), ("traefik", "traefik")])
def test_the_proxied_templates_render_and_pass_preflight(docker_client, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                         name: str, proxy: str) -> None:
    """compose/docker-compose.{proxied,traefik}.yml with their deployment_config (SPEC §15):
    the observer on an ephemeral loopback port, the proxy an accessory on the host's network;
    the agent's check passes (the proxy, not running yet, is asked again once the deploy
    started it)."""
    root = tmp_path / "observer"
    root.mkdir()
    compose = f"docker-compose.{name}.yml"
    shutil.copy(COMPOSE_DIR / compose, root / compose)
    shutil.copy(COMPOSE_DIR / f"deployment_config.{name}.json", root / "deployment_config.json")
    env = base_env(IMAGE_TAG="v1.2.3", QTS_OBSERVER_STANDALONE="1", PYTHONPATH="/app/src", **SECRETS)
    from server_agent.compose import compose_command

    res = subprocess.run([*compose_command(), "--project-directory", str(root), "-f",
                          str(root / compose), "-p", "observer", "config",
                          "--format", "json"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    services = json.loads(res.stdout)["services"]
    (port,) = services["observer"]["ports"]
    assert (port["host_ip"], port["target"], port.get("published", "")) == ("127.0.0.1", 8000, "")
    assert services[proxy]["network_mode"] == "host"
    settings = json.loads((root / "deployment_config.json").read_text())["agent"]["proxy"]
    if proxy == "caddy":
        assert "--resume" in services["caddy"]["command"]
        settings["admin_url"] = "http://127.0.0.1:9"
    else:
        # The agent's file is in the directory traefik watches; the API where traefik listens.
        (mount,) = services["traefik"]["volumes"]
        assert "--providers.file.directory=" + mount["target"] in services["traefik"]["command"]
        assert "--entryPoints.traefik.address=127.0.0.1:8080" in services["traefik"]["command"]
        assert settings["api_url"] == "http://127.0.0.1:8080"
        assert str(Path(settings["dynamic_file"]).parent) == "/opt/observer/traefik"
        assert Path(mount["source"]) == root / "traefik"
        settings.update(dynamic_file=str(root / "traefik" / "obsdeploy-observer.yml"),
                        api_url="http://127.0.0.1:9")
    code, report = check(root, agent_env(root, OBS_AGENT_PROXY=json.dumps(settings), **SECRETS))
    assert (code, report["problems"]) == (0, []), report
    assert any(f"asked again after starting the accessories {proxy}" in n for n in report["notes"]), report


def _two_runs(project, env: dict[str, str]):  # type: ignore[no-untyped-def]
    """ComposeProject.config as it was: `config` with the tag, then `--no-interpolate`."""
    from server_agent.common.runner import run
    from server_agent.compose import ComposeConfig

    res = run(project.config_argv(), env=env, cwd=project.root)
    raw = run(project.config_argv(interpolate=False), env=env, cwd=project.root)
    return ComposeConfig(json.loads(res.stdout), {
        n: str(s.get("image", "")) for n, s in json.loads(raw.stdout)["services"].items()})


@pytest.mark.parametrize("template", ["docker-compose.server.yml", "docker-compose.proxied.yml",
                                      "docker-compose.traefik.yml"])
def test_one_compose_run_resolves_the_templates_as_two_did(tmp_path: Path, template: str) -> None:
    """ComposeProject.config runs compose once (IMAGE_TAG a marker, put back afterwards): the
    same resolved project and the same release services as the two runs it replaces, for
    every shipped template, with a tag that also appears in an environment value."""
    from server_agent.compose import ComposeProject
    from server_agent.plan import role_of

    shutil.copy(COMPOSE_DIR / template, tmp_path / template)
    text = (tmp_path / template).read_text()
    (tmp_path / template).write_text(text.replace(
        "      PYTHONPATH:", "      RELEASE: obs-${IMAGE_TAG}\n      PYTHONPATH:", 1))
    env = base_env(IMAGE_TAG="v1.2.3-rc.1", QTS_OBSERVER_STANDALONE="1", PYTHONPATH="/app/src",
                   **SECRETS)
    project = ComposeProject(tmp_path, tmp_path / template, "observer")
    one, two = project.config(env), _two_runs(project, env)
    assert one.raw == two.raw
    assert one.raw["services"]["observer"]["environment"]["RELEASE"] == "obs-v1.2.3-rc.1"
    assert ({s.name: role_of(s) for s in one.services}
            == {s.name: role_of(s) for s in two.services})
    assert role_of(one.service("observer")) == "release"


def test_a_project_the_marker_cannot_stand_in_for_is_resolved_with_the_tag(tmp_path: Path) -> None:
    """An env_file named after the tag: compose cannot resolve it with the marker, so the
    project is resolved with the tag itself (and --no-interpolate), as before."""
    from server_agent.compose import ComposeProject

    (tmp_path / "c.yml").write_text(
        "services:\n  web:\n    image: r/web:${IMAGE_TAG}\n    env_file: .env.${IMAGE_TAG}\n")
    (tmp_path / ".env.v1.2.3").write_text("GREETING=hello\n")
    env = base_env(IMAGE_TAG="v1.2.3")
    cfg = ComposeProject(tmp_path, tmp_path / "c.yml", "web").config(env)
    assert cfg.service("web").image == "r/web:v1.2.3"
    assert cfg.service("web").environment == {"GREETING": "hello"}
    assert cfg.service("web").image_template == "r/web:${IMAGE_TAG}"
