"""Fast tests of the agent's pure parts: versions, redaction, settings, builders, health
answers, state files and archives. No daemon needed."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from server_agent.backup import BackupArchive
from server_agent.common.errors import CommandError, LockedError, ObsError, UsageError
from server_agent.common.redact import Redactor
from server_agent.common.versions import validate_version
from server_agent.compose import ComposeConfig, ComposeProject
from server_agent.gate.probe import classify, probe
from server_agent.root import AgentRoot
from server_agent.state import History, ReleaseState, atomic_write


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("OBS_AGENT_"):
            monkeypatch.delenv(k)


@pytest.mark.parametrize("ok", ["v1.2.3", "v0.0.1", "v10.20.30", "v1.2.3-rc.1", "v1.2.3-alpha-2"])
def test_valid_versions(ok: str) -> None:
    assert validate_version(ok) == ok


@pytest.mark.parametrize("bad", ["1.2.3", "v1.2", "v01.2.3", "v1.2.3+build", "v1.2.3;rm -rf /",
                                 "$(id)", "../v1", "v1.2.3\n", "v" + "9" * 10000, ""])
def test_invalid_versions_show_the_expected_form(bad: str) -> None:
    with pytest.raises(UsageError) as exc:
        validate_version(bad)
    assert "vMAJOR.MINOR.PATCH" in str(exc.value)
    assert len(str(exc.value)) < 300  # a 10 000-character tag is not echoed back whole


def test_redactor_masks_longest_first_and_inside_structures() -> None:
    r = Redactor(["abcd1234", "abcd1234-longer", "x"])
    assert r("k=abcd1234-longer and abcd1234, x") == "k=*** and ***, x"
    assert r.obj({"a": ["abcd1234"], "b": 3}) == {"a": ["***"], "b": 3}


def _root(tmp_path: Path, agent: dict | None = None, environment: dict | None = None) -> Path:  # type: ignore[type-arg]
    (tmp_path / "deployment_config.json").write_text(json.dumps(
        {"service": {"x": 1}, "agent": agent or {}, "environment": environment or {}}))
    return tmp_path


def test_settings_precedence_env_over_json_over_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _root(tmp_path, {"health_timeout": 30, "backup_keep": 3})
    assert AgentRoot(root).settings.health_timeout == 30
    assert AgentRoot(root).settings.stabilize_seconds == 2  # default
    monkeypatch.setenv("OBS_AGENT_HEALTH_TIMEOUT", "7")
    monkeypatch.setenv("OBS_AGENT_REQUIRED_ENV", '["A", "B"]')
    s = AgentRoot(root).settings
    assert (s.health_timeout, s.backup_keep, s.required_env) == (7, 3, ["A", "B"])


def test_settings_refuse_unknown_keys_and_bad_values_with_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UsageError, match=r"agent\.verify\.pathz: unknown key"):
        AgentRoot(_root(tmp_path, {"verify": {"pathz": []}})).validate()
    with pytest.raises(UsageError, match=r"agent\.backup_paths: Value error, '\.\./etc'"):
        AgentRoot(_root(tmp_path, {"backup_paths": ["../etc"]})).validate()
    with pytest.raises(UsageError, match=r"agent\.verify\.log_pattern: .*regular expression"):
        AgentRoot(_root(tmp_path, {"verify": {"log_pattern": "(unclosed"}})).validate()
    monkeypatch.setenv("OBS_AGENT_HEALTH_TIMEOT", "3")
    with pytest.raises(UsageError, match="OBS_AGENT_HEALTH_TIMEOT"):
        AgentRoot(_root(tmp_path)).validate()


def test_environment_merge_later_wins_and_secrets_collected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _root(tmp_path, environment={"A": "json", "B": "json", "C": "json"})
    (root / ".env").write_text("export B=dotenv\r\nC=dotenv\r\nKIS_API_KEY='secret-from-env-file'\r\n")
    monkeypatch.setenv("C", "process")
    monkeypatch.setenv("KIS_API_SECRET", "process-secret-value")
    r = AgentRoot(root)
    env = r.merged_env()
    assert (env["A"], env["B"], env["C"]) == ("json", "dotenv", "process")
    assert env["KIS_API_KEY"] == "secret-from-env-file"
    assert set(r.secret_values(r.settings.secret_env)) >= {"secret-from-env-file", "process-secret-value", "dotenv"}
    assert r.compose_env("v1.0.0")["IMAGE_TAG"] == "v1.0.0"


def test_project_name_defaults_to_the_root_base_name(tmp_path: Path) -> None:
    d = tmp_path / "Observer.Prod"
    d.mkdir()
    assert AgentRoot(d).project == "observerprod"


def test_read_only_commands_get_the_project_without_validating(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """status/history load the root unvalidated: the project name comes from the same raw
    value the settings validate (env > JSON > the directory's name), and pydantic is not
    needed for it."""
    r = AgentRoot(_root(tmp_path, {"project_name": "fromjson", "health_timeout": "nonsense"}))
    assert r.project == "fromjson"
    monkeypatch.setenv("OBS_AGENT_PROJECT_NAME", "fromenv")
    r = AgentRoot(tmp_path)
    assert r.project == "fromenv" and r.raw_setting("health_url") is None
    with pytest.raises(UsageError, match="health_timeout"):
        r.validate()


def test_compose_builders_are_plain_argv(tmp_path: Path) -> None:
    p = ComposeProject(tmp_path, tmp_path / "c.yml", "obs")
    argv = p.create_argv({"web": 2, "api": 3}, tmp_path / "o.yml")
    assert argv[-9:] == ["--no-recreate", "--pull", "never", "--scale", "api=3", "--scale", "web=2",
                         "api", "web"]
    assert argv[argv.index("-f", argv.index("-f") + 1) + 1] == str(tmp_path / "o.yml")
    assert ["-p", "obs"] == argv[argv.index("-p"):argv.index("-p") + 2]
    assert p.config_argv()[-3:] == ["config", "--format", "json"]
    assert p.config_argv(interpolate=False)[-1] == "--no-interpolate"
    assert p.up_argv(["kv"])[-7:] == ["up", "--detach", "--no-recreate", "--no-deps", "--pull",
                                      "never", "kv"]
    run = p.run_argv("migrate", "obs-migrate-1", "v1.0.0")
    assert run[run.index("run"):] == ["run", "--rm", "--no-TTY", "--no-deps", "--pull", "never",
                                      "--name", "obs-migrate-1", "--label",
                                      "obsdeploy.release=v1.0.0", "migrate"]


def test_compose_config_model() -> None:
    cfg = ComposeConfig({"services": {"observer": {
        "image": "r/o:v1", "environment": {"A": "1"},
        "volumes": [{"type": "bind", "source": "/x/data", "target": "/app/data"},
                    {"type": "volume", "source": "v", "target": "/v"}],
        "healthcheck": {"test": ["CMD", "true"]}}}})
    svc = cfg.services[0]
    assert (svc.name, svc.image, svc.binds, svc.has_healthcheck) == (
        "observer", "r/o:v1", {"/x/data": "/app/data"}, True)
    assert [s.image for s in cfg.services] == ["r/o:v1"]


def _fake_compose(calls: list[tuple[list[str], dict[str, str]]], fails: Callable[[str], bool]):  # type: ignore[no-untyped-def]
    """A stand-in for runner.run: `compose config` of a project whose observer image and
    VERSION follow IMAGE_TAG, and whose kv accessory is pinned."""
    from server_agent.common.errors import CommandError
    from server_agent.common.runner import Result

    def run(argv: list[str], *, env: dict[str, str], cwd: Path) -> Result:
        calls.append((list(argv), dict(env)))
        tag = env["IMAGE_TAG"]
        if fails(tag):
            raise CommandError(" ".join(argv), 1, f"env file .env.{tag} not found")
        image = "r/o:${IMAGE_TAG}" if "--no-interpolate" in argv else f"r/o:{tag}"
        raw = {"services": {"observer": {"image": image, "environment": {"VERSION": tag},
                                         "labels": {f"built-{tag}": "yes"}},
                            "kv": {"image": "kv:7"}}}
        return Result(tuple(argv), 0, json.dumps(raw), "")
    return run


def test_compose_config_is_one_compose_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One `compose config` per preflight: IMAGE_TAG is a marker in that run, the images
    holding it are the release's, and the tag is put back everywhere, keys too."""
    from server_agent import compose
    from server_agent.plan import role_of

    calls: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(compose, "run", _fake_compose(calls, lambda tag: False))
    cfg = ComposeProject(tmp_path, tmp_path / "c.yml", "obs").config({"IMAGE_TAG": "v1.2.3", "A": "1"})
    assert len(calls) == 1 and "--no-interpolate" not in calls[0][0]
    assert calls[0][1]["A"] == "1" and calls[0][1]["IMAGE_TAG"] != "v1.2.3"
    assert cfg.raw == {"services": {"observer": {"image": "r/o:v1.2.3",
                                                 "environment": {"VERSION": "v1.2.3"},
                                                 "labels": {"built-v1.2.3": "yes"}},
                                    "kv": {"image": "kv:7"}}}
    assert {s.name: role_of(s) for s in cfg.services} == {"observer": "release", "kv": "accessory"}
    assert cfg.service("observer").image_template == "r/o:${IMAGE_TAG}"


def test_compose_config_falls_back_to_two_runs_when_the_marker_cannot_stand_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A project compose cannot resolve with the marker (an env_file named after the tag) is
    resolved with the tag itself and --no-interpolate, as before."""
    from server_agent import compose

    calls: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(compose, "run", _fake_compose(calls, lambda tag: tag != "v1.2.3"))
    cfg = ComposeProject(tmp_path, tmp_path / "c.yml", "obs").config({"IMAGE_TAG": "v1.2.3"})
    assert [c[1]["IMAGE_TAG"] == "v1.2.3" for c in calls] == [False, True, True]
    assert ["--no-interpolate" in c[0] for c in calls] == [False, False, True]
    assert cfg.service("observer").image == "r/o:v1.2.3"
    assert cfg.service("observer").image_template == "r/o:${IMAGE_TAG}"
    # and a project that is invalid with the tag too reports compose's error, as before
    calls.clear()
    monkeypatch.setattr(compose, "run", _fake_compose(calls, lambda tag: True))
    with pytest.raises(CommandError, match="v1.2.3"):
        ComposeProject(tmp_path, tmp_path / "c.yml", "obs").config({"IMAGE_TAG": "v1.2.3"})


def test_compose_command_is_the_plugin_run_directly(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The compose plugin the docker CLI would run, run without the docker CLI in front;
    $DOCKER_CONFIG/cli-plugins first, as the CLI searches."""
    from server_agent import compose

    plugin = tmp_path / "cli-plugins" / "docker-compose"
    plugin.parent.mkdir()
    plugin.write_text("#!/bin/sh\n")
    plugin.chmod(0o755)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setattr(compose, "_PLUGIN_DIRS", ())
    monkeypatch.setattr(compose.shutil, "which",
                        lambda name: "/usr/bin/docker" if name == "docker" else None)
    compose.compose_command.cache_clear()
    try:
        assert compose.compose_command() == (str(plugin),)
        plugin.chmod(0o644)  # not executable: not a plugin the CLI would run
        compose.compose_command.cache_clear()
        with pytest.raises(ObsError, match="compose v2 not found"):
            compose.compose_command()
    finally:
        compose.compose_command.cache_clear()


@pytest.mark.parametrize(("status", "body", "degraded", "kind"), [
    (200, b'{"status":"healthy"}', False, "pass"),
    (200, b'{"status":"initializing"}', False, "wait"),
    (200, b'{"status":"starting"}', False, "wait"),
    (200, b'{"status":"degraded"}', False, "fail"),
    (200, b'{"status":"degraded"}', True, "pass"),
    (200, b'{"status":"shutting_down"}', False, "fail"),
    (200, b"OK", False, "pass"),
    (503, b'{"status":"healthy"}', False, "fail"),
    # Still starting keeps the gate waiting whatever the HTTP status (the example observer
    # answers 503 while initializing); shutting down fails.
    (503, b'{"status":"initializing"}', False, "wait"),
    (503, b'{"status":"starting"}', False, "wait"),
    (503, b'{"status":"shutting_down"}', False, "fail"),
    (500, b"", False, "fail"),
])
def test_health_answers(status: int, body: bytes, degraded: bool, kind: str) -> None:
    assert classify(status, body, degraded).kind == kind


@pytest.fixture(scope="module")
def health_server():  # type: ignore[no-untyped-def]
    """A real HTTP server on loopback: /ok, /starting, /error (503), /moved (302 to /ok)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            answers = {"/ok?x=1": (200, b'{"status":"healthy"}'), "/ok": (200, b'{"status":"healthy"}'),
                       "/starting": (200, b'{"status":"starting"}'), "/error": (503, b"down")}
            code, body = answers.get(self.path, (302, b""))
            self.send_response(code)
            if code == 302:
                self.send_header("Location", "/ok")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize(("path", "kind", "detail"), [
    ("/ok", "pass", "HTTP 200 status=healthy"),
    ("/ok?x=1", "pass", "HTTP 200 status=healthy"),  # the query string reaches the service
    ("/starting", "wait", "HTTP 200 status=starting"),
    ("/error", "fail", "HTTP 503"),
    ("/moved", "fail", "HTTP 302"),  # a redirect is not followed: the service answers itself
])
def test_probe_asks_the_url_itself(health_server: str, path: str, kind: str, detail: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy set for the agent's other traffic is not asked: it cannot see the local service.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")
    answer = probe(health_server + path, allow_degraded=False)
    assert (answer.kind, answer.detail) == (kind, detail)


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/health", "http://127.0.0.1:99999/health",
                                 "http://[::1/health"])
def test_probe_without_an_answer_is_down(url: str) -> None:
    answer = probe(url, allow_degraded=False)
    assert answer.kind == "down" and answer.detail.startswith("no answer"), answer


def test_atomic_write_and_corrupt_last_good_recovers_from_history(tmp_path: Path) -> None:
    st = ReleaseState(tmp_path)
    st.history.append({"action": "deploy", "tag": "v1.0.0", "result": "success"})
    st.set_last_good_tag("v1.0.0")
    assert st.last_good_tag() == "v1.0.0"
    atomic_write(st.last_good_path, "v1.0.")  # as if truncated
    assert st.last_good_tag() == "v1.0.0"
    assert not list(tmp_path.glob(".last_good_tag.tmp*"))


def test_history_skips_a_torn_last_line_and_appends_after_it(tmp_path: Path) -> None:
    h = History(tmp_path / "history.jsonl")
    h.append({"tag": "v1.0.0", "result": "success"})
    with open(h.path, "a") as f:
        f.write('{"tag": "v1.1.0", "res')  # killed mid-write
    h.append({"tag": "v1.2.0", "result": "success"})
    assert [r["tag"] for r in h.records()] == ["v1.0.0", "v1.2.0"]


def test_lock_is_exclusive_and_names_the_holder(tmp_path: Path) -> None:
    st = ReleaseState(tmp_path)
    with st.lock.hold("deploy", "v1.0.0"):
        assert st.lock.is_held()
        with pytest.raises(LockedError, match=rf"pid {os.getpid()} \(deploy v1.0.0\) since"):
            with st.lock.hold("rollback", "v0.9.0"):
                pass
    assert not st.lock.is_held()


def test_lock_refused_before_the_holder_wrote_its_line_still_names_it(tmp_path: Path) -> None:
    """The race of two deploys started together: the loser's flock fails between the winner's
    flock and its line. A free lock names nobody, so the loser waits for the line."""
    import fcntl
    import threading

    st = ReleaseState(tmp_path)
    with st.lock.hold("deploy", "v0.1.0"):
        pass
    assert st.lock.path.read_bytes() == b""  # released: no stale holder left behind
    fd = os.open(st.lock.path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the winner, its line not yet written
        line = json.dumps({"pid": os.getpid(), "action": "deploy", "tag": "v1.2.0", "since": "t"})
        threading.Timer(0.2, os.pwrite, (fd, line.encode(), 0)).start()
        with pytest.raises(LockedError, match=rf"pid {os.getpid()} \(deploy v1.2.0\)"):
            with st.lock.hold("rollback", "v1.1.0"):
                pass
    finally:
        os.close(fd)


def test_lock_line_of_a_killed_holder_names_nobody(tmp_path: Path) -> None:
    import fcntl
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    st = ReleaseState(tmp_path)
    st.lock.path.write_text(json.dumps({"pid": int(dead.stdout), "action": "deploy",
                                        "tag": "v9.9.9", "since": "t"}))
    fd = os.open(st.lock.path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live holder that wrote nothing
        with pytest.raises(LockedError, match="holds the lock: another process"):
            with st.lock.hold("rollback", "v1.1.0"):
                pass
    finally:
        os.close(fd)


def test_interrupted_attempt_becomes_history(tmp_path: Path) -> None:
    st = ReleaseState(tmp_path)
    st.begin({"action": "deploy", "tag": "v2.0.0", "from_tag": "v1.0.0", "started_at": "t0", "pid": 1})
    rec = st.recover_interrupted()
    assert rec is not None and rec["result"] == "interrupted" and "pid" not in rec
    assert st.pending() is None
    assert st.history.records()[-1]["result"] == "interrupted"


def test_journal_bookkeeping_is_never_shown_or_recorded(tmp_path: Path) -> None:
    st = ReleaseState(tmp_path)
    held = {"abc123": {"Name": "unless-stopped"}}
    st.begin({"action": "deploy", "tag": "v2.0.0", "from_tag": "v1.0.0", "started_at": "t0",
              "pid": 1, "held_restarts": held})
    shown = st.interrupted()
    assert shown is not None and shown["result"] == "interrupted"
    assert "pid" not in shown and "held_restarts" not in shown
    rec = st.recover_interrupted()
    assert rec is not None and rec["held_restarts"] == held  # for the next run to put back
    assert "held_restarts" not in st.history.records()[-1]


def test_backup_captures_then_writes_a_tar_with_exact_sizes(tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "config" / "observer").mkdir(parents=True)
    big = root / "config" / "observer" / "observer.jsonl"
    big.write_bytes(b'{"n":1}\n' * 100_000)  # > SMALL_FILE: copied from a held descriptor
    (root / "logs").mkdir()
    (root / "logs" / "app.log").write_text("hello\n")
    os.symlink("observer/observer.jsonl", root / "config" / "latest")
    ar = BackupArchive(AgentRoot(root))
    snap = ar.capture("t")
    size = big.stat().st_size
    with open(big, "ab") as f:
        f.write(b'{"n":2}\n' * 10)  # written after the capture: not in the archive
    path = ar.write(snap)
    assert path.stat().st_mode & 0o777 == 0o600
    with tarfile.open(path) as tar:
        member = tar.getmember("config/observer/observer.jsonl")
        assert member.size == size
        assert tar.getmember("config/latest").issym()
        data = tar.extractfile(member)
        assert data is not None and data.read() == b'{"n":1}\n' * 100_000


def test_backup_write_failure_leaves_no_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _root(tmp_path)
    (root / "config").mkdir()
    (root / "config" / "f").write_bytes(b"x" * 300_000)
    ar = BackupArchive(AgentRoot(root))
    snap = ar.capture("t")

    def no_space(*_a: object, **_k: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "copy_file_range", no_space)
    with pytest.raises(OSError):
        ar.write(snap)
    assert list((root / "backups").iterdir()) == []


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    root = _root(tmp_path, {"backup_keep": 2})
    ar = BackupArchive(AgentRoot(root))
    (root / "backups").mkdir()
    for i in range(4):
        (root / "backups" / f"backup-2026010{i}T000000Z-x.tar").write_bytes(b"")
    (root / "backups" / "backup-20260109T000000Z-x.tar.partial").write_bytes(b"")
    ar.prune()
    assert sorted(p.name for p in (root / "backups").iterdir()) == [
        "backup-20260102T000000Z-x.tar", "backup-20260103T000000Z-x.tar"]


def test_restore_refuses_a_member_outside_before_writing_anything(tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "backups").mkdir()
    with tarfile.open(root / "backups" / "evil.tar", "w") as tar:
        for name in ("config/ok.txt", "config/../../evil.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(UsageError, match="would land outside"):
        BackupArchive(AgentRoot(root)).restore("evil.tar")
    assert not (root / "config").exists()
    with pytest.raises(UsageError, match="invalid backup name"):
        BackupArchive(AgentRoot(root)).restore("../evil.tar")


@pytest.mark.parametrize("ref, expected", [
    ("img", ("img", "latest")),
    ("img:v1.2.3", ("img", "v1.2.3")),
    ("127.0.0.1:5000/obs/img", ("127.0.0.1:5000/obs/img", "latest")),
    ("127.0.0.1:5000/obs/img:v1", ("127.0.0.1:5000/obs/img", "v1")),
    ("ghcr.io/o/img@sha256:" + "a" * 64, ("ghcr.io/o/img", "sha256:" + "a" * 64)),
    ("127.0.0.1:5000/img:v1@sha256:" + "b" * 64, ("127.0.0.1:5000/img", "sha256:" + "b" * 64)),
])
def test_pull_reference_splits_tags_digests_and_registry_ports(ref: str, expected: tuple[str, str]) -> None:
    from server_agent.engine import pull_reference

    assert pull_reference(ref) == expected


def test_release_line_walks_back_through_rollbacks(tmp_path: Path) -> None:
    state = ReleaseState(tmp_path / "state")
    state.ensure()

    def rec(action: str, tag: str, result: str = "success") -> None:
        state.history.append({"action": action, "tag": tag, "result": result})

    for t in ("v1", "v2", "v3"):
        rec("deploy", t)
    rec("deploy", "v4", "rolled_back")  # failed attempts are not part of the line
    assert state.release_line() == ["v1", "v2", "v3"]
    rec("rollback", "v2")
    assert state.release_line() == ["v1", "v2"]
    rec("rollback", "v1")
    assert state.release_line() == ["v1"]
    rec("deploy", "v3")
    assert state.release_line() == ["v1", "v3"]
    rec("rollback", "v9")  # a rollback to a release not in the line puts it on top
    assert state.release_line() == ["v1", "v3", "v9"]


def test_backup_archives_a_file_that_shrank_while_written(tmp_path: Path) -> None:
    """logrotate's copytruncate between the capture and the write: what is there is archived,
    and the archive stays whole (the member after it reads back right)."""
    root = _root(tmp_path)
    (root / "logs").mkdir()
    big = root / "logs" / "a.log"
    big.write_bytes(b"x" * 600_000)
    (root / "logs" / "b.txt").write_text("after\n")
    ar = BackupArchive(AgentRoot(root))
    snap = ar.capture("t")
    with open(big, "r+b") as f:  # copytruncate: the content moved away, the file emptied...
        f.truncate(0)
    big.write_bytes(b"y" * 1000)  # ...and the writer goes on
    path = ar.write(snap)
    with tarfile.open(path) as tar:
        member = tar.getmember("logs/a.log")
        assert member.size == 1000
        assert tar.extractfile(member).read() == b"y" * 1000  # type: ignore[union-attr]
        assert tar.extractfile("logs/b.txt").read() == b"after\n"  # type: ignore[union-attr]


def test_backup_of_thousands_of_large_files_holds_few_open_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2000 'large' files (SMALL_FILE lowered to 1 KiB for speed) under an open-file limit of
    256: a capture that held one descriptor per large file failed with EMFILE."""
    import resource

    import server_agent.backup as backup

    monkeypatch.setattr(backup, "SMALL_FILE", 1024)
    root = _root(tmp_path)
    logs = root / "logs"
    for d in range(20):
        (logs / f"d{d}").mkdir(parents=True)
        for i in range(100):
            (logs / f"d{d}" / f"f{i}.log").write_bytes(f"{d}-{i}\n".encode() * 400)  # ~3 KiB
    ar = BackupArchive(AgentRoot(root))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        snap = ar.capture("t")
        assert snap.held <= 64
        path = ar.write(snap)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with tarfile.open(path) as tar:
        names = {m.name for m in tar.getmembers() if m.isreg()}
        assert len([n for n in names if n.startswith("logs/")]) == 2000
        assert tar.extractfile("logs/d19/f99.log").read() == b"19-99\n" * 400  # type: ignore[union-attr]


def test_backup_capture_memory_stays_flat(tmp_path: Path) -> None:
    """300 small files of 200 KiB (60 MB): the capture copies them into a spool file, it does
    not hold them in memory until the archive is written."""
    import tracemalloc

    root = _root(tmp_path)
    (root / "config").mkdir()
    for i in range(300):
        (root / "config" / f"c{i}.json").write_bytes(bytes([i % 256]) * 200 * 1024)
    ar = BackupArchive(AgentRoot(root))
    tracemalloc.start()
    try:
        snap = ar.capture("t")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, peak
    path = ar.write(snap)
    with tarfile.open(path) as tar:
        assert tar.extractfile("config/c299.json").read() == bytes([299 % 256]) * 200 * 1024  # type: ignore[union-attr]
