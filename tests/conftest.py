"""Session-wide real parts: one engine, one registry, fixture images built once per run.

Under CI=true a missing part fails the test (a green CI means the real parts ran); on a
developer machine it skips with the command that installs it.

The suite runs on every core (pytest-xdist, `scripts/test` passes `-n`). The controller sweeps
what dead runs left (tests/sweep.py), then makes this run's directory (tests/runs.py), which
its workers join. How the parts are shared:

- A session daemon every worker may use (the registry, the fixture images) is started once per
  run, by the first worker that asks, with `runs.shared(name, start)`: `start(workdir)` starts
  it, notes each process, namespace, bridge, project, ... with `runs.record*` (what the sweeper
  removes after a killed run), and returns its state as JSON (a port, image references). The
  others read that state. The run's end stops it, once every worker is done. A new daemon joins
  the same way: a session fixture calling `runs.shared`, and its parts class in tests/parts_*.py
  calling `runs.record_process` (or `runs.record`) for what it starts.
- A part whose tests disturb it (the swarm lab: nodes go down) is one per worker, and every test
  using it runs on that one worker: `xdist_group` (here, for every test naming `lab` among its
  fixtures; by hand, `pytest.mark.xdist_group(name)`, for a test that gets it through
  `request.getfixturevalue`, or a module whose module-scoped fixture must not run twice).
- Per-test parts (agent roots, sshds, proxies, private engines) take free ports and unique names,
  as they always did: workers never collide on them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests import parts, runs

if TYPE_CHECKING:
    from tests.parts_swarm import SwarmLab

IN_CI = os.environ.get("CI", "").lower() == "true"
SWEPT = pytest.StashKey[list[str]]()
# Set once the session has built the fixture images (so it used the engine, and the base
# image is there for the end-of-session check).
ENGINE_USED: list[str] = []


def _controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)  # before xdist starts the workers: they inherit the run
def pytest_sessionstart(session: pytest.Session) -> None:
    if _controller(session.config):
        from tests.sweep import sweep

        swept = sweep()
        if swept:
            session.config.stash[SWEPT] = swept
        runs.start_run()
    else:
        runs.join_run()


@pytest.hookimpl(trylast=True)  # after the session fixtures' teardown, and after the workers
def pytest_sessionfinish(session: pytest.Session) -> None:
    run = runs.current()
    if _controller(session.config) and run is not None:
        from tests.sweep import sweep_run

        sweep_run(run)  # the shared daemons, and whatever a test's teardown did not remove


def pytest_report_header(config: pytest.Config) -> str | None:
    swept = config.stash.get(SWEPT, None)
    return f"swept what dead test runs left: {len(swept)} things ({', '.join(swept[:8])}...)" if swept else None


# Slow and independent: started first, so that no worker is left with a long one at the end.
SLOW_FIRST = ("swarm-lab", "test_bench_smoke.py", "test_nonroot_user.py", "test_progress_over_ssh.py")


# tryfirst: xdist's worker turns an item's xdist_group mark into its scheduling group in a
# pytest_collection_modifyitems of its own; a mark added after that is ignored, and the lab's
# tests would be spread over every worker, each starting a lab (tests/unit/test_xdist_groups.py).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        # The lab's tests take its nodes down and up: they share one lab, on one worker.
        if "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("swarm-lab"))

    def rank(item: pytest.Item) -> int:
        group = item.get_closest_marker("xdist_group")
        key = (group.args[0] if group and group.args else "") + " " + item.nodeid
        return next((i for i, slow in enumerate(SLOW_FIRST) if slow in key), len(SLOW_FIRST))

    items.sort(key=rank)  # stable: collection order within each rank
    if not config.option.collectonly and any(
            name in item.fixturenames for item in items for name in IMAGE_FIXTURES):
        _build_images_in_background()


# The session fixtures that need tests/parts_images.py's images (minutes to build on a fresh
# machine): collecting a test that uses one starts the builds at once, in the background.
IMAGE_FIXTURES = ("service_images", "example_images")


def _build_images_in_background() -> None:
    """Once per run (the first worker to collect): a builder process, noted for the sweeper."""
    from tests import parts_images

    def start(workdir: Path) -> dict[str, object]:
        proc = parts_images.build_in_background(workdir / "log")
        runs.record_process(proc.pid, "the service images' builder")
        return {"pid": proc.pid, "log": str(workdir / "log")}

    if runs.current() is not None:
        runs.shared("image-builds", start)


def missing(part: str) -> None:
    msg = f"{part} is not available; run `bash scripts/setup-machine.sh`"
    if IN_CI:
        pytest.fail(msg + " (CI=true: integration tests never skip)")
    pytest.skip(msg)


@pytest.fixture(scope="session", autouse=True)
def host_engine_keeps_its_bridge() -> Iterator[None]:
    """Issue 12: once a session has used the engine, the machine's engine must still run a
    container on its default bridge when the session ends. A second dockerd on the machine
    deletes docker0 when started with `--bridge=none` (or restarted with
    `--default-address-pool`), which breaks `docker build` and `docker run` of the host engine
    until it is restarted (tests/faults.py `PrivateEngine` has a bridge of its own for that)."""
    had = parts.interfaces()
    yield
    if not ENGINE_USED:
        return
    problem = parts.default_bridge_problem(ENGINE_USED[0])
    if problem:
        iface = parts.default_bridge_name() or "docker0"
        when = ("" if iface in had else
                f" {iface} was already missing when this session started: an earlier run or"
                " something else on the machine removed it.")
        pytest.fail(
            "the host engine cannot run a container on its default bridge after the test session:"
            f" {problem}. Likely cause: a second dockerd started by the suite (tests/faults.py"
            " PrivateEngine) with --bridge=none or --default-address-pool, or on the host engine's"
            f" own bridge, deleted or took over that bridge.{when} Restart the host dockerd to recreate it (as"
            " scripts/setup-machine.sh starts it).",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def docker_client():  # type: ignore[no-untyped-def]
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:
        missing(f"the Docker engine ({exc})")
    return client


@pytest.fixture(scope="session")
def registry() -> parts.Registry:
    """The run's registry, shared by every worker (started once per run, stopped at its end)."""
    if not shutil.which("docker-registry"):
        missing("docker-registry")

    def start(workdir: Path) -> dict[str, object]:
        return {"workdir": str(workdir), "port": parts.Registry(workdir).start().port}

    state = runs.shared("registry", start)
    return parts.Registry(Path(str(state["workdir"])), port=int(state["port"]))


