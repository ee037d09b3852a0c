"""BackupArchive: uncompressed tar archives in DIR/backups/ (mode 0600), create/list/restore/prune.

Speed and consistency (SPEC §7.4): a deploy *captures* the backup at the moment the old release
has stopped writing (a stat walk, open file descriptors for large files, small files copied
into a spool file: milliseconds), starts the new release, and *writes* the archive while the health gate
runs. Large files are copied up to the size they had at capture, in the kernel
(`copy_file_range`), so 1 GiB costs about a second instead of the ~38 s of `tar -czf`.
This relies on large files (the JSONL archive, logs) being append-only, which the observer's are.
The archive is uncompressed on purpose: compression is what makes `tar -czf` slow.

Accessories' dumps (label obsdeploy.backup) are taken before the jobs, each streamed into an
unlinked spool file beside the archives, and go into the attempt's archive as
`accessories/NAME.dump`, listed with their commands and sizes in `accessories/manifest.json`.
A file restore never extracts `accessories/`; `restore --accessories` feeds the dumps back.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import stat
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .common.errors import ObsError, UsageError
from .common.progress import Tracker, track
from .engine import write_all as _write_all
from .root import AgentRoot

if TYPE_CHECKING:
    from .engine import ContainerInfo, Engine

log = logging.getLogger("obs.backup")

# Files at most this big are copied at capture: config files may be rewritten in place, so
# their content must be taken while the writer is stopped. They are copied into a spool file
# beside the archives (in the kernel, copy_file_range), not into memory: the agent's memory
# stays flat whatever the tree holds.
SMALL_FILE = 256 * 1024
# Large files are held open at capture and copied while the gate runs. At most this many
# (and at most a quarter of the process's open-file limit) are held; the large files beyond
# are copied into the spool at capture, like small ones: a tree with thousands of large
# files costs some capture time instead of failing with "too many open files".
MAX_HELD_FILES = 128
SUFFIX = ".tar"
_BLOCK = tarfile.BLOCKSIZE
_CHUNK = 64 * 1024 * 1024
VOLUMES = "volumes"  # the archive's directory of backup_volumes: volumes/NAME/...


class BackupError(ObsError):
    """The backup cannot be made (a directory that cannot be read, a file that cannot be
    opened): a deploy fails rather than run without it."""


@dataclass
class _Entry:
    info: tarfile.TarInfo
    spooled: int | None = None  # offset of the content in the snapshot's spool
    fd: int | None = None  # large files held open, copied up to info.size


@dataclass
class BackupSnapshot:
    """The content of the backup as of one moment, ready to be written."""

    name: str
    entries: list[_Entry] = field(default_factory=list)
    spool: int | None = None  # an unlinked file holding the content copied at capture
    spool_size: int = 0

    def close(self) -> None:
        for e in self.entries:
            if e.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(e.fd)
                e.fd = None
        if self.spool is not None:
            with contextlib.suppress(OSError):
                os.close(self.spool)
            self.spool = None

    @property
    def held(self) -> int:
        return sum(1 for e in self.entries if e.fd is not None)


DUMPS_DIR = "accessories"
MANIFEST = f"{DUMPS_DIR}/manifest.json"


@dataclass
class DumpFile:
    """One accessory's dump, taken by this attempt: an unlinked file holding its bytes."""

    accessory: str
    command: tuple[str, ...]
    fd: int
    bytes: int = 0
    seconds: float = 0.0

    @property
    def member(self) -> str:
        return f"{DUMPS_DIR}/{_safe(self.accessory)}.dump"

    def record(self) -> dict[str, object]:
        """Its line in the manifest and in the history record."""
        return {"accessory": self.accessory, "command": list(self.command), "member": self.member,
                "bytes": self.bytes, "seconds": self.seconds}

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _held_limit() -> int:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, min(MAX_HELD_FILES, (soft if soft > 0 else 1024) // 4))


class BackupArchive:
    """`engine`: where backup_volumes are read from and restored to (None: files only)."""

    def __init__(self, root: AgentRoot, engine: Engine | None = None) -> None:
        self.root = root
        self.dir = root.backups_dir
        self.engine = engine

    def members_to_back_up(self) -> list[str]:
        s = self.root.settings
        rel = [*s.backup_paths, self.root.compose_file.name, "deployment_config.json", "state"]
        return [r for r in dict.fromkeys(rel) if (self.root.path / r).exists()]

    # --- capture ---------------------------------------------------------------------------
    def capture(self, label: str, dumps: tuple[DumpFile, ...] = ()) -> BackupSnapshot:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        snap = BackupSnapshot(name=f"backup-{stamp}-{_safe(label)}{SUFFIX}")
        self._ensure_dir()
        try:
            snap.spool = self.spool_file()
            limit = _held_limit()
            for rel in self.members_to_back_up():
                self._capture_tree(self.root.path / rel, snap, limit)
            if dumps:
                self._add_dumps(snap, dumps)
            for key in self.root.settings.backup_volumes:
                self._capture_volume(key, snap)
        except BaseException:
            snap.close()
            raise
        return snap

    def spool_file(self) -> int:
        """A new file beside the archives, unlinked at once (nothing is left if we die), mode
        0600: the descriptor is the only way to it."""
        self._ensure_dir()
        with tempfile.TemporaryFile(dir=self.dir) as spool:
            return os.dup(spool.fileno())

    def _add_dumps(self, snap: BackupSnapshot, dumps: tuple[DumpFile, ...]) -> None:
        import json

        now = int(datetime.now(timezone.utc).timestamp())
        folder = tarfile.TarInfo(DUMPS_DIR)
        folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o700, now
        snap.entries.append(_Entry(folder))
        manifest = json.dumps({"dumps": [d.record() for d in dumps]}, indent=2).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.mode, info.mtime, info.size = 0o600, now, len(manifest)
        assert snap.spool is not None
        offset = snap.spool_size
        os.pwrite(snap.spool, manifest, offset)
        snap.spool_size += len(manifest)
        snap.entries.append(_Entry(info, spooled=offset))
        for d in dumps:
            info = tarfile.TarInfo(d.member)
            info.mode, info.mtime, info.size = 0o600, now, d.bytes
            # The snapshot owns its own descriptor: the attempt closes the dump's either way.
            snap.entries.append(_Entry(info, fd=os.dup(d.fd)))

    def _capture_tree(self, top: Path, snap: BackupSnapshot, limit: int) -> None:
        def unreadable(exc: OSError) -> None:
            raise BackupError(
                f"cannot read {exc.filename}: {exc.strerror}; the backup would miss what is in it",
                hint="make it readable by the agent (or move it out of backup_paths)") from None

        self._capture_one(top, snap, limit)
        if not top.is_dir() or top.is_symlink():
            return
        for dirpath, dirnames, filenames in os.walk(top, onerror=unreadable):
            dirnames.sort()
            if Path(dirpath) == self.root.state_dir:
                # The lock and the in-flight journal are not state worth restoring.
                filenames = [f for f in filenames if f not in {"deploy.lock", "attempt.json"}]
            for name in [*dirnames, *sorted(filenames)]:
                self._capture_one(Path(dirpath, name), snap, limit)

    def _capture_one(self, path: Path, snap: BackupSnapshot, limit: int) -> None:
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
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                return
            except OSError as exc:
                raise BackupError(f"cannot read {path}: {exc.strerror}",
                                  hint="make it readable by the agent (or move it out of "
                                       "backup_paths)") from None
            size = os.fstat(fd).st_size
            if size > SMALL_FILE and snap.held < limit:
                info.size = size
                snap.entries.append(_Entry(info, fd=fd))
                return
            try:
                assert snap.spool is not None
                offset = snap.spool_size
                os.lseek(snap.spool, offset, os.SEEK_SET)
                info.size = _copy_range(fd, snap.spool, size)
                snap.spool_size += info.size
            finally:
                os.close(fd)
            snap.entries.append(_Entry(info, spooled=offset))
        # sockets, fifos, devices: not data worth keeping

    def _capture_volume(self, key: str, snap: BackupSnapshot) -> None:
        """The volume's files, as Docker's archive API gives them from a container that mounts
        it: a stopped one first (the old release, at the moment it stopped), else any. The
        stream is spooled member by member, never held in memory."""
        if self.engine is None:
            raise BackupError(f"backup_volumes names {key}, but no Docker engine was given")
        found = self._mounting(key)
        if found is None:
            log.warning("backup_volumes: no container of %s mounts volume %s yet; nothing of it "
                        "to archive", self.root.project, key)
            return
        container, target = found
        top = f"{VOLUMES}/{_safe(key)}"
        info = tarfile.TarInfo(top)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        snap.entries.append(_Entry(info))
        assert snap.spool is not None
        stream = io.BufferedReader(_ChunkReader(self.engine.get_archive(container.id, target)), 1 << 20)
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for m in tar:
                rel = m.name.split("/", 1)[1] if "/" in m.name else ""
                if not rel or not (m.isdir() or m.isreg() or m.issym() or m.islnk()):
                    continue  # the mount point itself; sockets, fifos, devices
                m.name = f"{top}/{rel}"
                if m.islnk():
                    m.linkname = f"{top}/{m.linkname.split('/', 1)[1]}"
                if not m.isreg():
                    snap.entries.append(_Entry(m))
                    continue
                offset = snap.spool_size
                os.lseek(snap.spool, offset, os.SEEK_SET)
                src = tar.extractfile(m)
                assert src is not None
                while chunk := src.read(1 << 20):
                    _write_all(snap.spool, chunk)
                snap.spool_size += m.size
                snap.entries.append(_Entry(m, spooled=offset))

    def _mounting(self, key: str) -> tuple[ContainerInfo, str] | None:
        """A container of the project that mounts volume `key`, and where: a stopped one first."""
        assert self.engine is not None
        name = self.engine.compose_volume(self.root.project, key)
        if name is None:
            return None
        found = [(c, dest) for c in self.engine.project_containers(self.root.project)
                 for vol, dest, _ in c.volumes if vol == name]
        found.sort(key=lambda cd: cd[0].running)
        return found[0] if found else None

    # --- write -----------------------------------------------------------------------------
    def _ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)

    def write(self, snap: BackupSnapshot) -> Path:
        """Write the archive to NAME.partial, fsync, rename. On any error nothing is left.

        A large file that shrank since the capture (logrotate's copytruncate, a log reopened
        with "w") is archived as it is now, up to where it ends: its header is rewritten
        with the size copied, and a warning says so. A release is never failed for it."""
        self._ensure_dir()
        final = self.dir / snap.name
        partial = final.with_name(final.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        total = sum(e.info.size for e in snap.entries if e.info.isreg())
        written = 0
        try:
            with track(f"backup {snap.name}") as tracker:
                for e in snap.entries:
                    header_at = os.lseek(fd, 0, os.SEEK_CUR)
                    header = e.info.tobuf(format=tarfile.PAX_FORMAT)
                    _write_all(fd, header)
                    if e.spooled is not None:
                        assert snap.spool is not None
                        _copy_range(snap.spool, fd, e.info.size, src_offset=e.spooled,
                                    on_copied=_advance(tracker, written, total))
                    elif e.fd is not None:
                        copied = _copy_range(e.fd, fd, e.info.size,
                                             on_copied=_advance(tracker, written, total))
                        if copied < e.info.size:
                            self._shrunk(fd, e.info, header, header_at, copied)
                    if e.info.isreg():
                        written += e.info.size
                        tracker.update(written, total)
                        if e.info.size % _BLOCK:
                            _write_all(fd, b"\0" * (_BLOCK - e.info.size % _BLOCK))
                _write_all(fd, b"\0" * (2 * _BLOCK))
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

    @staticmethod
    def _shrunk(fd: int, info: tarfile.TarInfo, header: bytes, header_at: int, copied: int) -> None:
        captured = info.size
        info.size = copied
        again = info.tobuf(format=tarfile.PAX_FORMAT)
        if len(again) == len(header):
            os.pwrite(fd, again, header_at)
        else:  # the header's own length changed (a size past 8 GiB): keep it, pad with zeros
            info.size = captured
            _write_all(fd, b"\0" * (captured - copied))
        log.warning("%s shrank from %d to %d bytes while the backup was written (truncated by "
                    "logrotate's copytruncate, or reopened for writing?); archived %s", info.name,
                    captured, copied, "what was there" if info.size == copied
                    else "what was there, padded with zeros to its captured size")

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

    def path_of(self, name: str) -> Path:
        """The archive called `name` (UsageError when there is none)."""
        if "/" in name or name in {"", ".", ".."}:
            raise UsageError(f"invalid backup name {name!r}", hint="use a name from `backup list`")
        path = self.dir / name
        if not path.is_file():
            raise UsageError(f"no backup named {name!r} in {self.dir}",
                             hint="see `obs-agent backup list`")
        return path

    # --- restore ---------------------------------------------------------------------------
    def restore(self, name: str, before_writing: Callable[[], None] | None = None) -> Path:
        """Extract NAME over DIR (state/ excepted: history stays truthful). A member that would
        land outside DIR refuses the whole archive before anything is written. The current
        files are backed up first, so a restore never loses data either. `before_writing` is
        called once the archive is found sound, before the first file is touched."""
        if not hasattr(tarfile, "data_filter"):
            raise UsageError(
                f"this Python ({sys.version.split()[0]}) has no tarfile extraction filters, which "
                "restore needs to refuse archives that would write outside the agent root",
                hint="run the agent with Python 3.10.12+, 3.11.4+ or 3.12+ (obsdeploy setup --python)")
        path = self.path_of(name)
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
                volumes = archived_volumes(members)
                targets = {key: self._volume_target(key, name) for key in volumes}
                if before_writing is not None:
                    before_writing()
                safety = self.create("pre-restore")
                wanted = [m for m in members if _top(m.name) not in ("state", VOLUMES, DUMPS_DIR)]
                tar.extractall(dest, members=wanted, filter="data")
                for key, (container, target) in targets.items():
                    self._restore_volume(tar, members, key, container, target)
        except tarfile.TarError as exc:
            raise UsageError(f"refusing {name}: not a readable tar archive ({exc})",
                             hint="pick another archive from `backup list`") from None
        log.info("restored %s; the files it replaced are in %s", name, safety.name)
        return safety

    def restores(self, name: str) -> tuple[list[str], list[str]]:
        """What restoring NAME writes: the paths under the root (top-level names) and the
        Docker names of the volumes. Unreadable archives are left to `restore` to refuse."""
        try:
            with tarfile.open(self.path_of(name), "r:") as tar:
                members = tar.getmembers()
        except tarfile.TarError:
            return [], []
        tops = sorted({_top(m.name) for m in members} - {"state", VOLUMES, DUMPS_DIR})
        keys = archived_volumes(members)
        if keys and self.engine is None:
            raise UsageError(f"{name} holds volumes ({', '.join(keys)}), and no Docker engine was given")
        assert self.engine is not None or not keys
        return tops, [self.engine.compose_volume(self.root.project, k) or k for k in keys] if self.engine else []

    def _volume_target(self, key: str, name: str) -> tuple[ContainerInfo, str]:
        if self.engine is None:
            raise UsageError(f"{name} holds volume {key}, and no Docker engine was given to restore it")
        found = self._mounting(key)
        if found is None:
            raise UsageError(f"refusing to restore {name}: it holds volume {key}, which no container "
                             f"of {self.root.project} mounts now (nothing was restored)",
                             hint="deploy (or `docker compose create`) the project first, so a "
                                  "container mounts the volume, then restore again")
        return found

    def _restore_volume(self, tar: tarfile.TarFile, members: list[tarfile.TarInfo], key: str,
                        container: ContainerInfo, target: str) -> None:
        """The archive's volumes/KEY/ files into the volume, through a container that mounts
        it (Docker's archive API: no helper image). Written as a tar spool file first."""
        assert self.engine is not None
        prefix = f"{VOLUMES}/{key}/"
        with tempfile.TemporaryFile(dir=self.dir) as spool:
            with tarfile.open(fileobj=spool, mode="w:", format=tarfile.PAX_FORMAT) as out:
                for m in members:
                    if not m.name.startswith(prefix):
                        continue
                    info = tarfile.TarInfo(m.name[len(prefix):])
                    for attr in ("mode", "mtime", "uid", "gid", "uname", "gname", "type", "size"):
                        setattr(info, attr, getattr(m, attr))
                    if m.issym():
                        info.linkname = m.linkname
                    elif m.islnk():
                        info.linkname = m.linkname[len(prefix):]
                    out.addfile(info, tar.extractfile(m) if m.isreg() else None)
            spool.seek(0)
            self.engine.put_archive(container.id, target, spool)  # type: ignore[arg-type]
        log.info("restored volume %s through %s:%s", key, container.name, target)


def archived_volumes(members: Iterable[tarfile.TarInfo]) -> list[str]:
    """The backup_volumes an archive holds (volumes/NAME/)."""
    return sorted({m.name.split("/")[1] for m in members
                   if _top(m.name) == VOLUMES and m.name.count("/") >= 1 and m.name.split("/")[1]})


def _top(name: str) -> str:
    return name.split("/", 1)[0]


def restore_writers(containers: Iterable[ContainerInfo], root: Path, restored: Iterable[str],
                    volumes: Iterable[str], depends_on: dict[str, set[str]] | None = None
                    ) -> list[ContainerInfo]:
    """The running containers a restore would write under: a writable bind mount of a path
    the archive restores (or of a directory holding one), or a writable mount of a volume it
    restores; then the release containers that depend_on an accessory among them (they use
    its data, and may hold connections to it). Read-only mounts (`:ro`, compose secrets and
    configs) are not written; a container that uses nothing restored (a database beside
    restored config files) is not one of them. Accessories come first: the order to start
    them again in."""
    paths = [str((root / r).resolve()) for r in restored]
    names = set(volumes)

    def under(src: str) -> bool:
        return any(src == p or p.startswith(src.rstrip("/") + "/") or src.startswith(p + "/") for p in paths)

    running = [c for c in containers if c.running]
    writing = [c for c in running if any(under(src) for src in c.written_binds)
               or any(rw and vol in names for vol, _, rw in c.volumes)]
    used = {c.service for c in writing if c.role == "accessory"}
    users = [c for c in running if c not in writing and c.role == "release"
             and (depends_on or {}).get(c.service, set()) & used]
    return sorted(writing + users, key=lambda c: c.role != "accessory")


class _ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks (Docker's archive stream)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self.left:
            try:
                self.left = memoryview(next(self.chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self.left))
        b[:n] = self.left[:n]
        self.left = self.left[n:]
        return n


def archived_dumps(path: Path) -> list[dict[str, object]]:
    """The dumps an archive holds, from its manifest ([] for one without)."""
    import json

    try:
        with tarfile.open(path, "r:") as tar:
            try:
                member = tar.getmember(MANIFEST)
            except KeyError:
                return []
            f = tar.extractfile(member)
            return list(json.load(f)["dumps"]) if f is not None else []
    except (tarfile.TarError, OSError, ValueError, KeyError, TypeError):
        return []


@contextlib.contextmanager
def opened_dump(path: Path, member: str) -> Iterator[IO[bytes]]:
    """One dump of the archive `path`, read in place (a dump of any size streams to its
    restore command without a copy)."""
    with tarfile.open(path, "r:") as tar:
        try:
            source = tar.extractfile(tar.getmember(member))
        except KeyError:
            source = None
        if source is None:
            raise UsageError(f"{path.name} holds no dump {member}",
                             hint=f"see `obs-agent backup list --json` for what {path.name} holds")
        yield source


def _advance(tracker: Tracker, base: int, total: int) -> Callable[[int], None]:
    """A large file's progress, `base` bytes into the archive."""
    return lambda copied: tracker.update(base + copied, total)


def _copy_range(src: int, dst: int, size: int, src_offset: int = 0,
                on_copied: Callable[[int], None] | None = None) -> int:
    """Copy `size` bytes of `src` from `src_offset` to `dst`'s position, in the kernel where
    it can. Returns the bytes copied: fewer when `src` ends sooner (it shrank)."""
    off = 0
    while off < size:
        try:
            # In chunks, so a large file's progress can be shown while it is copied.
            n = os.copy_file_range(src, dst, min(size - off, _CHUNK), src_offset + off)
        except OSError as exc:
            if exc.errno in (18, 38, 95):  # EXDEV, ENOSYS, EOPNOTSUPP: fall back to read/write
                chunk = os.pread(src, min(1 << 20, size - off), src_offset + off)
                _write_all(dst, chunk)
                n = len(chunk)
            else:
                raise
        if n == 0:
            break
        off += n
        if on_copied is not None:
            on_copied(off)
    return off


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in ".-_" else "_" for ch in label)[:80]


