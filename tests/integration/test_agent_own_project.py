"""A user's own compose project (SPEC §24), not the observer: no path contract, the
observer's defaults set aside, a web release that answers through a CGI script, accessories
of its own. Real engine, registry and compose; busybox images only."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import parts
from tests.parts import history, no_traceback, status

pytestmark = pytest.mark.integration

# The release's web server: busybox httpd with one CGI, /cgi-bin/health. It answers 500 when
# the release's MODE is `error`, and when another request is in flight (an app sharing one
# database connection between threads); it counts the requests it got and the overlaps.
SERVE = """\
#!/bin/sh
mkdir -p /state
echo "$MODE" > /state/mode
echo "${DELAY:-0}" > /state/delay
mkdir -p /www/cgi-bin
cp /srv/health.cgi /www/cgi-bin/health
chmod 755 /www/cgi-bin/health
echo "web $VERSION ready"
exec httpd -f -p 8000 -h /www
"""
HEALTH_CGI = """\
#!/bin/sh
if ! mkdir /state/inflight 2>/dev/null; then
  echo overlap >> /state/overlaps
  printf 'Status: 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\ntwo at once\\n'
  exit 0
fi
echo request >> /state/requests
sleep "$(cat /state/delay)"
rmdir /state/inflight
if [ "$(cat /state/mode)" = error ]; then
  printf 'Status: 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\nbroken\\n'
else
  printf 'Content-Type: application/json\\r\\n\\r\\n{"status":"healthy"}\\n'
fi
"""

WEB = """\
  web:
    image: {registry}/{repository}:${{IMAGE_TAG:?IMAGE_TAG required}}
    command: ["/bin/sh", "/srv/serve.sh"]
    stop_grace_period: 1s
    environment:
      DELAY: "{delay}"
    ports:
      - "127.0.0.1:{port}:8000"
    volumes:
      - ./app:/srv:ro
"""
CACHE = """\
  cache:
    image: {base}
    command: ["httpd", "-f", "-p", "6379"]
    stop_grace_period: 1s
"""


@pytest.fixture
def own(tmp_path: Path, images: dict[str, str], registry: parts.Registry) -> Iterator[parts.AgentRootDir]:
    root = make_root(tmp_path / "shop", registry.address, f"own-{uuid.uuid4().hex[:8]}")
    yield root
    root.down()


def make_root(path: Path, registry: str, project: str, *, services: str = CACHE, delay: str = "0",
              **agent: object) -> parts.AgentRootDir:
    port = parts.free_port()
    (path / "app").mkdir(parents=True)
    (path / "app" / "serve.sh").write_text(SERVE)
    (path / "app" / "health.cgi").write_text(HEALTH_CGI)
    write_compose(path, registry, port, services, delay)
    settings = {
        "project_name": project, "health_url": f"http://127.0.0.1:{port}/cgi-bin/health",
        "health_timeout": 20, "stabilize_seconds": 0.5, "min_free_mb": 10,
        # Not the observer: its defaults set aside, as the preflight messages say.
        "required_env": [], "secret_env": [], "mounts": {}, "verify": {"paths": []},
        **agent,
    }
    (path / "deployment_config.json").write_text(json.dumps({"agent": settings}, indent=2))
    return parts.AgentRootDir(path, port, registry, project)


def write_compose(path: Path, registry: str, port: int, services: str, delay: str = "0") -> None:
    text = "services:\n" + WEB + services
    (path / "docker-compose.server.yml").write_text(text.format(
        registry=registry, repository=parts.REPOSITORY, port=port, delay=delay, base=parts.FIXTURE_BASE))


def agent(root: parts.AgentRootDir, *args: str) -> subprocess.CompletedProcess[str]:
    res = root.agent(*args)
    no_traceback(res)
    return res


def in_web(root: parts.AgentRootDir, path: str) -> list[str]:
    """Lines of a file inside the running web container (empty when there is none)."""
    ids = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={root.project}",
                          "--filter", "label=com.docker.compose.service=web"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert len(ids) == 1, ids
    res = subprocess.run(["docker", "exec", ids[0], "cat", path], capture_output=True, text=True)
    return res.stdout.split()


# --- health_url always counts ----------------------------------------------------------------
def test_a_release_answering_500_is_rolled_back_without_any_contract_service(own: parts.AgentRootDir) -> None:
    res = agent(own, "deploy", "v1.0.0")
    assert res.returncode == 0, res.stdout + res.stderr
    res = agent(own, "deploy", "v2.0.0-error")
    assert res.returncode == 20, res.stdout + res.stderr
    assert "HTTP 500" in res.stdout, res.stdout
    assert status(own)["current_tag"] == "v1.0.0"


def test_a_health_url_no_release_service_answers_is_a_preflight_problem(own: parts.AgentRootDir) -> None:
    cfg = json.loads((own.path / "deployment_config.json").read_text())
    cfg["agent"]["health_url"] = f"http://127.0.0.1:{parts.free_port()}/health"
    (own.path / "deployment_config.json").write_text(json.dumps(cfg))
    res = agent(own, "check", "--json")
    assert res.returncode == 10, res.stdout + res.stderr
    [problem] = json.loads(res.stdout)["problems"]
    assert problem["code"] == "health_url.unanswered", problem
    assert "agent.health_url" in problem["message"]


# --- the gate's probes -------------------------------------------------------------------------
def test_probes_never_overlap_even_when_each_answer_is_slow(tmp_path: Path, images: dict[str, str],
                                                            registry: parts.Registry) -> None:
    root = make_root(tmp_path / "slow", registry.address, f"own-{uuid.uuid4().hex[:8]}", delay="0.4")
    try:
        res = agent(root, "deploy", "v1.0.0")
        assert res.returncode == 0, res.stdout + res.stderr
        assert in_web(root, "/state/overlaps") == []
    finally:
        root.down()


def test_probes_slow_down_once_the_release_answered(tmp_path: Path, images: dict[str, str],
                                                    registry: parts.Registry) -> None:
    root = make_root(tmp_path / "count", registry.address, f"own-{uuid.uuid4().hex[:8]}",
                     stabilize_seconds=3)
    try:
        res = agent(root, "deploy", "v1.0.0")
        assert res.returncode == 0, res.stdout + res.stderr
        # A probe each 50 ms asked ~60 times in the 3 s of stabilize_seconds.
        assert 1 <= len(in_web(root, "/state/requests")) <= 12
    finally:
        root.down()


# --- accessories --------------------------------------------------------------------------------
FRONT = """\
  front:
    image: {base}
    depends_on: [web]
    stop_grace_period: 1s
    command:
      - sh
      - -c
      - >-
        nslookup web >/dev/null 2>&1
        || {{ echo 'host not found in upstream web' >&2; exit 1; }};
        exec httpd -f -p 80
