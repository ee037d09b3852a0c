"""Issue 5, case 2: the registry unreachable, answering 5xx (then recovering), slow, stalled.

Each agent root here pulls through its own `FaultProxy` (tests/faults.py) in front of the
session registry, so the test decides what the registry does. A deploy always asks the
registry through it: a pull, or, for an image already here, its manifest digest (pulled when
the registry has another, or does not answer).

Asserted: retries with backoff (SPEC §7.3), then exit 11 with the running release untouched
(serving, last_good_tag, history byte for byte); a registry that recovers within the retries
deploys; a following deploy works once the registry is healthy.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults import (
    DataSnapshot,
    FaultProxy,
    assert_next_deploy_works,
    assert_state_whole,
    proxied_root,
    running_tags,
    serving,
)
from tests.parts import AgentRootDir, Registry, history, no_traceback

pytestmark = pytest.mark.integration

RETRY = re.compile(r"WARNING pull \S+ failed .*; retrying")


@pytest.fixture
def proxied(tmp_path: Path, images: dict[str, str],
            registry: Registry) -> Iterator[tuple[AgentRootDir, FaultProxy]]:
    with proxied_root(tmp_path / "observer", registry.address) as rp:
        res = rp[0].agent("deploy", "v1.0.0")
        assert res.returncode == 0, res.stdout + res.stderr
        yield rp


def assert_untouched(root: AgentRootDir, history_before: bytes, snap: DataSnapshot) -> None:
    assert serving(root) == "v1.0.0" and running_tags(root) == ["v1.0.0"]
    assert root.last_good() == "v1.0.0"
    assert (root.path / "state" / "history.jsonl").read_bytes() == history_before
    assert not (root.path / "state" / "attempt.json").exists()
    assert_state_whole(root)
    snap.assert_intact(root)


def test_unreachable_then_5xx_registry_exits_11_after_backoff(
        proxied: tuple[AgentRootDir, FaultProxy]) -> None:
    root, proxy = proxied
    history_before = (root.path / "state" / "history.jsonl").read_bytes()
    snap = DataSnapshot.take(root)
    for mode in ("refuse", "fail"):
        proxy.set(mode, fail_count=10**6)
        t = time.monotonic()
        res = root.agent("deploy", "v1.1.0")
        took = time.monotonic() - t
        no_traceback(res)
        assert res.returncode == 11, f"{mode}: {res.returncode}\n{res.stdout}{res.stderr}"
        assert "cannot pull" in res.stderr and "v1.1.0" in res.stderr
        # PULL_ATTEMPTS=5: four waits of 0.5, 1, 2, 4 s between them.
        assert len(RETRY.findall(res.stderr)) == 4, res.stderr
        assert took >= 7, f"{mode}: gave up after {took:.1f}s: no backoff"
        if mode == "fail":
            assert "503" in res.stderr
        assert_untouched(root, history_before, snap)
    proxy.set("forward")
    assert_next_deploy_works(root, "v1.1.0")


def test_registry_answering_5xx_then_recovering_is_retried(
        proxied: tuple[AgentRootDir, FaultProxy]) -> None:
    root, proxy = proxied
    snap = DataSnapshot.take(root)
    proxy.set("fail", fail_seconds=1.5)  # every request fails for 1.5 s from the first one
    res = root.agent("deploy", "v1.1.0")
    no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
    assert proxy.failed > 0
    assert RETRY.search(res.stderr), res.stderr
    assert serving(root) == "v1.1.0" and root.last_good() == "v1.1.0"
    assert history(root)[0]["result"] == "success"
    assert_state_whole(root)
    snap.assert_intact(root)


def test_slow_registry_still_deploys(proxied: tuple[AgentRootDir, FaultProxy]) -> None:
    root, proxy = proxied
    proxy.set("slow", delay=0.3)  # every chunk from the registry held back 0.3 s
    res = root.agent("deploy", "v1.1.0")
    no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
    assert serving(root) == "v1.1.0" and root.last_good() == "v1.1.0"
    assert_state_whole(root)


def test_stalled_registry_is_given_up_in_bounded_time(
        proxied: tuple[AgentRootDir, FaultProxy]) -> None:
    """A registry that accepts the connection and never answers. Without a pull timeout the
    agent waits the Docker client's 120 s per attempt, five attempts: ~10 minutes holding the
    deploy lock. With `pull_timeout` (seconds without progress before an attempt is given up,
    env OBS_AGENT_PULL_TIMEOUT) the pull fails with exit 11 in bounded time."""
    root, proxy = proxied
    history_before = (root.path / "state" / "history.jsonl").read_bytes()
    snap = DataSnapshot.take(root)
    proxy.set("stall")
    t = time.monotonic()
    res = root.agent("deploy", "v1.1.0", env=root.env(OBS_AGENT_PULL_TIMEOUT="3"), timeout=120)
    took = time.monotonic() - t
    no_traceback(res)
    assert res.returncode == 11, res.stdout + res.stderr
    assert took < 60, f"a stalled registry held the deploy for {took:.0f}s"
    assert "cannot pull" in res.stderr
    assert_untouched(root, history_before, snap)
    proxy.set("forward")
    assert_next_deploy_works(root, "v1.1.0")


def test_a_present_image_is_still_pulled_with_retries_when_the_registry_fails(
        proxied: tuple[AgentRootDir, FaultProxy]) -> None:
    """v1.0.0 is here (the fixture pulled it through the proxy), so the deploy first asks the
    registry whether it is up to date. A registry answering 5xx to that is no answer: the
    pull runs, with its retries and its exit 11, and nothing changes."""
    root, proxy = proxied
    history_before = (root.path / "state" / "history.jsonl").read_bytes()
    snap = DataSnapshot.take(root)
    proxy.set("fail", fail_count=10**6)
    res = root.agent("deploy", "v1.0.0")
    no_traceback(res)
    assert res.returncode == 11, res.stdout + res.stderr
    assert "cannot pull" in res.stderr and "503" in res.stderr
    assert len(RETRY.findall(res.stderr)) == 4, res.stderr
    assert "is up to date" not in res.stderr
    assert_untouched(root, history_before, snap)
    proxy.set("forward")
    res = root.agent("deploy", "v1.0.0")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "is up to date" in res.stderr, res.stderr
