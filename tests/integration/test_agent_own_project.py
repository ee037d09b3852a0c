"""A user's own compose project (SPEC §24), not the observer: no path contract, the
observer's defaults set aside, a web release that answers through a CGI script, accessories
of its own. Real engine, registry and compose; busybox images only."""

from __future__ import annotations

import json
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
