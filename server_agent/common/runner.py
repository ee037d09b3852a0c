"""The one place that runs external commands.

Every command is logged with `shlex.join` (after redaction) and a failure raises
`CommandError` carrying the command, exit code and stderr. Arguments are always a list:
nothing is ever pasted into a shell string (SPEC §2).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import CommandError
from .redact import REDACTOR

log = logging.getLogger("obs.run")


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    check: bool = True,
    timeout: float | None = None,
    input: str | None = None,
) -> Result:
    shown = REDACTOR(shlex.join(argv))
    log.debug("run: %s", shown)
    try:
        proc = subprocess.run(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
    except FileNotFoundError as exc:
        raise CommandError(shown, 127, f"{argv[0]}: not found ({exc.strerror})") from None
    except subprocess.TimeoutExpired:
        raise CommandError(shown, 124, f"timed out after {timeout}s") from None
    result = Result(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise CommandError(shown, proc.returncode, REDACTOR(proc.stderr or proc.stdout))
    return result
