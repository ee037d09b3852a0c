"""Scenario 8: a PostgreSQL accessory (built here from Debian's packages) holding a large
database, dumped by every deploy (label obsdeploy.backup) before the jobs and the switch.

Measured in one run, alternating so a drifting load weighs on all three alike:
- `pg_dump` alone, the same command through `docker exec` into a file: the floor;
- a deploy with the dump, and the same deploy without the label: their difference is what the
  dump adds to a deploy (target: at most 1.1x `pg_dump` alone);
- the service's downtime in both deploys (the dump runs before the switch: unchanged).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bench import harness as h

if TYPE_CHECKING:
    from bench.run import Bench

PG_DUMP = "pg_dump -Fc -U app app"
ROW_BYTES = 1000  # one row of filler: 30 md5 strings (960 bytes) plus the tuple's overhead
FULL_BYTES = 1 << 30
QUICK_BYTES = 32 << 20
REPS = 2


def run(bench: Bench) -> dict[str, Any]:
    from bench.run import AGENT_SETTINGS, log, next_tag, row
    from tests import parts_images

    size = QUICK_BYTES if bench.quick else FULL_BYTES
    postgres = parts_images.ensure_images().refs["postgres"]
    side = h.AgentSide(bench.tmp / "data" / "observer", bench.registry.address,
                       f"obsbench-data-{bench.uid}", {**AGENT_SETTINGS, "health_timeout": 60})
    volume = f"{side.root.project}_pg-data"
    bench.cleanups.append(lambda: h.sh(["docker", "volume", "rm", "-f", volume], 60))
    bench.cleanups.append(side.cleanup)
    compose = side.root.path / "docker-compose.server.yml"
    doc = yaml.safe_load(compose.read_text())
    doc["services"]["db"] = {
        "image": postgres, "restart": "unless-stopped",
        "environment": {"POSTGRES_USER": "app", "POSTGRES_DB": "app", "POSTGRES_PASSWORD": "bench"},
        "volumes": ["pg-data:/var/lib/postgresql/data"],
        "healthcheck": {"test": ["CMD", "pg_isready", "-h", "127.0.0.1", "-U", "app"],
                        "interval": "1s", "timeout": "3s", "retries": 60},
    }
    doc["volumes"] = {"pg-data": {}}

    def write(dumped: bool) -> None:
        doc["services"]["db"]["labels"] = {"obsdeploy.backup": PG_DUMP} if dumped else {}
        compose.write_text(yaml.safe_dump(doc, sort_keys=False))

    write(False)
    code, out, _ = side.deploy("v1.0.0")
    if code != 0:
        raise RuntimeError(f"first deploy failed ({code}):\n{h.tail(out, 20)}")
    db = h.sh(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={side.root.project}",
               "--filter", "label=com.docker.compose.service=db"], check=True).stdout.split()[0]
    t = time.monotonic()
    rows = size // ROW_BYTES
    for statement in ("create table filler (id bigint, body text)",
                      "insert into filler select g, repeat(md5(g::text), 30) "
                      f"from generate_series(1, {rows}) g", "vacuum analyze filler"):
        h.sh(["docker", "exec", db, "psql", "-q", "-U", "app", "-d", "app", "-c", statement],
             timeout=1800, check=True)
    db_bytes = int(h.sh(["docker", "exec", db, "psql", "-tA", "-U", "app", "-d", "app", "-c",
                         "select pg_database_size('app')"], check=True).stdout.strip())
    log(f"  database filled: {db_bytes / (1 << 20):.0f} MiB in {time.monotonic() - t:.0f}s")

    alone: list[float] = []
    with_dump: list[h.Run] = []
    without: list[h.Run] = []
    for i in range(1 if bench.quick else REPS):
        for what in (("alone", "with", "without") if i % 2 == 0 else ("without", "with", "alone")):
            if what == "alone":
                alone.append(_pg_dump_alone(db, bench.tmp))
                log(f"  pg_dump alone: {alone[-1]:.2f}s")
                continue
            write(what == "with")
            run = side.measure(next_tag(side.current_version()),
                               env={"OBS_AGENT_STABILIZE_SECONDS": "0"})
            (with_dump if what == "with" else without).append(run)
            log(f"  deploy {what} the dump: exit {run.exit_code} wall {run.wall_s:.2f}s "
                f"down {run.downtime_s:.3f}s dump {run.steps.get('dump:db')}")
    med = h.median
    rows_out = [
        row("database size", "MiB", db_bytes / (1 << 20), target="(info)"),
        # The dump runs on the deploy's path before the switch and nothing else changes, so
        # its step is what it adds; with minus without (the note) says the same, with noise.
        row("the deploy's dump step (history steps dump:db) vs pg_dump alone", "s",
            med([r.steps.get("dump:db") for r in with_dump]), med(list(alone)),
            target="<= 1.1x", limit=1.1,
            note="script column: pg_dump alone, docker exec into a file"),
        row("deploy wall time with the dump / without the label", "s",
            med([r.wall_s for r in with_dump]), med([r.wall_s for r in without]), target="(info)"),
        row("downtime, deploy with the dump", "s", med([r.downtime_s for r in with_dump]),
            med([r.downtime_s for r in without]), target="(info: the dump runs before the switch)",
            note="script column: the same deploy without the label"),
        row("failed requests, deploy with the dump", "", med([r.failed for r in with_dump]),
            med([r.failed for r in without]), target="(info)"),
        row("exit codes", "", [r.exit_code for r in with_dump], [r.exit_code for r in without],
            target="ours: all 0", met=all(r.exit_code == 0 for r in with_dump)),
    ]
    return {"rows": rows_out, "runs": [r.as_dict() for r in with_dump + without],
            "pg_dump_alone_s": alone}


def _pg_dump_alone(db: str, tmp: Path) -> float:
    """The same dump into a file, without the agent: `docker exec ... > file`."""
    import subprocess

    fd, name = tempfile.mkstemp(dir=tmp, suffix=".dump")
    try:
        t = time.monotonic()
        subprocess.run(["docker", "exec", db, *PG_DUMP.split()], stdout=fd, check=True, timeout=1800)
        return time.monotonic() - t
    finally:
        os.close(fd)
        os.unlink(name)
