"""The crash-safety suite's hook: `OBS_AGENT_DIE_AT=NAME` kills the agent at checkpoint NAME."""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger("obs.checkpoint")

DIE_AT_ENV = "OBS_AGENT_DIE_AT"


def checkpoint(step: str) -> None:
    if os.environ.get(DIE_AT_ENV) == step:
        log.warning("%s=%s: killing myself", DIE_AT_ENV, step)
        os.kill(os.getpid(), signal.SIGKILL)
