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


# A URL part this long is a token (a bot token, a webhook key), not a word or a host name.
_TOKEN_LEN = 16


def url_secrets(urls: Iterable[str]) -> list[str]:
    """What to mask of notification URLs (SPEC §16: they hold tokens): each whole URL, its
    password, and every part of its address, path and query long enough to be a token
    (`tgram://BOT_TOKEN/CHAT_ID` keeps the token where a host would be)."""
    from urllib.parse import urlsplit

    out: list[str] = []
    for url in urls:
        out.append(url)
        parts = urlsplit(url)
        password = parts.netloc.rpartition("@")[0].partition(":")[2]
        if password:
            out.append(password)
        words = re.split(r"[/?&=#@:]", f"{parts.netloc}/{parts.path}?{parts.query}")
        out += [w for w in words if len(w) >= _TOKEN_LEN]
    return out


# The process-wide redactor: settings loading registers secrets here as soon as it reads them.
REDACTOR = Redactor()
