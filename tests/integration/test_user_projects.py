"""Issue 29 (SPEC §24): three compose projects as their users write them (tests/projects/),
their images built here from Debian's packages, first run by `docker compose up` alone (the
project is sound), then through the agent: init -> check -> deploy -> a good deploy -> a
release answering 500 to everything (exit 20, rolled back) -> rollback; the database's data
intact and its container never replaced along the way. Real engine, registry and compose."""

from __future__ import annotations

import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tenacity import retry, retry_if_exception_type, retry_if_result, stop_after_delay, wait_fixed

from tests import parts, runs
from tests.parts_user_projects import (
    ALL,
    DATA,
    GUESTBOOK,
    INVENTORY,
    ProjectRoot,
    place,
    push_accessories,
)


@pytest.fixture(scope="session")
def project_releases(service_images: dict[str, str], registry: parts.Registry) -> None:
    """The accessories' images and every project's three releases, in the test registry: once
    per run, whichever worker gets there first. Never untagged by a worker: both workers deploy
    these names on the one engine, and one worker's `docker rmi` at its end took an image away
    from under the other's deploy ("No such image" between the digest check and the create)."""
    def build(_: object) -> dict[str, object]:
        refs = push_accessories(registry.address, service_images)
        for project in ALL:
            refs += project.build_releases(registry.address, service_images["pyapp"]).values()
        return {"refs": refs}

    runs.shared("user-project-releases", build)


@pytest.fixture(params=ALL, ids=lambda p: p.name)
def placed(request: pytest.FixtureRequest, tmp_path: Path, project_releases: None,
           registry: parts.Registry) -> Iterator[ProjectRoot]:
    root = place(request.param, tmp_path / request.param.name, registry.address)
    yield root
    root.down()
    leaks = root.secret_leaks()
    assert not leaks, f"the database password leaked into: {leaks}"


def until(predicate: Any, seconds: float = 60) -> Any:
    """predicate() once it is truthy (checked every 0.5 s; a connection error is not yet),
    else its last value or error."""
    poll = retry(retry=retry_if_result(lambda v: not v) | retry_if_exception_type(OSError),
                 stop=stop_after_delay(seconds), wait=wait_fixed(0.5),
                 retry_error_callback=lambda state: state.outcome.result())  # type: ignore[union-attr]
    return poll(predicate)()


def test_compose_up_runs_the_project_alone(placed: ProjectRoot) -> None:
    """Before any agent: `docker compose up` runs the project, its app stores data, and the
    broken release answers 500 (health included) while its container stays up."""
    up = placed.compose("up", "-d", "--wait", tag="v1.0.0")
    assert up.returncode == 0, up.stdout + up.stderr
    assert until(placed.version) == "v1.0.0"
    write, read = DATA[placed.project.name]
    write(placed, 1)
    stored = read(placed)
    assert stored, "nothing was stored"

    service = placed.project.release_service
    broken = placed.compose("up", "-d", "--no-deps", service, tag="v1.2.0-broken")
    assert broken.returncode == 0, broken.stdout + broken.stderr
    assert until(lambda: placed.http("GET", "/health")[0] == 500), "the broken release answers"
    container = placed.container(service)
    assert container is not None and container["State"]["Running"], "the broken release exited"
    assert placed.http("GET", "/")[0] == 500


# --- init ---------------------------------------------------------------------------------
def expected_config(root: ProjectRoot) -> dict[str, Any]:
    """What `obs-agent init` writes for the project (SPEC §24): the compose file, REGISTRY (and
    DB_PASSWORD) from the ${VAR:?} the file requires, DB_PASSWORD as a secret, no observer
    contract, and health_url from the release service's published port and healthcheck
    (only inventory's api has both)."""
    agent: dict[str, Any] = {
        "compose_file": "compose.yaml",
        "required_env": ["REGISTRY"],
        "secret_env": [],
        "mounts": {},
        "verify": {"paths": []},
    }
    if root.project is INVENTORY:
        agent.update(required_env=["REGISTRY"], secret_env=["DB_PASSWORD"],
                     health_url=f"http://127.0.0.1:{root.port}/health")
    return agent


