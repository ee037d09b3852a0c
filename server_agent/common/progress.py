"""Progress of long work: a pull, the writing of a large backup, a build and a push.

A minute of silence looks like a hang. On a terminal a `rich` bar shows the work as it goes;
anywhere else (a GitHub Actions log, `obsdeploy` streaming the agent's stderr over SSH with
the host's name in front) a plain line every `every` seconds says how far it is, through the
`obs.progress` logger (so it is redacted and timestamped like every other line). Work that
ends before the first interval prints nothing: short pulls stay as quiet as before. All of it
goes to stderr; stdout stays for `--json`.

`configure()` is called once by a CLI; code doing the work only calls `track()`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("obs.progress")

DEFAULT_EVERY = 5.0


@dataclass
class _Config:
    every: float = DEFAULT_EVERY
    interactive: bool | None = None  # None: stderr is a terminal


_config = _Config()
_live = threading.Lock()  # held while a rich bar is on the terminal


def configure(*, every: float | None = None, interactive: bool | None = None) -> None:
    if every is not None:
        _config.every = every
    _config.interactive = interactive


def _interactive() -> bool:
    if _config.interactive is not None:
        return _config.interactive
    return sys.stderr.isatty()


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class Tracker:
    """One piece of work. `update(done, total, detail)`; `line()` is what a plain line says."""

    def __init__(self, what: str, unit: str, every: float,
                 emit: Callable[[str], None] | None = None) -> None:
        self.what, self.unit, self.every = what, unit, every
        self.done = 0
        self.total: int | None = None
        self.detail = ""
        self.started = time.monotonic()
        self._next = self.started + every
        self.lines = 0
        self._emit = emit or (lambda text: log.info("%s", text))
        self._lock = threading.Lock()

    def update(self, done: int, total: int | None = None, detail: str = "") -> None:
        with self._lock:
            self.done, self.detail = done, detail
            if total is not None:
                self.total = total
            now = time.monotonic()
            if now >= self._next:
                self._next = now + self.every
                self.lines += 1
                self._emit(self.line())

    def amount(self) -> str:
        if self.unit == "bytes":
            return mb(self.done) + (f" of {mb(self.total)}" if self.total else "")
        return f"{self.unit} {self.done}" + (f"/{self.total}" if self.total else "")

    def line(self) -> str:
        pct = f" ({100 * self.done // self.total}%)" if self.total and self.unit == "bytes" else ""
        detail = f", {self.detail}" if self.detail else ""
        return f"{self.what}: {self.amount()}{pct}{detail}, {time.monotonic() - self.started:.0f} s"

    def finish(self) -> None:
        """A closing line, only when progress lines were shown (the work was long)."""
        if self.lines:
            self._emit(f"{self.what}: done, {self.amount()} in "
                       f"{time.monotonic() - self.started:.1f} s")


class _RichTracker(Tracker):
    def __init__(self, what: str, unit: str, bar: Any) -> None:
        super().__init__(what, unit, every=float("inf"))
        self.bar = bar
        self.task = bar.add_task(what, total=None)

    def update(self, done: int, total: int | None = None, detail: str = "") -> None:
        super().update(done, total, detail)
        self.bar.update(self.task, completed=done, total=self.total,
                        description=f"{self.what} {detail}".rstrip())


@contextmanager
def track(what: str, unit: str = "bytes") -> Iterator[Tracker]:
    """Follow one piece of work: a rich bar on a terminal, else a line every few seconds.
    rich allows one live display at a time: work that overlaps another (a backup written
    while a rollback pulls) gets plain lines."""
    if not _interactive() or not _live.acquire(blocking=False):
        tracker = Tracker(what, unit, _config.every)
        yield tracker
        tracker.finish()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    amount = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), amount, TimeElapsedColumn(),
                      console=Console(stderr=True), transient=True) as bar:
            yield _RichTracker(what, unit, bar)
    finally:
        _live.release()


@dataclass
class LayerTally:
    """Adds up the engine's pull or push stream (`{"id": layer, "status": ..., "progressDetail":
    {"current", "total"}}`) into layers done and bytes moved."""

    bytes_done: dict[str, int] = field(default_factory=dict)
    bytes_total: dict[str, int] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    layers: set[str] = field(default_factory=set)

    DONE = ("Pull complete", "Already exists", "Pushed", "Layer already exists", "Mounted from")
    MOVING = ("Downloading", "Pushing")

    def add(self, event: Mapping[str, Any]) -> None:
        layer, status = event.get("id"), str(event.get("status") or "")
        if not layer or status.startswith("Pulling from"):  # that one's id is the tag
            return
        self.layers.add(layer)
        detail = event.get("progressDetail") or {}
        if status.startswith(self.MOVING) and detail.get("total"):
            self.bytes_total[layer] = int(detail["total"])
            self.bytes_done[layer] = int(detail.get("current") or 0)
        elif status.startswith(("Download complete", *self.DONE)) and layer in self.bytes_total:
            self.bytes_done[layer] = self.bytes_total[layer]
        if status.startswith(self.DONE):
            self.finished.add(layer)

    @property
    def done(self) -> int:
        return sum(self.bytes_done.values())

    @property
    def total(self) -> int | None:
        return sum(self.bytes_total.values()) or None

    def detail(self) -> str:
        return f"{len(self.finished)}/{len(self.layers)} layers"

    def feed(self, tracker: Tracker) -> Callable[[Mapping[str, Any]], None]:
        """A callback for the stream's events that keeps `tracker` up to date."""
        def on_event(event: Mapping[str, Any]) -> None:
            self.add(event)
            tracker.update(self.done, self.total, self.detail())
        return on_event