"""
BROKEN_CACHE = """\
  cache:
    image: {base}
    command: ["sh", "-c", "echo 'cache: cannot read /etc/cache.conf' >&2; sleep 0.3; exit 1"]
"""


def test_an_accessory_that_depends_on_a_release_service_starts_after_it(
        tmp_path: Path, images: dict[str, str], registry: parts.Registry) -> None:
    root = make_root(tmp_path / "front", registry.address, f"own-{uuid.uuid4().hex[:8]}",
                     services=CACHE + FRONT)
    try:
        res = agent(root, "deploy", "v1.0.0")
        assert res.returncode == 0, res.stdout + res.stderr
        services = {s["name"]: s["state"] for s in status(root)["services"]}
        assert services == {"web": "running", "cache": "running", "front": "running"}, services
    finally:
        root.down()


def test_an_accessory_that_exits_fails_the_deploy_with_its_log_tail(
        tmp_path: Path, images: dict[str, str], registry: parts.Registry) -> None:
    root = make_root(tmp_path / "broken", registry.address, f"own-{uuid.uuid4().hex[:8]}",
                     services=BROKEN_CACHE, stabilize_seconds=1.5)
    try:
        res = agent(root, "deploy", "v1.0.0")
        assert res.returncode == 13, res.stdout + res.stderr
        assert "cannot read /etc/cache.conf" in res.stdout, res.stdout
        [record] = history(root)
        assert "cannot read /etc/cache.conf" in json.dumps(record["failure"])
        plain = agent(root, "history").stdout
        assert "did not start" in plain and "cannot read /etc/cache.conf" in plain, plain
    finally:
        root.down()


def test_status_and_verify_see_an_accessory_that_is_down(own: parts.AgentRootDir) -> None:
    assert agent(own, "deploy", "v1.0.0").returncode == 0
    subprocess.run(["docker", "stop", "-t", "1", f"{own.project}-cache-1"], check=True, capture_output=True)
    doc = status(own)
    assert doc["healthy"] is False
    cache = [s for s in doc["services"] if s["name"] == "cache"]
    assert [s["state"] for s in cache] == ["exited"], doc["services"]
    res = agent(own, "verify")
    assert res.returncode == 22, res.stdout + res.stderr
    assert "cache" in res.stdout


# --- the observer's defaults, check and plan ----------------------------------------------
def check_json(root: parts.AgentRootDir) -> tuple[int, dict]:  # type: ignore[type-arg]
    res = agent(root, "check", "--json")
    return res.returncode, json.loads(res.stdout)


def test_the_observers_defaults_say_which_key_to_set_and_check_creates_nothing(
        own: parts.AgentRootDir) -> None:
    cfg_path = own.path / "deployment_config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("required_env", "secret_env", "mounts", "verify"):
        del cfg["agent"][key]
    cfg_path.write_text(json.dumps(cfg))
    before = sorted(p.name for p in own.path.iterdir())
    code, doc = check_json(own)
    assert code == 10
    by_code: dict[str, list[str]] = {}
    for p in doc["problems"]:
        by_code.setdefault(p["code"], []).append(p["message"])
    assert sorted(by_code) == ["env.missing", "env.secret_missing", "mounts.none"], doc
    assert all("agent.required_env is the observer's default: set it to []" in m for m in by_code["env.missing"])
    assert all("agent.secret_env is the observer's default: set it to []" in m
               for m in by_code["env.secret_missing"])
    assert "agent.mounts is the observer's default: set it to {}" in by_code["mounts.none"][0]
    assert any("a deploy will create the missing host directory" in n for n in doc["notes"]), doc
    assert sorted(p.name for p in own.path.iterdir()) == before  # no state/, data/, logs/, config/

    # A contract service that mounts none of the default verify.paths: said now, not after 60 s.
    cfg["agent"].update(required_env=[], secret_env=[], mounts={"./app": "/srv"}, contract_services=["web"])
    cfg_path.write_text(json.dumps(cfg))
    code, doc = check_json(own)
    assert code == 10
    assert len(doc["problems"]) == 1, doc
    [problem] = doc["problems"]
    assert problem["code"] == "verify.paths" and "config/observer" in problem["message"]
    assert "agent.verify.paths is the observer's default: set it to []" in problem["message"]


SECRET_WEB = """\
name: {project}
services:
  web:
    image: {registry}/{repository}:${{IMAGE_TAG:?IMAGE_TAG required}}
    command: ["/bin/sh", "/srv/serve.sh"]
    stop_grace_period: 1s
    ports:
      - "127.0.0.1:{port}:8000"
    secrets: [db_password]
    volumes:
      - ./app:/srv:ro
      - .:/code
