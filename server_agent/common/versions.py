"""Version = git tag = image tag (SPEC §2): SemVer 2.0 with a leading `v`."""

from __future__ import annotations

import re
from typing import Any

from .errors import UsageError

# The official SemVer 2.0 regex, with a mandatory "v" and no build metadata: `+` is not
# allowed in a Docker tag.
_SEMVER = re.compile(
    r"v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?",
    re.ASCII,  # \d must not match other scripts' digits: a Docker tag is ASCII
)
# A Docker tag is at most 128 characters.
MAX_LEN = 128


def validate_version(value: str) -> str:
    """Return `value` if it is a release version, else raise UsageError (exit 2)."""
    if len(value) > MAX_LEN or not _SEMVER.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + f"... ({len(value)} chars)"
        raise UsageError(
            f"invalid version {shown!r}",
            hint="expected vMAJOR.MINOR.PATCH with an optional -PRERELEASE, e.g. v1.2.3 or v1.2.3-rc.1",
        )
    return value


def older_than(a: str, b: str) -> bool:
    """Whether release `a` precedes release `b` by SemVer precedence (v1.2.3-rc.1 < v1.2.3)."""
    import semver

    return bool(semver.Version.parse(a[1:]) < semver.Version.parse(b[1:]))


def version_key(value: str) -> Any:
    """A release's sort key by SemVer precedence (v1.2.3-rc.1 < v1.2.3 < v1.10.0); a value
    that is not a release version is refused (UsageError)."""
    import semver

    return semver.Version.parse(validate_version(value)[1:])
