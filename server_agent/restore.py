"""`backup restore NAME --accessories`: each dump of an archive fed back to its accessory.

    the archive's manifest → for each dump: its accessory's restore command (label
    obsdeploy.restore), the release services that use the accessory (depends_on) stopped
    → the dump streamed to the command's stdin → those services started again

The accessory itself keeps running (its container is never replaced: the data goes in through
its own client, pg_restore or redis-cli). Under the deploy lock, like every change.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backup import archived_dumps, opened_dump
from .common.errors import ExitCode, ObsError, UsageError
from .compose import ComposeConfig, ComposeProject
from .engine import ContainerInfo, Engine
from .names import RESTORE_LABEL
from .plan import build_plan
from .root import AgentRoot

log = logging.getLogger("obs.restore")


@dataclass(frozen=True)
class RestoredDump:
    accessory: str
    bytes: int
    seconds: float
    stopped: tuple[str, ...]  # the release containers stopped meanwhile


class RestoreError(ObsError):
    """A restore command failed: the accessory refused the dump (exit 2, as for any input
    that is refused; 1 would say the agent has a bug). What it printed is in the message."""

    exit_code = ExitCode.USAGE


def restore_accessories(root: AgentRoot, backend: Any, engine: Engine, archive: Path,
                        tag: str | None) -> list[RestoredDump]:
    """Feed each dump of `archive` to its accessory's restore command. `tag`: the release
    running now, whose compose file says which services use which accessory."""
    dumps = archived_dumps(archive)
    if not dumps:
        raise UsageError(f"{archive.name} holds no accessory dumps",
                         hint="dumps are taken by deploys, from accessories labelled obsdeploy.backup; "
                              "see `obs-agent backup list --json`")
    if root.settings.engine != "compose":
        raise UsageError("restore --accessories runs on the compose engine",
                         hint="on a swarm, run the accessory's restore command yourself")
    config = ComposeProject(root.path, root.compose_file, root.project).config(
        root.compose_env(tag or "restore"))
    plan = build_plan(config, tag or "restore", [], set())
    accessories = {a.name: a for a in plan.accessories}
    for d in dumps:  # every dump can be restored before the first one is
        name = str(d.get("accessory"))
        if name not in accessories:
            raise UsageError(f"{archive.name} holds a dump of {name}, which is not an accessory of "
                             f"{root.compose_file.name} now", hint="restore it by hand")
        if not accessories[name].restore:
            raise UsageError(f"accessory {name} has no restore command",
                             hint=f"label it {RESTORE_LABEL}, e.g. \"pg_restore --clean -U app -d app\" "
                                  "or \"sh -c 'cat > /data/restore.rdb'\"")
    restored = []
    for d in dumps:
        name = str(d["accessory"])
        users = [c for c in engine.project_containers(root.project)
                 if c.running and c.role == "release" and c.service in _users_of(config, name)]
        restored.append(_restore_one(root, backend, engine, archive, d, accessories[name].restore, users))
    return restored


def _restore_one(root: AgentRoot, backend: Any, engine: Engine, archive: Path, dump: dict[str, Any],
                 argv: tuple[str, ...], users: list[ContainerInfo]) -> RestoredDump:
    name, member = str(dump["accessory"]), str(dump["member"])
    if users:
        log.info("stopping %s while %s is restored", ", ".join(c.name for c in users), name)
        engine.stop(users)
    t = time.monotonic()
    try:
        with opened_dump(archive, member) as source:
            log.info("restoring %s from %s: %s", name, archive.name, " ".join(argv))
            res = backend.run_in_accessory(name, argv, timeout=root.settings.backup_timeout, stdin=source)
    finally:
        if users:
            engine.start(users)
            log.info("started %s again", ", ".join(c.name for c in users))
    if res.exit_code != 0:
        how = ("did not finish within backup_timeout" if res.exit_code is None
               else f"exited with code {res.exit_code}")
        raise RestoreError(f"restoring {name} ({' '.join(argv)}) {how}: {res.stderr_tail[-600:]}",
                           hint="the accessory's data may be partly restored; see its log")
    return RestoredDump(name, res.bytes, round(time.monotonic() - t, 3), tuple(c.name for c in users))


def _users_of(config: ComposeConfig, accessory: str) -> set[str]:
    """The services that depend on `accessory`, directly or through other services."""
    deps = {s.name: set(s.depends_on) for s in config.services}
    users: set[str] = set()
    todo = [accessory]
    while todo:
        target = todo.pop()
        for name, needs in deps.items():
            if target in needs and name not in users:
                users.add(name)
                todo.append(name)
    return users