secrets:
  db_password:
    file: ./db_password.txt
"""


def test_plan_and_check_on_compose_secrets_a_compose_name_and_a_source_mount(
        tmp_path: Path, images: dict[str, str], registry: parts.Registry) -> None:
    project = f"own-{uuid.uuid4().hex[:8]}"
    root = make_root(tmp_path / "named", registry.address, project)
    cfg = json.loads((root.path / "deployment_config.json").read_text())
    del cfg["agent"]["project_name"]  # the compose file's name: is the project's
    (root.path / "deployment_config.json").write_text(json.dumps(cfg))
    (root.path / "db_password.txt").write_text("not-a-real-password\n")
    (root.path / "docker-compose.server.yml").write_text(SECRET_WEB.format(
        project=project, registry=registry.address, repository=parts.REPOSITORY, port=root.port))
    try:
        code, doc = check_json(root)
        assert code == 0, doc
        assert any("bind-mounts" in n and "/code" in n for n in doc["notes"]), doc
        assert agent(root, "deploy", "v1.0.0").returncode == 0
        ps = subprocess.run(["docker", "compose", "-f", "docker-compose.server.yml", "ps", "-q"], cwd=root.path,
                            capture_output=True, text=True, env={**os.environ, "IMAGE_TAG": "v1.0.0"})
        assert len(ps.stdout.split()) == 1, ps.stdout + ps.stderr
        res = agent(root, "plan", "v1.1.0", "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        assert json.loads(res.stdout)["changes"] == {"web": [
            f"image {registry.address}/{parts.REPOSITORY}:v1.0.0 -> {registry.address}/{parts.REPOSITORY}:v1.1.0"]}
    finally:
        root.down()


def test_versions() -> None:
    for cli in ("obs-agent", "obsdeploy"):
        res = subprocess.run([str(parts.VENV_BIN / cli), "--version"], capture_output=True, text=True)
        assert res.returncode == 0 and res.stdout.startswith(f"{cli}, version "), res
