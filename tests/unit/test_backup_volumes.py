"""backup_volumes and restore's writers as values (SPEC §24): who a restore would write under,
and the archive's volumes/ members, put back through a fake engine's archive API."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from server_agent.backup import BackupArchive, archived_volumes, restore_writers
from server_agent.engine import ContainerInfo
from server_agent.root import AgentRoot


def _container(name: str, *, role: str = "release", running: bool = True, binds: frozenset[str] = frozenset(),
               volumes: frozenset[tuple[str, str, bool]] = frozenset()) -> ContainerInfo:
    return ContainerInfo(
        id=name * 4, name=name, service=name, number=1, image="img", state="running" if running else "exited",
        health=None, exit_code=0, restart_count=0, env_names=frozenset(), stop_timeout=None,
        restart_policy={}, tag="v1" if role == "release" else None, role=role, config_hash="",
        binds=frozenset((b, "/x") for b in binds), ports=frozenset(), written_binds=binds, volumes=volumes)


def test_restore_writers_are_those_writing_into_what_is_restored() -> None:
    root = Path("/srv/app")
    app = _container("app", binds=frozenset({"/srv/app/config"}))
    code = _container("dev", binds=frozenset({"/srv/app"}))  # `.:/code` holds everything restored
    logs = _container("logger", binds=frozenset({"/srv/app/logs/app"}))
    # Read-only mounts (a compose secret, a config, `:ro`) are not in written_binds.
    proxy = _container("proxy", role="accessory")
    db = _container("db", role="accessory", volumes=frozenset({("p_db-data", "/var/lib/db", True)}))
    reader = _container("report", volumes=frozenset({("p_db-data", "/data", False)}))
    stopped = replace(app, name="old", id="old1", state="exited")
    everyone = [app, code, logs, proxy, db, reader, stopped]
    assert [c.name for c in restore_writers(everyone, root, ["config"], [])] == ["app", "dev"]
    assert [c.name for c in restore_writers(everyone, root, ["config", "logs"], [])] == ["app", "dev", "logger"]
    assert [c.name for c in restore_writers(everyone, root, ["compose.yaml"], ["p_db-data"])] == ["db", "dev"]
    assert restore_writers(everyone, root, [], []) == []
    # The release services that depend on a restored accessory are stopped with it, after it
    # in the list; those that depend on nothing restored are not.
    api = _container("api")
    depends = {"api": {"db"}, "app": {"proxy"}}
    assert [c.name for c in restore_writers([api, *everyone], root, [], ["p_db-data"], depends)] == ["db", "api"]


def test_archived_volumes() -> None:
    names = ["config", "config/a", "volumes", "volumes/db-data", "volumes/db-data/x", "volumes/cache/y"]
    assert archived_volumes([tarfile.TarInfo(n) for n in names]) == ["cache", "db-data"]


class FakeEngine:
    """The archive API of one container mounting volume `p_data` at /data (stopped)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.put: dict[str, bytes] = {}
        self.container = _container("app", running=False, volumes=frozenset({("p_data", "/data", True)}))

    def compose_volume(self, project: str, key: str) -> str | None:
        return "p_data" if key == "data" else None

    def project_containers(self, project: str) -> list[ContainerInfo]:
        return [self.container]

    def get_archive(self, cid: str, path: str) -> Iterator[bytes]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            top = tarfile.TarInfo("data")
            top.type = tarfile.DIRTYPE
            tar.addfile(top)
            for name, content in self.files.items():
                info = tarfile.TarInfo(f"data/{name}")
                info.size, info.uid = len(content), 999
                tar.addfile(info, io.BytesIO(content))
        raw = buf.getvalue()
        return iter([raw[i:i + 700] for i in range(0, len(raw), 700)])  # chunks across headers

    def put_archive(self, cid: str, path: str, data: BinaryIO) -> None:
        with tarfile.open(fileobj=data, mode="r:") as tar:
            for m in tar.getmembers():
                f = tar.extractfile(m)
                self.put[f"{path}/{m.name}"] = f.read() if f else b""
                assert m.uid == 999


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AgentRoot:
    for k in ("OBS_AGENT_BACKUP_VOLUMES",):
        monkeypatch.delenv(k, raising=False)
    (tmp_path / "compose.yaml").write_text("services: {}\n")
    (tmp_path / "deployment_config.json").write_text(json.dumps({"agent": {
        "backup_volumes": ["data"], "backup_paths": [], "required_env": [], "secret_env": []}}))
    return AgentRoot(tmp_path)


def test_a_volume_is_archived_and_put_back_through_the_archive_api(root: AgentRoot) -> None:
    engine: Any = FakeEngine({"big.bin": b"x" * 300_000, "PG_VERSION": b"15\n"})
    archive = BackupArchive(root, engine)
    path = archive.create("test")
    with tarfile.open(path) as tar:
        got = {m.name: (tar.extractfile(m).read() if m.isreg() else None)  # type: ignore[union-attr]
               for m in tar.getmembers() if m.name.startswith("volumes")}
    assert got == {"volumes/data": None, "volumes/data/big.bin": b"x" * 300_000,
                   "volumes/data/PG_VERSION": b"15\n"}
    assert archive.restores(path.name) == (["compose.yaml", "deployment_config.json"], ["p_data"])
    engine.files = {"PG_VERSION": b"16\n"}  # changed since: the safety copy takes it
    safety = archive.restore(path.name)
    assert engine.put == {"/data/big.bin": b"x" * 300_000, "/data/PG_VERSION": b"15\n"}
    with tarfile.open(safety) as tar:
        assert tar.extractfile("volumes/data/PG_VERSION").read() == b"16\n"  # type: ignore[union-attr]
    assert not (root.path / "volumes").exists()  # never extracted into the root