def init(root: ProjectRoot) -> None:
    res = root.agent("init")
    parts.no_traceback(res)
    config = root.path / "deployment_config.json"
    assert res.returncode == 0, res.stdout + res.stderr
    assert ("health_url:       not set" in res.stdout) == (root.project is not INVENTORY), res.stdout
    agent = json.loads(config.read_text())["agent"]
    for key, value in expected_config(root).items():
        got = agent.get(key)
        if key in ("required_env", "secret_env"):
            # init may also list the secrets among the required; the secrets must be there.
            assert set(value) <= set(got or []), (key, got)
        else:
            assert got == value, (key, got)
    again = root.agent("init")
    assert again.returncode == 2 and "--force" in again.stdout + again.stderr, "init overwrote its file"


def choose_health_url(root: ProjectRoot) -> None:
    """What the user sets after init where it could not: the app's /health (counter: at its
    published port; guestbook: the app publishes none, so its own port in the container)."""
    if root.project is INVENTORY:
        return
    config = root.path / "deployment_config.json"
    doc = json.loads(config.read_text())
    port = root.port if root.project is not GUESTBOOK else root.project.app_port
    doc["agent"]["health_url"] = f"http://127.0.0.1:{port}/health"
    config.write_text(json.dumps(doc, indent=2))


def serves(root: ProjectRoot, tag: str) -> None:
    """The app answers as release `tag`. Waited for: the project's nginx asks Docker's DNS for
    the app's new address at most every 5 s (tests/projects/guestbook/proxy/site.conf)."""
    assert until(lambda: root.version() == tag, 30), f"the app says {root.version()}, not {tag}"


def agent_ok(root: ProjectRoot, *args: str, code: int = 0) -> dict[str, Any]:
    res = root.agent(*args, "--json") if args[0] != "check" else root.agent(*args)
    parts.no_traceback(res)
    if res.returncode != code:  # what the attempt's record says: the log tails of what failed
        last = root.agent("history", "--json", "--limit", "1").stdout
        raise AssertionError(f"{' '.join(args)}: exit {res.returncode}, not {code}\n{res.stdout}\n"
                             f"{res.stderr}\nhistory: {last[-4000:]}")
    return json.loads(res.stdout) if args[0] != "check" and res.stdout.strip() else {}


def test_init_check_deploy_rollback(placed: ProjectRoot) -> None:
    write, read = DATA[placed.project.name]
    database = placed.project.database

    init(placed)
    choose_health_url(placed)
    agent_ok(placed, "check")

    agent_ok(placed, "deploy", "v1.0.0")
    serves(placed, "v1.0.0")
    db = placed.container(database)
    assert db is not None and db["State"]["Running"]

    def unchanged_database() -> None:
        now = placed.container(database)
        assert now is not None, f"{database} is gone"
        assert now["Id"] == db["Id"], f"{database} was replaced"
        assert now["State"]["StartedAt"] == db["State"]["StartedAt"], f"{database} was restarted"
        assert now["State"]["Running"]

    write(placed, 1)
    write(placed, 2)
    stored = read(placed)

    agent_ok(placed, "deploy", "v1.1.0")
    serves(placed, "v1.1.0")
    assert read(placed) == stored
    unchanged_database()
    write(placed, 3)
    stored = read(placed)

    # Up and listening, but 500 to every request: only health_url can tell.
    failed = agent_ok(placed, "deploy", "v1.2.0-broken", code=20)
    assert failed.get("current_tag") == "v1.1.0", failed
    serves(placed, "v1.1.0")
    assert read(placed) == stored
    unchanged_database()

    agent_ok(placed, "rollback")
    serves(placed, "v1.0.0")
    assert read(placed) == stored
    unchanged_database()

    res = placed.agent("status", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    status = json.loads(res.stdout)
    assert status["current_tag"] == "v1.0.0" and status["healthy"] is True, json.dumps(status)
    services = {s["name"]: s["state"] for s in status["services"]}
    assert all(state == "running" for state in services.values()), services
    assert {database, placed.project.release_service} <= set(services), services
    # The user's own tools see the same project (compose `name:` is the project name).
    ps = placed.compose("ps", "-q", tag="v1.0.0")
    assert ps.returncode == 0 and len(ps.stdout.split()) == len(services), ps.stdout + ps.stderr


VOLUME = {"guestbook": "db-data", "inventory": "pg-data"}
# A file the database keeps in its volume: it is in the archive when the volume is.
VOLUME_FILE = {"guestbook": "ibdata1", "inventory": "PG_VERSION"}


def set_agent(root: ProjectRoot, **agent: Any) -> None:
    config = root.path / "deployment_config.json"
    doc = json.loads(config.read_text())
    doc["agent"].update(agent)
    config.write_text(json.dumps(doc, indent=2))


def running_one(root: ProjectRoot, service: str) -> dict[str, Any]:
    """The service's one running container (a release keeps its previous one, stopped)."""
    ids = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={root.compose_name}",
         "--filter", f"label=com.docker.compose.service={service}"],
        capture_output=True, text=True, check=True).stdout.split()
    assert len(ids) == 1, f"{service} runs {len(ids)} containers"
    return json.loads(subprocess.run(["docker", "inspect", ids[0]], capture_output=True, text=True,
                                     check=True).stdout)[0]  # type: ignore[no-any-return]


