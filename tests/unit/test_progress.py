"""Progress of long work (issue 15): off a terminal, a plain line every few seconds."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from server_agent.common import progress
from server_agent.common.progress import LayerTally, Tracker


def test_a_line_per_interval_and_none_for_short_work(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    lines: list[str] = []
    t = Tracker("pull x:v1", "bytes", every=5, emit=lines.append)
    t.update(1_000_000, 4_000_000)
    assert lines == []  # nothing before the first interval
    now[0] += 5
    t.update(2_000_000, 4_000_000, "1/3 layers")
    now[0] += 1
    t.update(3_000_000)  # within the interval: no line
    assert lines == ["pull x:v1: 2.0 MB of 4.0 MB (50%), 1/3 layers, 5 s"]
    t.finish()
    assert lines[-1] == "pull x:v1: done, 3.0 MB of 4.0 MB in 6.0 s"
    quiet: list[str] = []
    short = Tracker("pull y", "bytes", every=5, emit=quiet.append)
    short.update(10, 10)
    short.finish()
    assert quiet == []  # a short pull stays as quiet as before


def test_layer_tally_adds_up_a_pull_stream() -> None:
    tally = LayerTally()
    for event in [
        {"status": "Pulling from obs/observer", "id": "v1.0.0"},
        {"status": "Pulling fs layer", "id": "aaa"},
        {"status": "Already exists", "id": "bbb"},
        {"status": "Downloading", "progressDetail": {"current": 500, "total": 2000}, "id": "aaa"},
    ]:
        tally.add(event)
    assert (tally.done, tally.total, tally.detail()) == (500, 2000, "1/2 layers")
    tally.add({"status": "Download complete", "id": "aaa"})
    tally.add({"status": "Extracting", "progressDetail": {"current": 10, "total": 99}, "id": "aaa"})
    tally.add({"status": "Pull complete", "id": "aaa"})
    assert (tally.done, tally.total, tally.detail()) == (2000, 2000, "2/2 layers")
    push = LayerTally()
    push.add({"status": "Pushing", "progressDetail": {"current": 7, "total": 70}, "id": "ccc"})
    push.add({"status": "Pushed", "id": "ccc"})
    push.add({"status": "v1.0.0: digest: sha256:00 size: 528"})
    assert (push.done, push.detail()) == (70, "1/1 layers")


def test_a_large_backup_reports_its_progress(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    from server_agent.backup import BackupArchive
    from server_agent.root import AgentRoot

    (tmp_path / "config").mkdir()
    (tmp_path / "deployment_config.json").write_text(json.dumps({"agent": {}}))
    big = tmp_path / "config" / "archive.jsonl"
    with open(big, "wb") as f:  # 300 MB, sparse: the copy is real, the disk is spared
        f.truncate(300 * 1024 * 1024)
    progress.configure(every=0.001, interactive=False)
    try:
        with caplog.at_level(logging.INFO, logger="obs.progress"):
            archive = BackupArchive(AgentRoot(tmp_path)).create("test")
    finally:
        progress.configure()
    lines = [r.getMessage() for r in caplog.records if r.name == "obs.progress"]
    assert len(lines) >= 3, lines  # the 64 MiB chunks of the large file, then the end
    assert all(line.startswith(f"backup {archive.name}: ") for line in lines), lines
    assert lines[-1].startswith(f"backup {archive.name}: done, 314.6 MB of 314.6 MB"), lines
    assert os.path.getsize(archive) > 300 * 1024 * 1024


def test_on_a_terminal_a_rich_bar_and_stdout_untouched(tmp_path: Path) -> None:
    """stderr on a pseudo-terminal: rich draws the bar there; no plain progress lines; stdout
    (a pipe) holds only the command's answer."""
    import pty
    import subprocess
    import sys

    (tmp_path / "config").mkdir()
    (tmp_path / "deployment_config.json").write_text(
        json.dumps({"agent": {"progress_seconds": 0.01}}))
    with open(tmp_path / "config" / "archive.jsonl", "wb") as f:
        f.truncate(300 * 1024 * 1024)  # sparse: quick to make
    master, slave = pty.openpty()
    agent = Path(sys.executable).parent / "obs-agent"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBS_AGENT_")}
    proc = subprocess.Popen([str(agent), "--root", str(tmp_path), "backup", "create"],
                            stdout=subprocess.PIPE, stderr=slave, text=True,
                            env={**env, "TERM": "xterm-256color", "COLUMNS": "120"})
    os.close(slave)
    screen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    out = proc.communicate(timeout=120)[0]
    os.close(master)
    text = screen.decode(errors="replace")
    assert proc.returncode == 0, text
    assert out.strip().startswith("backup-") and out.count("\n") == 1, out
    assert "━" in text and "backup backup-" in text, text  # the bar, with its description
    assert "INFO backup backup-" not in text, text  # no plain lines on a terminal