@pytest.fixture(scope="session")
def images(docker_client, registry: parts.Registry) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The fixture releases, built and pushed once per run: tag -> reference."""
    refs = runs.shared("images", lambda _: parts.build_fixture_images(docker_client, registry.address))
    ENGINE_USED.append(parts.FIXTURE_BASE)
    return refs


@pytest.fixture(scope="session")
def service_images() -> dict[str, str]:
    """Real service images built here from Debian's packages (tests/parts_images.py): name ->
    reference, for debian (the base), postgres, redis, mariadb, nginx and pyapp. Cached on the
    engine by content hash, so a machine builds them once (a few minutes)."""
    from tests import parts_images

    try:
        built = parts_images.ensure_images()
    except FileNotFoundError as exc:
        missing(str(exc))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        msg = f"building the service images failed: {exc}"
        if IN_CI:
            pytest.fail(msg + " (CI=true: never skipped)", pytrace=False)
        pytest.skip(msg)
    ENGINE_USED.append(built.refs["debian"])
    return built.refs


@pytest.fixture
def agent_root(tmp_path: Path, images: dict[str, str], registry: parts.Registry) -> Iterator[parts.AgentRootDir]:
    root = parts.make_agent_root(tmp_path / "observer", registry.address, f"obs-{uuid.uuid4().hex[:8]}")
    yield root
    root.down()
    leaks = root.secret_leaks()
    assert not leaks, f"secret values leaked into: {leaks}"


@pytest.fixture(scope="session")
def lab() -> Iterator[SwarmLab]:
    """A two-node Docker Swarm (tests/parts_swarm.py), built once per worker; its tests all
    run on one worker (pytest_collection_modifyitems)."""
    from tests.parts_swarm import SwarmLab

    if os.geteuid() != 0:
        missing("root (network namespaces for the swarm lab)")
    for tool in ("dockerd", "docker-registry", "nsenter", "curl", "ip"):
        if not shutil.which(tool):
            missing(tool)
    # The host engine is never used here (the end-of-session bridge check needs no entry).
    lab = SwarmLab()
    try:
        lab.start()
        lab.push_fixture_images()
        yield lab
    finally:
        lab.destroy()
