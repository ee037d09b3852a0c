"""The one reader of agent.engine: which backend runs this agent root's releases."""

from __future__ import annotations

from typing import Any

from ..engine import Engine
from ..root import AgentRoot
from ..state import ReleaseState
from .base import Backend


def engine_of(root: AgentRoot) -> str:
    """compose or swarm, from the raw setting: `status` reads it without validating."""
    return "swarm" if root.raw_setting("engine") == "swarm" else "compose"


def backend_for(root: AgentRoot, engine: Engine) -> Backend[Any]:
    if engine_of(root) == "swarm":
        from .swarm import SwarmBackend

        return SwarmBackend(root, engine)
    from .compose import ComposeBackend

    return ComposeBackend(root, engine, ReleaseState(root.state_dir))
