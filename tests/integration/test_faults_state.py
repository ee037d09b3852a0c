"""Issue 5, cases 5 and 6: two shells at once, and state or configuration files that are
corrupt, truncated or torn. Clear errors or recovery, never a traceback."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.faults import assert_next_deploy_works, assert_state_whole, collect, serving, spawn
from tests.parts import AgentRootDir, history, no_traceback, status

pytestmark = pytest.mark.integration


def deployed(root: AgentRootDir, *tags: str) -> None:
    for tag in tags:
        res = root.agent("deploy", tag)
        assert res.returncode == 0, res.stdout + res.stderr


# --- case 5: concurrent deploy and rollback ------------------------------------------------
def test_concurrent_deploy_and_rollback_exactly_one_runs(agent_root: AgentRootDir) -> None:
    deployed(agent_root, "v1.0.0", "v1.1.0")
    n_before = len(history(agent_root))
    cmds = {"deploy": ("deploy", "v1.2.0"), "rollback": ("rollback",)}
    # two shells at the same moment
    procs = {name: spawn(agent_root, *cmds[name]) for name in ("deploy", "rollback")}
    res = {name: collect(p) for name, p in procs.items()}
    codes = sorted(r.returncode for r in res.values())
    assert codes == [0, 12], {n: (r.returncode, r.stderr[-500:]) for n, r in res.items()}
    winner = next(n for n, r in res.items() if r.returncode == 0)
    loser = next(n for n, r in res.items() if r.returncode == 12)
    msg = res[loser].stderr
    assert "another deploy holds the lock" in msg and f"pid {procs[winner].pid}" in msg, msg
    assert f"({winner} " in msg, msg
    for r in res.values():
        no_traceback(r)
    recs = history(agent_root)
    assert len(recs) == n_before + 1, "the refused command must leave no record"
    assert recs[0]["action"] == winner and recs[0]["result"] == "success"
    assert serving(agent_root) == agent_root.last_good() == recs[0]["tag"]
    assert_state_whole(agent_root)
    assert_next_deploy_works(agent_root, "v1.1.0" if winner == "deploy" else "v1.2.0")


# --- case 6: corrupt state -------------------------------------------------------------------
def test_corrupt_last_good_tag_is_recovered_from_history(agent_root: AgentRootDir) -> None:
    deployed(agent_root, "v1.0.0", "v1.1.0")
    lg = agent_root.path / "state" / "last_good_tag"
    for content in (b"", b"v1.1", b"v1.1.0\x00\x00\x00", b"v1.1.0\nv1.0.0\n",
                    b"\xff\xfe\x00\x01garbage"):  # empty, truncated, padded, doubled, binary
        lg.write_bytes(content)
        st = status(agent_root)  # no traceback, exit 0
        assert st["last_good_tag"] == "v1.1.0" and st["current_tag"] == "v1.1.0", content
    res = agent_root.agent("rollback")  # the good release before v1.1.0
    no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
    assert serving(agent_root) == "v1.0.0"
    assert lg.read_text() == "v1.0.0\n"  # whole again
    assert_state_whole(agent_root)


def test_torn_last_line_of_history(agent_root: AgentRootDir) -> None:
    deployed(agent_root, "v1.0.0", "v1.1.0")
    hist = agent_root.path / "state" / "history.jsonl"
    torn = '{"action": "deploy", "tag": "v1.2.0", "result": "succ'
    with open(hist, "ab") as f:  # a crash in the middle of an append
        f.write(torn.encode())
    assert status(agent_root)["last_action"]["tag"] == "v1.1.0"
    assert [r["tag"] for r in history(agent_root)] == ["v1.1.0", "v1.0.0"]
    res = agent_root.agent("rollback")
    assert res.returncode == 0, res.stdout + res.stderr
    assert serving(agent_root) == "v1.0.0"
    lines = hist.read_bytes().split(b"\n")
    assert lines[-3].endswith(b'"result": "succ'), "the torn line must stay alone on its line"
    assert json.loads(lines[-2])["action"] == "rollback" and lines[-1] == b""
    assert [r["tag"] for r in history(agent_root)] == ["v1.0.0", "v1.1.0", "v1.0.0"]
    assert_state_whole(agent_root, known_torn=frozenset({torn}))


def test_corrupt_history_lines_never_crash(agent_root: AgentRootDir) -> None:
    """Lines a crash or a hand edit can leave: not UTF-8, not an object, an object without
    the keys of a record. Reading skips or tolerates them; nothing raises."""
    deployed(agent_root, "v1.0.0", "v1.1.0")
    hist = agent_root.path / "state" / "history.jsonl"
    good = hist.read_bytes().splitlines(keepends=True)
    junk = [b"\xff\xfe\xfa not utf-8\n", b"[1, 2, 3]\n", b"null\n", b'"text"\n',
            b'{"result": "success"}\n', b"{}\n"]
    hist.write_bytes(good[0] + b"".join(junk) + good[1])
    st = status(agent_root)
    assert st["last_good_tag"] == "v1.1.0"
    recs = history(agent_root)
    assert [r["tag"] for r in recs if r.get("tag")] == ["v1.1.0", "v1.0.0"]
    res = agent_root.agent("history")
    no_traceback(res)
    assert res.returncode == 0
    res = agent_root.agent("rollback")
    no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
    assert serving(agent_root) == "v1.0.0"


def test_torn_journal_is_recorded_as_interrupted(agent_root: AgentRootDir) -> None:
    deployed(agent_root, "v1.0.0")
    (agent_root.path / "state" / "attempt.json").write_bytes(b'{"action": "deploy", "tag": "v1.')
    st = status(agent_root)
    assert st["last_action"]["result"] == "interrupted"
    assert_next_deploy_works(agent_root, "v1.1.0")
    assert [r["result"] for r in history(agent_root)[:2]] == ["success", "interrupted"]
    assert not (agent_root.path / "state" / "attempt.json").exists()


def test_journal_left_after_the_history_record_was_written(agent_root: AgentRootDir) -> None:
    """`kill -9` between appending the history record and removing the journal (state.py
    `finish`): the attempt did finish. `status` and `history` must say so, not report a
    phantom interrupted attempt next to the real record."""
    deployed(agent_root, "v1.0.0")
    last = json.loads((agent_root.path / "state" / "history.jsonl").read_text().splitlines()[-1])
    (agent_root.path / "state" / "attempt.json").write_text(json.dumps({**last, "pid": 1}))
    st = status(agent_root)
    assert st["last_action"]["result"] == "success", st["last_action"]
    assert [r["result"] for r in history(agent_root)] == ["success"]
    assert_next_deploy_works(agent_root, "v1.1.0")
    assert [r["result"] for r in history(agent_root)] == ["success", "success"]


# --- case 6: configuration that is not JSON --------------------------------------------------
CONFIGS = {
    "not-json": b"{ not json",
    "empty": b"",
    "array": b"[1, 2]",
    "agent-not-object": b'{"agent": [1]}',
    "not-utf8": b'{"agent": {"project_name": "\xff\xfe"}}',
    "directory": None,
}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_configuration_that_is_not_json(agent_root: AgentRootDir, kind: str) -> None:
    cfg = agent_root.path / "deployment_config.json"
    cfg.unlink()
    if CONFIGS[kind] is None:
        cfg.mkdir()
    else:
        cfg.write_bytes(CONFIGS[kind])  # type: ignore[arg-type]
    try:
        for args, code in ((("deploy", "v1.0.0"), 10), (("status",), 2), (("backup", "list"), 2)):
            res = agent_root.agent(*args)
            no_traceback(res)
            assert res.returncode == code, f"{args}: {res.returncode}\n{res.stderr}"
            assert "deployment_config.json" in res.stderr, res.stderr
        assert not (agent_root.path / "state" / "history.jsonl").exists()
    finally:
        if cfg.is_dir():
            shutil.rmtree(cfg)


def test_documented_verbose_env_is_not_an_unknown_setting(agent_root: AgentRootDir) -> None:
    """`-v/--verbose` documents env OBS_AGENT_VERBOSE; the settings loader must not refuse it
    as an unknown OBS_AGENT_* setting (the switch operators use while diagnosing a fault)."""
    res = agent_root.agent("check", env=agent_root.env(OBS_AGENT_VERBOSE="1"))
    no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
