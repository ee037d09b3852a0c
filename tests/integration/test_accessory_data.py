"""The data of accessories end to end: a real PostgreSQL and a real Redis (built here from
Debian's packages) dumped by a deploy into its archive, brought back by `backup restore
--accessories`, a failing dump that stops the deploy, and a migration that refuses the way
back to an older release without --force."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests import parts
from tests.parts import history, no_traceback
from tests.parts_project import running

PG_DUMP = "pg_dump -Fc -U app app"
PG_RESTORE = "pg_restore --clean --if-exists -U app -d app"
# Redis loads an RDB file only at start or on DEBUG RELOAD (NOSAVE: without first saving
# what it holds over the file just written); DEBUG is allowed from inside the container.
REDIS_RESTORE = "sh -c 'cat > /data/dump.rdb && redis-cli DEBUG RELOAD NOSAVE'"


def _compose(root: parts.AgentRootDir, service_images: dict[str, str]) -> dict:  # type: ignore[type-arg]
    doc = yaml.safe_load((root.path / "docker-compose.server.yml").read_text())
    observer = doc["services"]["observer"]
    observer["depends_on"] = {"db": {"condition": "service_healthy"}, "cache": {"condition": "service_started"}}
    doc["services"]["db"] = {
        "image": service_images["postgres"],
        "restart": "unless-stopped",
        "environment": {"POSTGRES_USER": "app", "POSTGRES_DB": "app", "POSTGRES_PASSWORD": "pw-not-a-secret"},
        "volumes": ["pg-data:/var/lib/postgresql/data"],
        "labels": {"obsdeploy.backup": PG_DUMP, "obsdeploy.restore": PG_RESTORE},
        "healthcheck": {"test": ["CMD", "pg_isready", "-h", "127.0.0.1", "-U", "app", "-d", "app"],
                        "interval": "1s", "timeout": "3s", "retries": 30},
    }
    doc["services"]["cache"] = {
        "image": service_images["redis"],
        "restart": "unless-stopped",
        # redis-cli --rdb asks for a replica's copy: without the delay Redis waits (5 s by
        # default) for more replicas to share one transfer with.
        "command": ["redis-server", "--dir", "/data", "--appendonly", "no", "--enable-debug-command", "local",
                    "--repl-diskless-sync-delay", "0"],
        "labels": {"obsdeploy.backup": "redis-cli --rdb -", "obsdeploy.restore": REDIS_RESTORE},
    }
    doc["services"]["migrate"] = {
        "image": observer["image"],
        "labels": {"obsdeploy.role": "job", "obsdeploy.reversible": "false"},
        "command": ["/bin/sh", "-c", "echo migrating the schema to $$VERSION"],
    }
    doc["volumes"] = {"pg-data": {}}
    return doc  # type: ignore[no-any-return]


@pytest.fixture
def data_root(tmp_path: Path, images: dict[str, str], registry: parts.Registry,
              service_images: dict[str, str]) -> Iterator[parts.AgentRootDir]:
    root = parts.make_agent_root(tmp_path / "observer", registry.address, f"obs-data-{uuid.uuid4().hex[:8]}",
                                 health_timeout=60)
    write_compose(root, _compose(root, service_images))
    yield root
    root.down()
    subprocess.run(["docker", "volume", "rm", "-f", f"{root.project}_pg-data"], capture_output=True)
    leaks = root.secret_leaks()
    assert not leaks, f"secret values leaked into: {leaks}"


def write_compose(root: parts.AgentRootDir, doc: dict) -> None:  # type: ignore[type-arg]
    (root.path / "docker-compose.server.yml").write_text(yaml.safe_dump(doc, sort_keys=False))


def sql(root: parts.AgentRootDir, statement: str) -> str:
    db = running(root.project, "db")[0]["Id"]
    res = subprocess.run(["docker", "exec", db, "psql", "-U", "app", "-d", "app", "-tAc", statement],
                         capture_output=True, text=True, check=True)
    return res.stdout.strip()


def redis(root: parts.AgentRootDir, *args: str) -> str:
    cache = running(root.project, "cache")[0]["Id"]
    return subprocess.run(["docker", "exec", cache, "redis-cli", *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def deploy(root: parts.AgentRootDir, *args: str) -> subprocess.CompletedProcess[str]:
    res = root.agent(*args, timeout=240)
    no_traceback(res)
    return res


def test_a_deploy_dumps_the_accessories_and_restore_brings_their_data_back(data_root: parts.AgentRootDir) -> None:
    root = data_root
    first = deploy(root, "deploy", "v1.0.0")
    assert first.returncode == 0, first.stdout + first.stderr
    # A first deploy starts the accessories: they held nothing to dump.
    assert "dumps" not in history(root)[0]
    sql(root, "create table notes (body text); insert into notes values ('before the deploy')")
    redis(root, "SET", "session:1", "before the deploy")

    plan = json.loads(root.agent("plan", "v1.1.0", "--json").stdout)
    dumped = {a["name"]: a["dump"] for a in plan["accessories"]}
    assert dumped == {"db": PG_DUMP.split(), "cache": ["redis-cli", "--rdb", "-"]}
    assert plan["irreversible_jobs"] == ["migrate"]

    res = deploy(root, "deploy", "v1.1.0")
    assert res.returncode == 0, res.stdout + res.stderr
    rec = history(root)[0]
    assert rec["result"] == "success" and rec["irreversible_jobs"] == ["migrate"]
    by_name = {d["accessory"]: d for d in rec["dumps"]}
    assert set(by_name) == {"db", "cache"}
    assert by_name["db"]["command"] == PG_DUMP.split() and by_name["db"]["bytes"] > 0
    assert {"dump:db", "dump:cache", "job:migrate"} <= set(rec["steps"])

    # In the attempt's archive, with the manifest; and listed.
    listed = json.loads(root.agent("backup", "list", "--json").stdout)
    archive = next(a for a in listed if a["name"] == rec["backup"])
    assert {d["accessory"] for d in archive["dumps"]} == {"db", "cache"}
    with tarfile.open(root.path / "backups" / rec["backup"]) as tar:
        names = tar.getnames()
        rdb = tar.extractfile("accessories/cache.dump").read()  # type: ignore[union-attr]
        pg = tar.extractfile("accessories/db.dump").read()  # type: ignore[union-attr]
    assert {"accessories/manifest.json", "accessories/db.dump", "accessories/cache.dump"} <= set(names)
    assert rdb.startswith(b"REDIS") and b"before the deploy" in rdb
    assert pg.startswith(b"PGDMP") and len(pg) == by_name["db"]["bytes"]

    # The data changes after the deploy; the restore brings back what the dumps hold.
    db_before = running(root.project, "db")[0]["Id"]
    sql(root, "update notes set body = 'changed later'")
    redis(root, "SET", "session:1", "changed later")
    restored = root.agent("backup", "restore", rec["backup"], "--accessories", timeout=240)
    no_traceback(restored)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "restored db" in restored.stdout and "restored cache" in restored.stdout
    assert "stopped meanwhile" in restored.stdout  # the observer depends on both
    assert sql(root, "select body from notes") == "before the deploy"
    assert redis(root, "GET", "session:1") == "before the deploy"
    assert running(root.project, "db")[0]["Id"] == db_before, "the database container was replaced"
    assert running(root.project, "observer"), "the release was not started again after the restore"

    # The migration ledger: v1.1.0 ran a job that is not reversible.
    refused = root.agent("rollback", "v1.0.0")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    out = refused.stdout + refused.stderr
    assert "migrate" in out and "v1.1.0" in out and rec["backup"] in out and "--force" in out
    assert root.last_good() == "v1.1.0"
    forced = deploy(root, "rollback", "v1.0.0", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert root.last_good() == "v1.0.0"


def test_a_failing_dump_stops_the_deploy_before_anything_is_switched(data_root: parts.AgentRootDir,
                                                                     service_images: dict[str, str]) -> None:
    root = data_root
    assert deploy(root, "deploy", "v1.0.0").returncode == 0
    observer = running(root.project, "observer")[0]["Id"]
    doc = _compose(root, service_images)
    doc["services"]["db"]["labels"]["obsdeploy.backup"] = "pg_dump -Fc -U nosuchrole app"
    write_compose(root, doc)

    res = deploy(root, "deploy", "v1.1.0")
    assert res.returncode == 13, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "dump of accessory db" in out and "nosuchrole" in out  # pg_dump's own words
    rec = history(root)[0]
    assert rec["result"] == "failed" and rec["failure"]["dump"]["accessory"] == "db"
    assert "migrate" not in rec.get("irreversible_jobs", []), "the job ran after a failed dump"
    assert running(root.project, "observer")[0]["Id"] == observer, "the running release was touched"
    assert root.last_good() == "v1.0.0"

    # A dump that hangs without a word is given up at backup_timeout.
    doc["services"]["db"]["labels"]["obsdeploy.backup"] = "sleep 60"
    write_compose(root, doc)
    res = root.agent("deploy", "v1.1.0", env=root.env(OBS_AGENT_BACKUP_TIMEOUT="2"), timeout=120)
    assert res.returncode == 13, res.stdout + res.stderr
    assert "did not finish within backup_timeout=2s" in res.stdout + res.stderr
    assert running(root.project, "observer")[0]["Id"] == observer


def test_the_archive_of_a_restore_never_writes_the_dumps_into_the_root(data_root: parts.AgentRootDir) -> None:
    """A file restore (without --accessories) leaves accessories/ out of the agent root."""
    root = data_root
    assert deploy(root, "deploy", "v1.0.0").returncode == 0
    redis(root, "SET", "k", "v")
    assert deploy(root, "deploy", "v1.1.0").returncode == 0
    name = history(root)[0]["backup"]
    res = root.agent("backup", "restore", name, "--stop", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not (root.path / "accessories").exists()
    with tarfile.open(root.path / "backups" / name) as tar:
        manifest = json.load(io.BytesIO(tar.extractfile("accessories/manifest.json").read()))  # type: ignore[union-attr]
    assert {d["member"] for d in manifest["dumps"]} == {"accessories/db.dump", "accessories/cache.dump"}


def test_an_automatic_rollback_after_a_migration_goes_back_and_says_so(data_root: parts.AgentRootDir) -> None:
    root = data_root
    assert deploy(root, "deploy", "v1.0.0").returncode == 0
    res = deploy(root, "deploy", "v2.0.0-crash")
    assert res.returncode == 20, res.stdout + res.stderr
    rec = history(root)[0]
    assert rec["result"] == "rolled_back" and rec["irreversible_jobs"] == ["migrate"]
    assert any("migrate" in w and "v1.0.0" in w for w in rec["warnings"]), rec
    assert "warning" in res.stdout and "migrate" in res.stdout
    assert root.last_good() == "v1.0.0"
