"""Hooks: the operator's actions at fixed moments of an attempt (the seed's trading pause).

    HookPlan     the four lists of agent.hooks as values, planned once per attempt
    HookContext  what an action is told: action, tag, from_tag, result (None until known)
    run_hook     the one runner: each action of a list in order, each outcome a HookRun

An action is an HTTP request (2xx: success; the body is the context as JSON), a command in a
running container of the project (docker exec), or a command on the host; exit 0 is success.
What an action is shown as, what it answered and every error pass through the redactor: a
hook's URL may hold a token, and its output may print a secret.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .common.redact import REDACTOR
from .settings import HOOK_NAMES

if TYPE_CHECKING:
    from .backends.base import Backend
    from .settings import HooksSettings

log = logging.getLogger("obs.hooks")

# What a failed action's record keeps of its answer or output: the end, where errors are.
DETAIL_CHARS = 500


@dataclass(frozen=True)
class HookContext:
    action: str  # deploy | rollback
    tag: str
    from_tag: str | None
    result: str | None = None  # success | rolled_back | failed, once known

    def env(self) -> dict[str, str]:
        return {"OBSDEPLOY_ACTION": self.action, "OBSDEPLOY_TAG": self.tag,
                "OBSDEPLOY_FROM_TAG": self.from_tag or "", "OBSDEPLOY_RESULT": self.result or ""}

    def body(self) -> dict[str, Any]:
        return {"action": self.action, "tag": self.tag, "from_tag": self.from_tag, "result": self.result}


@dataclass(frozen=True)
class HookAction:
    """One action as planned: its kind and what it runs."""

    kind: str  # http | exec | command
    timeout: float
    url: str = ""
    method: str = "POST"
    service: str = ""
    argv: tuple[str, ...] = ()

    @property
    def shown(self) -> str:
        """How output and history name it (redacted: never a token or a secret)."""
        import shlex

        if self.kind == "http":
            return REDACTOR(f"{self.method} {self.url}")
        if self.kind == "exec":
            return REDACTOR(f"exec in {self.service}: {shlex.join(self.argv)}")
        return REDACTOR(shlex.join(self.argv))


@dataclass(frozen=True)
class HookRun:
    """How one action went."""

    hook: str
    action: str  # HookAction.shown
    ok: bool
    detail: str  # "HTTP 204", "exit 0", or what went wrong and the output's end
    seconds: float

    def record(self) -> dict[str, Any]:
        return {"hook": self.hook, "action": self.action, "result": "ok" if self.ok else "failed",
                "detail": self.detail, "duration_s": self.seconds}


@dataclass(frozen=True)
class HookPlan:
    pre_switch: tuple[HookAction, ...] = ()
    post_switch: tuple[HookAction, ...] = ()
    post_deploy: tuple[HookAction, ...] = ()
    on_rollback: tuple[HookAction, ...] = ()

    @classmethod
    def of(cls, settings: HooksSettings) -> HookPlan:
        def planned(actions: list[Any]) -> tuple[HookAction, ...]:
            out = []
            for a in actions:
                if hasattr(a, "http"):
                    out.append(HookAction("http", a.timeout, url=a.http, method=a.method))
                elif hasattr(a, "exec"):
                    out.append(HookAction("exec", a.timeout, service=a.exec.service, argv=tuple(a.exec.argv)))
                else:
                    out.append(HookAction("command", a.timeout, argv=tuple(a.command)))
            return tuple(out)

        return cls(**{name: planned(getattr(settings, name)) for name in HOOK_NAMES})

    def actions(self, hook: str) -> tuple[HookAction, ...]:
        return tuple(getattr(self, hook))


def run_hook(plan: HookPlan, hook: str, ctx: HookContext, backend: Backend[Any]) -> list[HookRun]:
    """Each action of `hook` in order. pre_switch stops at its first failure (the attempt
    stops there); the others run every action, whatever the ones before did."""
    runs: list[HookRun] = []
    for action in plan.actions(hook):
        t = time.monotonic()
        try:
            ok, detail = _run(action, ctx, backend)
        except Exception as exc:  # a hook never crashes the attempt: its failure is recorded
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        run = HookRun(hook, action.shown, ok, REDACTOR(detail)[-DETAIL_CHARS:], round(time.monotonic() - t, 3))
        runs.append(run)
        (log.info if ok else log.warning)("hook %s: %s: %s (%.2fs)", hook, run.action,
                                          run.detail, run.seconds)
        if not ok and hook == "pre_switch":
            break
    return runs


def _run(action: HookAction, ctx: HookContext, backend: Backend[Any]) -> tuple[bool, str]:
    if action.kind == "http":
        return _http(action, ctx)
    if action.kind == "exec":
        res = backend.run_in_service(action.service, action.argv, timeout=action.timeout, env=ctx.env())
        if res.exit_code is None:
            return False, f"did not finish within {action.timeout:g}s; output: {res.stderr_tail.strip()}"
        if res.exit_code != 0:
            return False, f"exit {res.exit_code}; output: {res.stderr_tail.strip()}"
        return True, "exit 0"
    from .common.runner import run

    out = run(action.argv, env={**os.environ, **ctx.env()}, timeout=action.timeout, check=False)
    if out.returncode != 0:
        return False, f"exit {out.returncode}; output: {(out.stdout + out.stderr).strip()}"
    return True, "exit 0"


def _http(action: HookAction, ctx: HookContext) -> tuple[bool, str]:
    import requests  # the docker SDK's HTTP client (a dependency of docker and apprise)

    with requests.Session() as session:
        session.trust_env = False  # a hook asks its own host, never through an environment proxy
        try:
            resp = session.request(action.method, action.url, json=ctx.body(), timeout=action.timeout,
                                   headers={k.replace("_", "-").title(): v for k, v in ctx.env().items()})
        except requests.RequestException as exc:
            # requests names the URL in its errors: the caller redacts the detail.
            return False, f"no answer: {type(exc).__name__}: {exc}"
    if 200 <= resp.status_code < 300:
        return True, f"HTTP {resp.status_code}"
    return False, f"HTTP {resp.status_code}: {resp.text.strip()}"
