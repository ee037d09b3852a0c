"""GateCriteria: what a release must show to pass its gate, built once from its settings.

One value holds every criterion of the success criteria (health, health_url, verify.paths,
verify.log_pattern, verify.container_env, stabilize_seconds within health_timeout), so both
backends judge by the same rules: a criterion exists here once, never in a backend.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import AgentSettings


@dataclass(frozen=True)
class GateCriteria:
    timeout: float
    stabilize: float
    health_url: str | None
    allow_degraded: bool
    root: Path  # the agent root: verify.paths are under it
    verify_paths: tuple[str, ...]
    log_pattern: re.Pattern[str] | None
    container_env: tuple[str, ...]  # set inside every contract unit

    @classmethod
    def of(cls, settings: AgentSettings, root: Path) -> GateCriteria:
        env = settings.verify.container_env
        return cls(
            timeout=settings.health_timeout,
            stabilize=settings.stabilize_seconds,
            health_url=settings.health_url,
            allow_degraded=settings.allow_degraded,
            root=root,
            verify_paths=tuple(settings.verify.paths),
            log_pattern=re.compile(settings.verify.log_pattern) if settings.verify.log_pattern else None,
            container_env=tuple(settings.required_env if env is None else env),
        )

    def for_step(self, *, contract: bool) -> GateCriteria:
        """What applies to a step: health_url always (it is how the release says it works,
        whether or not a service carries the path contract; the backend's observer says
        where it is asked, the proxied service at its own address); verify and the
        container environment where it switches a contract service."""
        return replace(
            self,
            verify_paths=self.verify_paths if contract else (),
            log_pattern=self.log_pattern if contract else None,
            container_env=self.container_env if contract else (),
        )

    def for_accessories(self) -> GateCriteria:
        """An accessory is started, not judged by health_url: running (and healthy where it
        has a healthcheck) for stabilize_seconds is enough; one that exits meanwhile fails
        the attempt."""
        return replace(self.for_step(contract=False), health_url=None)

    def without_stabilize(self) -> GateCriteria:
        return replace(self, stabilize=0.0)