def identity(root: ProjectRoot, service: str) -> tuple[str, str]:
    c = running_one(root, service)
    return c["Id"], c["State"]["StartedAt"]


@pytest.mark.parametrize("placed", [GUESTBOOK, INVENTORY], ids=lambda p: p.name, indirect=True)
def test_backup_volumes_and_a_restore_that_stops_only_what_it_writes_into(placed: ProjectRoot) -> None:
    """SPEC §24: the database's named volume in backup_volumes is archived by a deploy and
    put back by `backup restore`; read-only mounts (compose secrets and configs) are not
    written by a restore, and --stop stops only what writes into what is restored."""
    write, read = DATA[placed.project.name]
    app, database = placed.project.release_service, placed.project.database
    init(placed)
    choose_health_url(placed)
    # The project's own files (nginx's site, a compose config: mounted read-only; the app's
    # source: not mounted). The secret file stays out of the archives.
    set_agent(placed, backup_paths=[p for p in ("proxy", "app") if (placed.path / p).is_dir()])
    agent_ok(placed, "deploy", "v1.0.0")
    serves(placed, "v1.0.0")
    db_before, app_before = identity(placed, database), identity(placed, app)
    proxy_before = identity(placed, "proxy") if placed.project is GUESTBOOK else None

    res = placed.agent("backup", "create")
    assert res.returncode == 0, res.stdout + res.stderr
    files_only = res.stdout.strip()
    res = placed.agent("backup", "restore", files_only)
    assert res.returncode == 0, res.stdout + res.stderr  # nothing running writes into those files
    assert "stopping" not in res.stderr, res.stderr
    assert (identity(placed, database), identity(placed, app)) == (db_before, app_before)

    set_agent(placed, backup_volumes=[VOLUME[placed.project.name]])
    write(placed, 1)
    done = agent_ok(placed, "deploy", "v1.1.0")
    serves(placed, "v1.1.0")
    stored = read(placed)
    archive = placed.path / "backups" / done["backup"]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    volume = f"volumes/{VOLUME[placed.project.name]}"
    assert f"{volume}/{VOLUME_FILE[placed.project.name]}" in names, names[:30]
    assert identity(placed, database) == db_before, "a deploy must never restart the database"

    write(placed, 2)
    assert read(placed) != stored
    res = placed.agent("backup", "restore", done["backup"])
    assert res.returncode == 2 and "--stop" in res.stderr, res.stdout + res.stderr
    assert running_one(placed, database)["Name"].lstrip("/") in res.stderr
    app_now = identity(placed, app)
    res = placed.agent("backup", "restore", done["backup"], "--stop")
    assert res.returncode == 0, res.stdout + res.stderr
    # The database writes into the volume; the app uses the database (depends_on) and is
    # stopped and started with it; the project's nginx uses neither and keeps running.
    stopping = next(line for line in res.stderr.splitlines() if line.startswith("stopping"))
    assert running_one(placed, database)["Name"].lstrip("/") in stopping
    assert running_one(placed, app)["Name"].lstrip("/") in stopping, stopping
    assert identity(placed, app)[0] == app_now[0], "the app was replaced"
    if placed.project is GUESTBOOK:
        assert identity(placed, "proxy") == proxy_before, "the restore stopped nginx"
    # The database starts on the files of the backup: the rows of that moment.
    assert until(lambda: _read_or_none(placed, read) == stored, 60), read(placed)


def _read_or_none(root: ProjectRoot, read: Any) -> Any:
    try:
        return read(root)
    except (AssertionError, OSError):
        return None
