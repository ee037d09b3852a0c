"""Backend: what the transaction asks of an engine. Two implementations, compose and swarm;
each owns its own state (held restart policies; Swarm's previous specs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from ..backup import BackupSnapshot
    from ..compose import ComposeConfig
    from ..engine import Engine, ExecResult
    from ..gate.loop import Observer, Verdict
    from ..plan import PreflightReport, RolloutPlan, Step
    from ..root import AgentRoot
    from ..watch import Watched


class PreSwitchFailure(Exception):
    """An accessory or a job failed before any release service was switched (exit 13)."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


@dataclass
class Switched:
    """One step switched to `tag` (None: units of several releases, after a walk back)."""

    step: Step
    tag: str | None
    swap_s: float = 0.0
    start_error: str | None = None  # the switch could not be completed: a failed step
    snapshot: BackupSnapshot | None = None  # captured at the moment the old units stopped
    started_ns: int = 0  # time.time_ns() just before the new units were started

    @property
    def contract(self) -> bool:
        return bool(self.step.contract)


@dataclass(frozen=True)
class Release:
    """A release as the transaction hands it to a backend: its tag, the configuration it is
    created and judged with (a kept one for a rollback), and its compose file resolved."""

    tag: str
    root: AgentRoot
    config: ComposeConfig


S = TypeVar("S", bound=Switched)

# Captures the backup: called by a switch at the moment the step's old units stopped writing.
Capture = Callable[[], "BackupSnapshot"]


@dataclass(frozen=True)
class WalkedBack(Generic[S]):
    """What runs again after a walk back, for the gate of the release it ran before."""

    restored: S | None  # None: nothing to gate
    removed: tuple[str, ...] = ()  # services new in this attempt, removed (nothing came back)


class Backend(Protocol[S]):
    name: str
    engine: Engine

    def preflight(self, report: PreflightReport) -> None:
        """Add this engine's problems to `report`, and adjust its plan to what runs here."""
        ...

    def running_tag(self) -> str | None: ...

    def recover(self, interrupted: dict[str, Any] | None) -> None:
        """Undo what a killed attempt left set aside (from its journal)."""
        ...

    def ensure_images(self, plan: RolloutPlan, release: Release, *, refresh: bool) -> None:
        """The images of `tag` are there (ImageError: exit 11, nothing changed)."""
        ...

    def start_accessories(self, names: list[str], release: Release,
                          gate: Callable[[Observer], Verdict]) -> None:
        """Start the accessories `names` (missing or stopped; what they depend on runs),
        gated by `gate`: PreSwitchFailure, with their log tails, when one does not run."""
        ...

    def run_job(self, job: str, release: Release) -> None:
        """Run one job with `tag` to its end (PreSwitchFailure when it fails)."""
        ...

    def run_in_accessory(self, name: str, argv: tuple[str, ...], *, timeout: float,
                         stdout_fd: int | None = None, stdin: IO[bytes] | None = None) -> ExecResult:
        """Run `argv` in the accessory's running container (its dump or its restore),
        streaming its stdout to `stdout_fd` or its stdin from `stdin`; UsageError when the
        accessory has no running container here."""
        ...

    def run_in_service(self, name: str, argv: tuple[str, ...], *, timeout: float,
                       env: dict[str, str]) -> ExecResult:
        """Run `argv` in the service's newest running container here, with `env` (a hook's
        exec); its output is in the result's tail. UsageError when there is none."""
        ...

    def switch(self, step: Step, release: Release, *, reuse: bool,
               capture: Capture | None) -> S: ...

    def observe(self, sw: S) -> Observer:
        """The gate's view of the units `sw` started."""
        ...

    def cut_over(self, sw: S, weight: int = 100) -> None:
        """Send traffic to the gated units, or `weight` percent of it (a canary's first
        step); ProxyError when the proxy cannot be updated."""
        ...

    def split(self, switched: list[S], weight: int) -> tuple[list[str], list[str]] | None:
        """A canary's next share: `weight` percent (100: all) to the proxied service's new
        units, the rest to its old; the (stable, canary) addresses, or None when there is
        no such split here (ProxyError when the proxy cannot be updated)."""
        ...

    def settle(self, sw: S, *, probation: bool) -> None:
        """The step passed its gate: stop what it replaced (on probation the proxied
        service's old units stand by)."""
        ...

    def watched(self, switched: list[S]) -> Watched:
        """The units the watch keeps an eye on."""
        ...

    def walk_back(self, switched: list[S], failed: S | None, previous: str | None) -> WalkedBack[S]:
        """Every switched step back, in reverse order, to what it ran before the attempt."""
        ...

    def diagnostics(self, failed: list[S], switched: list[S], verdict: Verdict) -> dict[str, Any]:
        """Why the release failed (log tails, health logs, tasks), read before its units go."""
        ...

    def commit(self, switched: list[S], keep_tag: str | None) -> None:
        """The release passed: retire what stood by, keep `keep_tag`'s stopped units."""
        ...

    def walked_back(self) -> None:
        """The walk back passed its gate: drop the failed attempt's leftovers."""
        ...

    def finish(self) -> None:
        """Whatever the outcome: put back what the attempt set aside."""
        ...

    def status(self) -> dict[str, Any]:
        """What runs: current_tag, healthy, services (and what the engine adds: proxy, nodes).
        Read-only, and from unvalidated settings: status works with a broken configuration."""
        ...
