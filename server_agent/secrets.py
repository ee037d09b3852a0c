"""Secrets from CI and from the host's secret stores.

- `parse_secret_lines`: what `deploy|rollback --secrets-stdin` reads, `NAME=VALUE` lines.
- `updated_dotenv`: the text of `.env` with some entries set, every other line kept as it was,
  in its place (the agent root writes it, atomically, once preflight passed).
- `AgeSource`, `CommandSource` (`agent.secret_sources`) and `read_sources`: more places a value
  may come from; every value read is registered with the redactor before anything can show it.

Pure functions and models only (no agent root): `settings` and `root` build on them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from .common.errors import UsageError
from .common.redact import REDACTOR

# A variable name as compose and the shell take it.
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Values written bare into .env: nothing python-dotenv or compose would interpolate, strip or
# treat as a comment.
_BARE = re.compile(r"[A-Za-z0-9_./:@+,=%-]*")
_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=")


def parse_secret_lines(text: str, *, where: str) -> dict[str, str]:
    """`NAME=VALUE` lines (blank lines ignored). A bad line is named by its number, never
    shown: it may hold a value."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not NAME.fullmatch(name):
            raise UsageError(f"{where}: line {n} is not NAME=VALUE")
        if not value:
            raise UsageError(f"{where}: {name} is empty")
        out[name] = value
    REDACTOR.add(out.values())
    return out


def check_dotenv_safe(values: dict[str, str], *, where: str) -> None:
    """A value .env cannot hold as it is: `${` (python-dotenv and compose expand it in any
    quoting), a line break or NUL."""
    bad = [k for k, v in values.items() if "${" in v or any(c in v for c in "\r\n\0")]
    if bad:
        raise UsageError(f"{where}: {', '.join(bad)} hold(s) '${{', a line break or NUL, which "
                         ".env cannot keep as given",
                         hint="rotate the secret to a value without them")


def _quoted(value: str) -> str:
    if _BARE.fullmatch(value):
        return value
    # Single quotes: python-dotenv (and compose) take the value literally, no interpolation;
    # python-dotenv undoes exactly these two escapes.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def updated_dotenv(current: str, values: dict[str, str]) -> str:
    """`current` with each of `values` set: an existing assignment's line is replaced where it
    stands (every one of them, so no older duplicate wins), new names are appended in order."""
    lines = current.splitlines()
    seen: set[str] = set()
    for i, line in enumerate(lines):
        m = _ASSIGNMENT.match(line)
        if m and m.group("name") in values:
            name = m.group("name")
            lines[i] = f"{name}={_quoted(values[name])}"
            seen.add(name)
    lines += [f"{k}={_quoted(v)}" for k, v in values.items() if k not in seen]
    return "\n".join(lines) + "\n"


# --- agent.secret_sources ----------------------------------------------------------------------
class AgeSource(BaseModel):
    """An age-encrypted file of KEY=VALUE lines, decrypted on the host with Debian's `age`."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["age"] = Field(description="`age`.")
    file: str = Field(description="The encrypted file; a relative path is relative to the agent "
                                  "root.")
    identity: str = Field(description="The age identity (private key) file; it must be mode "
                                      "0600.")
    timeout: float = Field(30, gt=0, description="Seconds `age` may take.")

    @property
    def label(self) -> str:
        return f"age source {self.file}"


class CommandSource(BaseModel):
    """A command on the host that prints KEY=VALUE lines (a secret manager's CLI)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["command"] = Field(description="`command`.")
    argv: list[str] = Field(min_length=1, description="The command and its arguments, run in the "
                                                      "agent root, no shell.")
    timeout: float = Field(30, gt=0, description="Seconds it may take.")

    @property
    def label(self) -> str:
        return f"command source {self.argv[0]}"


SecretSource = Annotated[AgeSource | CommandSource, Field(discriminator="kind")]


@dataclass
class SourcedEnv:
    """What the sources gave, and why some gave nothing (preflight problems)."""

    values: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def read_sources(sources: Sequence[AgeSource | CommandSource], root: Path,
                 env: dict[str, str]) -> SourcedEnv:
    """Each source in order (a later one wins for a name both give)."""
    out = SourcedEnv()
    for source in sources:
        try:
            out.values.update(_read_one(source, root, env))
        except UsageError as exc:
            out.problems.append(f"{source.label}: {exc}")
    return out


def _read_one(source: AgeSource | CommandSource, root: Path, env: dict[str, str]) -> dict[str, str]:
    import stat

    from .common.errors import CommandError
    from .common.runner import run

    if isinstance(source, AgeSource):
        identity = Path(source.identity) if Path(source.identity).is_absolute() else root / source.identity
        encrypted = root / source.file
        for path in (identity, encrypted):
            if not path.is_file():
                raise UsageError(f"{path} does not exist")
        mode = stat.S_IMODE(identity.stat().st_mode)
        if mode & 0o077:
            raise UsageError(f"identity {identity} has mode {mode:04o}; it must be 0600 "
                             f"(chmod 600 {identity})")
        argv = ["age", "--decrypt", "--identity", str(identity), str(encrypted)]
    else:
        argv = list(source.argv)
    try:
        res = run(argv, env=env, cwd=root, check=False, timeout=source.timeout)
    except CommandError as exc:  # not found, or timed out
        raise UsageError(exc.stderr) from None
    # Parse what it printed first, so its stderr is shown with those values masked.
    try:
        values = parse_secret_lines(res.stdout, where="its output") if res.returncode == 0 else {}
    finally:
        if res.returncode != 0:
            _mask_lines(res.stdout.splitlines())
    if res.returncode != 0:
        tail = " ".join(REDACTOR(res.stderr).strip().splitlines()[-3:])
        raise UsageError(f"exit {res.returncode}" + (f": {tail}" if tail else ""))
    return values


def _mask_lines(lines: Iterable[str]) -> None:
    """A failed source's partial output may still hold values: mask them anyway."""
    REDACTOR.add(line.partition("=")[2] for line in lines if "=" in line)
