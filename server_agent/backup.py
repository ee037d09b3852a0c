"""BackupArchive: uncompressed tar archives in DIR/backups/ (mode 0600), create/list/restore/prune.

Speed and consistency (SPEC §7.4): a deploy *captures* the backup at the moment the old release
has stopped writing (a stat walk, open file descriptors for large files, small files read into
memory: milliseconds), starts the new release, and *writes* the archive while the health gate
runs. Large files are copied up to the size they had at capture, in the kernel
(`copy_file_range`), so 1 GiB costs about a second instead of the ~38 s of `tar -czf`.
This relies on large files (the JSONL archive, logs) being append-only, which the observer's are.
The archive is uncompressed on purpose: compression is what makes `tar -czf` slow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .errors import ObsError, UsageError
from .progress import Tracker, track
from .root import AgentRoot

log = logging.getLogger("obs.backup")

# Files at most this big are read into memory at capture: config files may be rewritten in
# place, so their content must be taken while the writer is stopped.
SMALL_FILE = 256 * 1024
SUFFIX = ".tar"
_BLOCK = tarfile.BLOCKSIZE
_CHUNK = 64 * 1024 * 1024


@dataclass
class _Entry:
    info: tarfile.TarInfo
    data: bytes | None = None  # small files
    fd: int | None = None  # large files, copied up to info.size


@dataclass
class BackupSnapshot:
    """The content of the backup as of one moment, ready to be written."""

    name: str
    entries: list[_Entry] = field(default_factory=list)

    def close(self) -> None:
        for e in self.entries:
            if e.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(e.fd)
                e.fd = None


class BackupArchive:
    def __init__(self, root: AgentRoot) -> None:
        self.root = root
        self.dir = root.backups_dir

    def members_to_back_up(self) -> list[str]:
        s = self.root.settings
        rel = [*s.backup_paths, s.compose_file, "deployment_config.json", "state"]
        return [r for r in dict.fromkeys(rel) if (self.root.path / r).exists()]

    # --- capture ---------------------------------------------------------------------------
    def capture(self, label: str) -> BackupSnapshot:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        snap = BackupSnapshot(name=f"backup-{stamp}-{_safe(label)}{SUFFIX}")
        try:
            for rel in self.members_to_back_up():
                self._capture_tree(self.root.path / rel, snap)
        except BaseException:
            snap.close()
            raise
        return snap

    def _capture_tree(self, top: Path, snap: BackupSnapshot) -> None:
        paths = [top]
        if top.is_dir() and not top.is_symlink():
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames.sort()
                if Path(dirpath) == self.root.state_dir:
                    # The lock and the in-flight journal are not state worth restoring.
                    filenames = [f for f in filenames if f not in {"deploy.lock", "attempt.json"}]
                paths += [Path(dirpath, d) for d in dirnames]
                paths += [Path(dirpath, f) for f in sorted(filenames)]
        for p in paths:
            self._capture_one(p, snap)

    def _capture_one(self, path: Path, snap: BackupSnapshot) -> None:
        arcname = str(path.relative_to(self.root.path))
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        info = tarfile.TarInfo(arcname)
        info.mode = stat.S_IMODE(st.st_mode)
        info.mtime = int(st.st_mtime)
        info.uid, info.gid = st.st_uid, st.st_gid
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
            snap.entries.append(_Entry(info))
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(path)
            snap.entries.append(_Entry(info))
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            size = os.fstat(fd).st_size
            info.size = size
            if size <= SMALL_FILE:
                try:
                    data = os.pread(fd, size, 0)
                finally:
                    os.close(fd)
                info.size = len(data)
                snap.entries.append(_Entry(info, data=data))
            else:
                snap.entries.append(_Entry(info, fd=fd))
        # sockets, fifos, devices: not data worth keeping

    # --- write -----------------------------------------------------------------------------
    def write(self, snap: BackupSnapshot) -> Path:
        """Write the archive to NAME.partial, fsync, rename. On any error nothing is left."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        final = self.dir / snap.name
        partial = final.with_name(final.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        total = sum(e.info.size for e in snap.entries if e.info.isreg())
        written = 0
        try:
            with os.fdopen(fd, "wb", closefd=False) as out, track(f"backup {snap.name}") as tracker:
                for e in snap.entries:
                    out.write(e.info.tobuf(format=tarfile.PAX_FORMAT))
                    if e.data is not None:
                        out.write(e.data)
                    elif e.fd is not None:
                        out.flush()
                        _copy_range(e.fd, fd, e.info.size, e.info.name,
                                    _advance(tracker, written, total))
                    if e.info.isreg():
                        written += e.info.size
                        tracker.update(written, total)
                        if e.info.size % _BLOCK:
                            out.write(b"\0" * (_BLOCK - e.info.size % _BLOCK))
                out.write(b"\0" * (2 * _BLOCK))
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(partial, final)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            raise
        finally:
            snap.close()
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return final

    def create(self, label: str) -> Path:
        return self.write(self.capture(label))

    # --- list / prune ----------------------------------------------------------------------
    def archives(self) -> list[Path]:
        """Newest first. Leftover `.partial` files from a killed run are removed."""
        if not self.dir.exists():
            return []
        for p in self.dir.glob(f"*{SUFFIX}.partial"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        return sorted(self.dir.glob(f"backup-*{SUFFIX}"), key=lambda p: p.name, reverse=True)

    def prune(self) -> list[Path]:
        removed = self.archives()[self.root.settings.backup_keep:]
        for p in removed:
            p.unlink()
        return removed

    # --- restore ---------------------------------------------------------------------------
    def restore(self, name: str) -> Path:
        """Extract NAME over DIR (state/ excepted: history stays truthful). A member that would
        land outside DIR refuses the whole archive before anything is written. The current
        files are backed up first, so a restore never loses data either."""
        if not hasattr(tarfile, "data_filter"):
            raise UsageError(
                f"this Python ({sys.version.split()[0]}) has no tarfile extraction filters, which "
                "restore needs to refuse archives that would write outside the agent root",
                hint="run the agent with Python 3.10.12+, 3.11.4+ or 3.12+ (obsdeploy setup --python)")
        if "/" in name or name in {"", ".", ".."}:
            raise UsageError(f"invalid backup name {name!r}", hint="use a name from `backup list`")
        path = self.dir / name
        if not path.is_file():
            raise UsageError(f"no backup named {name!r} in {self.dir}",
                             hint="see `obs-agent backup list`")
        dest = str(self.root.path)
        try:
            size = path.stat().st_size
            with tarfile.open(path, "r:") as tar:
                members = tar.getmembers()
                for m in members:
                    if m.isreg() and m.offset_data + m.size > size:
                        raise UsageError(f"refusing {name}: it is truncated ({m.name!r} is cut short)",
                                         hint="pick another archive from `backup list`")
                    try:
                        # data_filter would quietly re-root an absolute name; refuse it instead.
                        if m.name.startswith("/"):
                            raise tarfile.AbsolutePathError(m)
                        tarfile.data_filter(m, dest)
                    except tarfile.FilterError as exc:
                        raise UsageError(
                            f"refusing {name}: member {m.name!r} would land outside "
                            f"{dest} ({type(exc).__name__})",
                            hint="this archive was not made by obs-agent or has been tampered with",
                        ) from None
                safety = self.create("pre-restore")
                wanted = [m for m in members if m.name != "state" and not m.name.startswith("state/")]
                tar.extractall(dest, members=wanted, filter="data")
        except tarfile.TarError as exc:
            raise UsageError(f"refusing {name}: not a readable tar archive ({exc})",
                             hint="pick another archive from `backup list`") from None
        log.info("restored %s; the files it replaced are in %s", name, safety.name)
        return safety


def _advance(tracker: Tracker, base: int, total: int) -> Callable[[int], None]:
    """A large file's progress, `base` bytes into the archive."""
    return lambda copied: tracker.update(base + copied, total)


def _copy_range(src: int, dst: int, size: int, name: str,
                on_copied: Callable[[int], None] | None = None) -> None:
    off = 0
    while off < size:
        try:
            # In chunks, so a large file's progress can be shown while it is copied.
            n = os.copy_file_range(src, dst, min(size - off, _CHUNK), off)
        except OSError as exc:
            if exc.errno in (18, 38, 95):  # EXDEV, ENOSYS, EOPNOTSUPP: fall back to read/write
                n = os.write(dst, os.pread(src, min(1 << 20, size - off), off))
            else:
                raise
        if n == 0:
            raise ObsError(f"{name} shrank while being backed up",
                           hint="a file under backup_paths was truncated; run the backup again")
        off += n
        if on_copied is not None:
            on_copied(off)


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in ".-_" else "_" for ch in label)[:80]


