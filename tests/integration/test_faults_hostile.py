"""Issue 5, cases 7 and 8: hostile input, and the secret scan.

Covered elsewhere and not repeated: hostile tags for `deploy` (test_agent_deploy.py), archives
with absolute / `..` / symlink / hardlink members (test_agent_state.py). Here: the same tags
through `rollback` and `check --tag`, tags that look like versions but are not ASCII, the
archive attacks those tests do not try, host names with shell metacharacters, a `.env` with
CRLF line ends and `export` prefixes, and secrets provoked into error messages and logs.

The secret scan itself runs after every test of the suite: each agent root's teardown
(`agent_root` fixture, `tests.faults.close_root`, `proxied_root`) asserts that no value of
parts.SECRETS appears in any agent output of the session or in any file under the root
(state, history, agent log, backups and the archives' contents), .env excepted.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from tests.faults import collect, serving, spawn
from tests.parts import SECRETS, VENV_BIN, AgentRootDir, history, no_traceback

pytestmark = pytest.mark.integration

HOSTILE_TAGS = ["v1.2.3;rm -rf /", "$(id)", "`id`", "../v1", "v" + "1" * 10000,  # deploy: covered
                "v1.2.3/../../x", "v1.2.3\n", " v1.2.3", "v1.2.3 && id", "v1.2.3-" + "a" * 10000,
                "v1\u0661.0.0", "v\uff11.2.3", "v1.2.3-rc\u0662"]  # digits that are not ASCII
NEW_FOR_DEPLOY = HOSTILE_TAGS[5:]


def test_hostile_tags_are_refused_by_every_command(agent_root: AgentRootDir) -> None:
    cmds = [("rollback", t) for t in HOSTILE_TAGS] + [("check", "--tag", t) for t in HOSTILE_TAGS]
    cmds += [("deploy", t) for t in NEW_FOR_DEPLOY]
    runs = [(args, spawn(agent_root, *args)) for args in cmds]
    for args, proc in runs:
        res = collect(proc)
        no_traceback(res)
        assert res.returncode == 2, f"{args[:-1]} {args[-1][:30]!r}: exit {res.returncode}\n{res.stderr[-600:]}"
        assert "vMAJOR.MINOR.PATCH" in res.stderr
        assert len(res.stderr) < 2000, "the message must not echo a huge tag"
    assert not (agent_root.path / "state" / "history.jsonl").exists()
    assert not (agent_root.path / "state" / "attempt.json").exists()


# --- backup archives -------------------------------------------------------------------------
def _archive(path: Path, members: list[tarfile.TarInfo]) -> None:
    with tarfile.open(path, "w") as tar:
        for m in members:
            data = b"evil" if m.isreg() else None
            if data is not None:
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data) if data is not None else None)


def _member(name: str, **kw: object) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(m, k, v)
    return m


def test_restore_refuses_more_archive_attacks(agent_root: AgentRootDir, tmp_path: Path) -> None:
    outside = tmp_path / f"outside-{uuid.uuid4().hex[:6]}"
    outside.mkdir()
    (agent_root.path / "config").mkdir()
    (agent_root.path / "config" / "planted").symlink_to(outside)  # a link already on disk
    attacks = {
        # a relative link that escapes, then a file written through it
        "link-then-write": [_member("config/up", type=tarfile.SYMTYPE, linkname="../.."),
                            _member("config/up/escaped.txt")],
        # a file written through a symlink that is already in the root
        "through-planted-link": [_member("config/planted/escaped.txt")],
        # a device node
        "device": [_member("config/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3)],
        # a hard link to a file outside, by an absolute name
        "absolute-hardlink": [_member("config/pw", type=tarfile.LNKTYPE, linkname="/etc/passwd")],
    }
    backups = agent_root.path / "backups"
    backups.mkdir()
    for kind, members in attacks.items():
        name = f"backup-{kind}.tar"
        _archive(backups / name, [_member("config/fine.txt"), *members])
        res = agent_root.agent("backup", "restore", name)
        no_traceback(res)
        assert res.returncode == 2, f"{kind}: exit {res.returncode}\n{res.stdout}{res.stderr}"
        assert f"refusing {name}" in res.stderr, res.stderr
        assert not (agent_root.path / "config" / "fine.txt").exists(), kind
        assert list(outside.iterdir()) == [], kind
        assert not (agent_root.path.parent / "escaped.txt").exists(), kind
    for name in ("../../etc/passwd", "/etc/passwd", "..", "backup-x.tar/../../x"):
        res = agent_root.agent("backup", "restore", name)
        no_traceback(res)
        assert res.returncode == 2, f"{name!r}: {res.stderr}"


@pytest.mark.parametrize("kind", ["not-a-tar", "truncated"])
def test_restore_of_a_damaged_archive_is_a_clear_error(agent_root: AgentRootDir, kind: str) -> None:
    cfg = agent_root.path / "config"
    cfg.mkdir()
    (cfg / "app.yaml").write_text("mode: A\n")
    res = agent_root.agent("backup", "create")
    assert res.returncode == 0, res.stderr
    good = agent_root.path / "backups" / res.stdout.strip()
    damaged = agent_root.path / "backups" / "backup-damaged.tar"
    data = good.read_bytes()
    damaged.write_bytes(b"this is not a tar archive\n" * 100 if kind == "not-a-tar"
                        else data[: len(data) // 2 + 100])
    (cfg / "app.yaml").write_text("mode: B\n")
    res = agent_root.agent("backup", "restore", damaged.name)
    no_traceback(res)
    # Bad input, not a bug of the agent: exit 2 (SPEC §9), with the archive named.
    assert res.returncode == 2, f"exit {res.returncode}: {res.stderr}"
    assert damaged.name in res.stderr
    assert (cfg / "app.yaml").read_text() == "mode: B\n"  # nothing half-restored


# --- host names --------------------------------------------------------------------------------
HOSTILE_HOSTS = ["h;touch {m}", "$(touch {m})", "`touch {m}`", "h && touch {m}", "h|touch {m}",
                 "h\ntouch {m}", "-oProxyCommand=touch {m}", "root@h;touch {m}:22",
                 "h:22;touch {m}", "[::1;touch {m}]:22"]


def test_host_names_with_shell_metacharacters_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for host in HOSTILE_HOSTS:
        spec = host.format(m=marker)
        for args, env in (((f"--host={spec}",), {}), ((), {"OBSDEPLOY_HOSTS": f"good-host,{spec}"})):
            res = subprocess.run(
                [str(VENV_BIN / "obsdeploy"), "deploy", "v1.0.0", *args,
                 "--known-hosts", os.devnull],
                capture_output=True, text=True, timeout=60, cwd=tmp_path,
                env={**os.environ, **env},
            )
            no_traceback(res)
            assert res.returncode == 2, f"{spec!r}: exit {res.returncode}\n{res.stdout}{res.stderr}"
            assert "invalid host" in res.stderr, res.stderr
            assert not marker.exists(), f"{spec!r} ran a command"


# --- .env --------------------------------------------------------------------------------------
def test_env_file_with_crlf_and_export_prefixes(agent_root: AgentRootDir) -> None:
    env_file = agent_root.path / ".env"
    env_file.write_bytes(
        b"# written on Windows\r\n"
        + f"export KIS_API_KEY={SECRETS['KIS_API_KEY']}\r\n".encode()
        + f'export KIS_API_SECRET="{SECRETS["KIS_API_SECRET"]}"\r\n'.encode()
        + b"export EXTRA_NOTE='$(touch /tmp/obs-dotenv-pwned)'\r\n"
    )
    env_file.chmod(0o600)
    res = agent_root.agent("check", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    res = agent_root.agent("deploy", "v1.0.0")
    no_traceback(res)
    assert res.returncode == 0, res.stdout + res.stderr
    assert serving(agent_root) == "v1.0.0"
    cid = subprocess.run(["docker", "ps", "-q", "--filter",
                          f"label=com.docker.compose.project={agent_root.project}"],
                         capture_output=True, text=True).stdout.split()[0]
    env = json.loads(subprocess.run(["docker", "inspect", cid], capture_output=True,
                                    text=True).stdout)[0]["Config"]["Env"]
    # The container gets the values themselves: no \r, no quotes, no "export".
    assert f"KIS_API_KEY={SECRETS['KIS_API_KEY']}" in env
    assert f"KIS_API_SECRET={SECRETS['KIS_API_SECRET']}" in env
    assert not os.path.exists("/tmp/obs-dotenv-pwned")


# --- secrets provoked into errors and logs -----------------------------------------------------
def test_secret_in_a_compose_error_is_masked(agent_root: AgentRootDir) -> None:
    compose = agent_root.path / "docker-compose.server.yml"
    compose.write_text(compose.read_text().replace('"127.0.0.1:', '"${KIS_API_KEY}:127.0.0.1:', 1))
    for args in (("check", "--json"), ("deploy", "v1.0.0")):
        res = agent_root.agent(*args)
        no_traceback(res)
        assert res.returncode == 10, res.stdout + res.stderr
        out = res.stdout + res.stderr
        assert "compose.invalid" in out
        assert not any(v in out for v in SECRETS.values()), out


def test_secret_printed_by_a_failing_release_is_masked_in_history(agent_root: AgentRootDir) -> None:
    compose = agent_root.path / "docker-compose.server.yml"
    compose.write_text(compose.read_text().replace(
        "    restart: unless-stopped\n",
        '    restart: unless-stopped\n    entrypoint: ["/bin/sh", "-c", '
        '"echo key=$$KIS_API_KEY secret=$$KIS_API_SECRET; exit 3"]\n'))
    res = agent_root.agent("deploy", "v1.0.0")
    no_traceback(res)
    assert res.returncode == 21, res.stdout + res.stderr
    rec = history(agent_root)[0]
    tail = "".join(rec["failure"]["log_tail"].values())
    assert "key=*** secret=***" in tail, tail
    raw = (agent_root.path / "state" / "history.jsonl").read_text()
    assert not any(v in raw for v in SECRETS.values())


def test_secret_in_an_archive_member_name_is_masked(agent_root: AgentRootDir) -> None:
    backups = agent_root.path / "backups"
    backups.mkdir()
    crafted = backups / "backup-named.tar"
    _archive(crafted, [_member(f"../{SECRETS['KIS_API_SECRET']}.txt")])
    res = agent_root.agent("backup", "restore", crafted.name)
    crafted.unlink()  # it holds the value itself: keep it out of the root's secret scan
    assert res.returncode == 2
    assert "***" in res.stderr and SECRETS["KIS_API_SECRET"] not in res.stderr, res.stderr
