"""Secret values never reach output, logs, history or exceptions (SPEC §8).

One `Redactor` is built from the values of `secret_env` and of every `.env` entry; the runner,
the log handler, history records and error messages all pass text through it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
# Values this short would mask unrelated text ("1", "true") and are not secrets worth the name.
_MIN_LEN = 4


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        self._secrets.update(s for s in secrets if s and len(s) >= _MIN_LEN)
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(self._secrets, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)

    def obj(self, value: object) -> object:
        """Redact every string inside a JSON-like structure."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.obj(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.obj(v) for v in value]
        return value


# The process-wide redactor: settings loading registers secrets here as soon as it reads them.
REDACTOR = Redactor()
