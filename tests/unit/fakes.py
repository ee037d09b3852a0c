"""Stand-ins the unit tests share (each system's own test module keeps its other fakes)."""

from __future__ import annotations

import json
from typing import Any


class CaddyAdmin:
    """caddy's admin API as Caddy._request sees it: GET /config/ returns a copy of `config`,
    a POST sets the object at its path (caddy's semantics) and is counted in `posts`."""

    def __init__(self) -> None:
        self.config: dict[str, Any] = {"apps": {"http": {"servers": {}}}}
        self.posts: list[str] = []

    def __call__(self, method: str, path: str, body: Any = None) -> Any:  # noqa: ANN401 (JSON)
        if method == "GET":
            return json.loads(json.dumps(self.config))
        self.posts.append(path)
        *keys, last = path.removeprefix("/config/").split("/")
        node = self.config
        for key in keys:
            node = node[key]
        node[last] = body
        return None
