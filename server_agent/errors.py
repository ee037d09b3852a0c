"""One exception hierarchy for both CLIs; each class carries its SPEC §9 exit code.

The CLIs turn any `ObsError` into its message and exit code in one place; anything else is
a bug (exit 1).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    BUG = 1
    USAGE = 2
    PREFLIGHT = 10
    IMAGE = 11
    LOCKED = 12
    JOB_FAILED = 13
    ROLLED_BACK = 20
    ROLLBACK_FAILED = 21
    VERIFY_FAILED = 22
    SSH = 30


class ObsError(Exception):
    exit_code: ExitCode = ExitCode.BUG

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class UsageError(ObsError):
    """Bad input: a version that is not SemVer, an unknown config key, a bad value."""

    exit_code = ExitCode.USAGE


class PreflightError(ObsError):
    exit_code = ExitCode.PREFLIGHT

    def __init__(self, problems: list) -> None:  # list[preflight.Problem]
        self.problems = problems
        lines = "\n".join(f"  - [{p.code}] {p.message}" for p in problems)
        super().__init__(f"preflight failed ({len(problems)} problem(s)); nothing was changed:\n{lines}")


class ImageError(ObsError):
    exit_code = ExitCode.IMAGE


class LockedError(ObsError):
    exit_code = ExitCode.LOCKED


class CommandError(ObsError):
    """An external command failed. Carries the (redacted) command line, exit code and stderr."""

    def __init__(self, argv_display: str, returncode: int, stderr: str) -> None:
        self.argv_display = argv_display
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-5:]
        super().__init__(f"command failed (exit {returncode}): {argv_display}\n" + "\n".join(tail))


class SSHError(ObsError):
    exit_code = ExitCode.SSH
