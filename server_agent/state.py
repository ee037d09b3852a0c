"""What the agent remembers between runs, written so that `kill -9` at any point leaves it whole.

- `state/last_good_tag`: replaced atomically (write temp, fsync, rename, fsync dir).
- `state/history.jsonl`: one record per attempt, appended and fsynced; a torn last line (a
  crash mid-append) is skipped on read.
- `state/attempt.json`: the journal of the attempt in progress. It exists only while an
  attempt runs; finding it with the lock free means the last attempt was killed, and it is
  turned into an `interrupted` history record.
- `state/deploy.lock`: an flock, released by the kernel when its holder dies, so a killed
  deploy never blocks the next one. Its content names the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .common.errors import LockedError, UsageError
from .common.redact import REDACTOR
from .common.versions import validate_version

log = logging.getLogger("obs.state")

# The journal's own bookkeeping: kept while an attempt runs, never in history.
JOURNAL_ONLY = ("pid", "held_restarts")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class History:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(REDACTOR.obj(record), sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            # A torn line from a crash must not glue onto this record.
            if os.fstat(fd).st_size and not self._ends_with_newline():
                line = "\n" + line
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def records(self) -> list[dict[str, Any]]:
        """Oldest first; unreadable lines (a torn write) are skipped with a warning."""
        if not self.path.exists():
            return []
        out = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                log.warning("history.jsonl line %d is torn or corrupt; skipped", n)
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


@dataclass
class LockHolder:
    pid: int
    action: str
    tag: str
    since: str


# How long a refused caller waits for the holder's line (written right after the flock).
HOLDER_WAIT_S = 1.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        return True
    return True


class DeployLock:
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def hold(self, action: str, tag: str) -> Iterator[None]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._wait_for_holder(fd)
                who = (
                    f"pid {holder.pid} ({holder.action} {holder.tag}) since {holder.since}"
                    if holder else "another process"
                )
                raise LockedError(
                    f"another deploy holds the lock: {who}",
                    hint="wait for it to finish; a killed holder releases the lock by itself",
                ) from None
            info = json.dumps({"pid": os.getpid(), "action": action, "tag": tag, "since": now_iso()})
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)  # a free lock names nobody
        finally:
            os.close(fd)  # releases the flock

    @classmethod
    def _wait_for_holder(cls, fd: int) -> LockHolder | None:
        """Who holds the lock. A holder writes its line just after taking the lock, so a
        caller refused in that moment waits for the line (briefly); a line whose process is
        gone was left by a killed holder and names nobody."""
        from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

        def live_holder() -> LockHolder | None:
            holder = cls._read_holder(fd)
            return holder if holder is not None and _alive(holder.pid) else None

        waiting = Retrying(retry=retry_if_result(lambda h: h is None), wait=wait_fixed(0.01),
                           stop=stop_after_delay(HOLDER_WAIT_S), retry_error_callback=lambda _: None)
        return waiting(live_holder)  # type: ignore[no-any-return]

    def is_held(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    @staticmethod
    def _read_holder(fd: int) -> LockHolder | None:
        try:
            data = json.loads(os.pread(fd, 4096, 0) or b"null")
            return LockHolder(int(data["pid"]), str(data["action"]), str(data["tag"]), str(data["since"]))
        except (ValueError, KeyError, TypeError):
            return None


class ReleaseState:
    """The state directory of an agent root."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.last_good_path = state_dir / "last_good_tag"
        self.journal_path = state_dir / "attempt.json"
        self.history = History(state_dir / "history.jsonl")
        self.lock = DeployLock(state_dir / "deploy.lock")

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    # --- last_good_tag ---------------------------------------------------------------------
    def last_good_tag(self) -> str | None:
        """The last tag that passed the gate. A corrupt file falls back to history's record."""
        try:
            text = self.last_good_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except (UnicodeDecodeError, OSError):
            text = "<unreadable>"
        try:
            return validate_version(text)
        except UsageError:
            recovered = self._last_success_tag()
            log.warning(
                "state/last_good_tag is corrupt (%r); using %s from history.jsonl",
                text[:40], recovered,
            )
            return recovered

    def set_last_good_tag(self, tag: str) -> None:
        atomic_write(self.last_good_path, tag + "\n")

    def _last_success_tag(self) -> str | None:
        good = self.good_tags()
        return good[-1] if good else None

    def good_tags(self) -> list[str]:
        """Tags that passed the gate, oldest first, from history."""
        return [str(r["tag"]) for r in self.history.records()
                if r.get("result") == "success" and isinstance(r.get("tag"), str)]

    def release_line(self) -> list[str]:
        """The good releases as a stack, oldest first, replayed from history: a successful
        deploy puts its tag on top; a successful rollback to a tag in the stack takes off
        what lies above it (a rollback to a tag not in it puts it on top). `rollback`
        without a tag goes to the one below the top, so repeated rollbacks walk back
        v3 → v2 → v1 instead of flip-flopping between the two newest."""
        line: list[str] = []
        for r in self.history.records():
            tag = r.get("tag")
            if r.get("result") != "success" or not isinstance(tag, str):
                continue
            if r.get("action") == "rollback" and tag in line:
                del line[len(line) - line[::-1].index(tag):]
            else:
                line.append(tag)
        return line

    # --- the journal of the attempt in progress --------------------------------------------
    def begin(self, record: dict[str, Any]) -> None:
        atomic_write(self.journal_path, json.dumps(REDACTOR.obj(record)))

    def update(self, **fields: Any) -> None:
        rec = self.pending() or {}
        rec.update(fields)
        self.begin(rec)

    def pending(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.journal_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"action": "unknown", "tag": None, "started_at": None}
        return data if isinstance(data, dict) else None

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.journal_path)

    def interrupted(self) -> dict[str, Any] | None:
        """The journal of a killed attempt: present, its lock free, and not yet in history
        (a kill between the history append and the journal's removal leaves a journal that
        is already recorded)."""
        rec = self.pending()
        if rec is None or self.lock.is_held() or self._recorded(rec):
            return None
        return _as_interrupted(rec)

    def _recorded(self, rec: dict[str, Any]) -> bool:
        hist = self.history.records()
        return bool(hist and rec.get("started_at") and hist[-1].get("started_at") == rec.get("started_at"))

    def finish(self, record: dict[str, Any]) -> None:
        """Record the attempt in history, then drop the journal (in this order: a crash
        between the two is resolved by `recover_interrupted`, which sees the history)."""
        self.history.append(record)
        self.discard()

    def recover_interrupted(self) -> dict[str, Any] | None:
        """Call with the lock held: turn a journal left by a killed attempt into history.
        Returns that record, plus the restart policies the attempt had set aside
        (`held_restarts`), for the caller to put back."""
        journal = self.pending()
        if journal is None:
            return None
        if self._recorded(journal):
            self.discard()
            return None
        rec = _as_interrupted(journal)
        self.finish(rec)
        log.warning("the previous %s of %s was interrupted; recorded in history",
                    rec.get("action"), rec.get("tag"))
        return {**rec, "held_restarts": journal.get("held_restarts") or {}}


def _as_interrupted(journal: dict[str, Any]) -> dict[str, Any]:
    """The history record of an attempt that was killed, from its journal."""
    rec = {k: v for k, v in journal.items() if k not in JOURNAL_ONLY}
    return {**rec, "result": "interrupted", "finished_at": None, "duration_s": None}
