"""One exception hierarchy for both CLIs; each class carries its exit code.

`ExitCode` is the one list of exit codes: their names in reports (`result_name`), what they
mean (`meaning`, also the `--help` epilog of both CLIs) and which of them leave everything
running as it was (`NOTHING_CHANGED`).

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

    @property
    def result_name(self) -> str:
        """The word a report uses for this outcome (`obsdeploy`'s per-host `result`)."""
        return _RESULT_NAMES[self]

    @property
    def meaning(self) -> str:
        """What the code tells a user, as the CLIs' `--help` and the README list it."""
        return _MEANINGS[self]


_RESULT_NAMES = {
    ExitCode.OK: "ok",
    ExitCode.BUG: "agent_bug",
    ExitCode.USAGE: "usage_error",
    ExitCode.PREFLIGHT: "preflight_failed",
    ExitCode.IMAGE: "image_failed",
    ExitCode.LOCKED: "locked",
    ExitCode.JOB_FAILED: "job_failed",
    ExitCode.ROLLED_BACK: "rolled_back",
    ExitCode.ROLLBACK_FAILED: "failed",
    ExitCode.VERIFY_FAILED: "verify_failed",
    ExitCode.SSH: "ssh_error",
}

_MEANINGS = {
    ExitCode.OK: "done",
    ExitCode.BUG: "unexpected error (a bug)",
    ExitCode.USAGE: "usage or invalid input",
    ExitCode.PREFLIGHT: "preflight failed; nothing changed",
    ExitCode.IMAGE: "image or registry failure; nothing changed",
    ExitCode.LOCKED: "another deploy holds the lock; nothing changed",
    ExitCode.JOB_FAILED: ("a job, an accessory or a pre_switch hook failed before the switch; nothing running "
                          "was switched"),
    ExitCode.ROLLED_BACK: "release failed; rolled back, the previous release is healthy",
    ExitCode.ROLLBACK_FAILED: "release failed; the rollback failed or there was nothing to roll back to",
    ExitCode.VERIFY_FAILED: "verify: the running release fails its checks",
    ExitCode.SSH: "SSH connection or host-key failure (obsdeploy)",
}

# The agent refused or stopped before anything running was switched: what ran before still
# runs (a report's from and to tags are both the running release).
NOTHING_CHANGED = frozenset({ExitCode.USAGE, ExitCode.PREFLIGHT, ExitCode.IMAGE,
                             ExitCode.LOCKED, ExitCode.JOB_FAILED})


def exit_codes_help() -> str:
    """The exit-code list of both CLIs' `--help` (a click epilog; `\\b` keeps its lines)."""
    lines = [f"  {int(code):>2}  {code.meaning}" for code in ExitCode]
    return "Exit codes:\n\n\b\n" + "\n".join(lines)


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
