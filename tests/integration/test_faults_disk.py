"""Issue 5, case 4: the disk under DIR nearly full, and full in the middle of the backup.

The agent root is a small tmpfs (we run as root in CI and on the dev machine), so "full" is
real ENOSPC from the kernel, not a mock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import parts
from tests.faults import (
    DataSnapshot,
    assert_next_deploy_works,
    assert_state_whole,
    close_root,
    collect,
    fill,
    new_project,
    running_tags,
    serving,
    spawn,
    tmpfs,
    wait_for,
)
from tests.parts import AgentRootDir, Registry, history, no_traceback

pytestmark = pytest.mark.integration
MB = 1 << 20


@pytest.fixture
def small_root(tmp_path: Path, images: dict[str, str], registry: Registry) -> Iterator[AgentRootDir]:
    if os.geteuid() != 0:
        from tests.conftest import missing

        missing("root (to mount a tmpfs)")
    with tmpfs(tmp_path / "observer", 48):
        root = parts.make_agent_root(tmp_path / "observer", registry.address, new_project())
        try:
            res = root.agent("deploy", "v1.0.0")
            assert res.returncode == 0, res.stdout + res.stderr
            yield root
        finally:
            close_root(root)


def problems(root: AgentRootDir) -> set[str]:
    res = root.agent("check", "--json")
    no_traceback(res)
    return {p["code"] for p in json.loads(res.stdout)["problems"]}


def test_preflight_refuses_a_nearly_full_disk(small_root: AgentRootDir) -> None:
    root = small_root
    history_before = (root.path / "state" / "history.jsonl").read_bytes()
    snap = DataSnapshot.take(root)
    filler = fill(root.path / "filler", leave_bytes=4 * MB)  # min_free_mb is 10
    assert "disk.root" in problems(root)
    res = root.agent("deploy", "v1.1.0")
    no_traceback(res)
    assert res.returncode == 10 and "disk.root" in res.stderr, res.stdout + res.stderr
    filler.unlink()
    # Room now, but not for the backup plus min_free_mb.
    big = fill(root.path / "logs" / "big.log", leave_bytes=20 * MB)
    assert problems(root) == {"disk.backup"}
    res = root.agent("deploy", "v1.1.0")
    assert res.returncode == 10 and "disk.backup" in res.stderr, res.stdout + res.stderr
    assert serving(root) == "v1.0.0" and root.last_good() == "v1.0.0"
    assert (root.path / "state" / "history.jsonl").read_bytes() == history_before
    assert not list((root.path / "backups").glob("*.partial"))
    snap.assert_intact(root)
    big.unlink()
    assert_next_deploy_works(root, "v1.1.0")


def test_disk_full_in_the_middle_of_the_backup(small_root: AgentRootDir) -> None:
    """Preflight passes; then another process fills the disk, and the archive (written while
    the new release is gated) hits ENOSPC. No partial archive is left, the release does not
    count as deployed: the agent rolls back (exit 20) and the last good release serves."""
    root = small_root
    snap = DataSnapshot.take(root)
    archives = sorted(p.name for p in (root.path / "backups").glob("backup-*.tar"))
    big = fill(root.path / "logs" / "big.log", leave_bytes=30 * MB)  # ~16 MB to archive
    filler = root.path / "filler"
    proc = spawn(root, "deploy", "v1.1.0")
    try:
        # The journal gets its from_tag once preflight and the pull are done, before the
        # switch and the backup.
        journal = root.path / "state" / "attempt.json"
        wait_for(lambda: '"from_tag": "v' in (journal.read_text(errors="replace") if journal.exists() else ""),
                 60, "the journal after the pull")
        fill(filler, leave_bytes=3 * MB)
    finally:
        res = collect(proc)
    no_traceback(res)
    assert res.returncode == 20, res.stdout + res.stderr
    assert not list((root.path / "backups").glob("*.partial"))
    assert sorted(p.name for p in (root.path / "backups").glob("backup-*.tar")) == archives
    rec = history(root)[0]
    assert rec["result"] == "rolled_back" and rec["backup"] is None, rec
    assert "backup failed" in rec["failure"]["reason"], rec["failure"]
    assert "No space left" in rec["failure"]["reason"], rec["failure"]
    assert serving(root) == "v1.0.0" and running_tags(root) == ["v1.0.0"]
    assert_state_whole(root, good={"v1.0.0"})
    snap.assert_intact(root)
    filler.unlink()
    big.unlink()
    assert_next_deploy_works(root, "v1.1.0")
