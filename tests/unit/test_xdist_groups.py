"""The suite's xdist groups hold (tests/conftest.py): every test of a group runs on one worker.

The swarm lab's tests take its nodes down, and a second lab per worker costs its start-up:
they must share one worker. The grouping rests on xdist's `--dist loadgroup`, which a pytest
upgrade once broke without a word (every group spread over the workers), and on the conftest
marking its items before xdist reads the marks. This runs a small session on two real
workers with the conftest's own collection hook and asks where each test ran."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.parts import REPO

CONFTEST = '''
import json, os
import pytest
from tests.conftest import pytest_collection_modifyitems  # noqa: F401 (the hook under test)

@pytest.fixture(scope="session")
def lab():
    return None

@pytest.fixture(params=["compose", pytest.param("swarm", marks=pytest.mark.xdist_group("swarm-lab"))])
def backend(request):
    return request.param

@pytest.fixture(autouse=True)
def where(request):
    yield
    with open(os.environ["WHERE"], "a") as f:
        f.write(json.dumps([request.node.nodeid, os.environ["PYTEST_XDIST_WORKER"]]) + "\\n")
'''

TESTS = '''
import time
import pytest

@pytest.mark.parametrize("i", range(6))
def test_uses_the_lab(lab, i):
    time.sleep(0.05)

@pytest.mark.parametrize("i", range(6))
def test_independent(i):
    time.sleep(0.05)

def test_either_backend(backend):
    time.sleep(0.05)

@pytest.mark.xdist_group("nonroot-user")
@pytest.mark.parametrize("i", range(4))
def test_in_a_static_group(i):
    time.sleep(0.05)
'''


def test_each_group_runs_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_groups.py").write_text(TESTS)
    where = tmp_path / "where.jsonl"
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
         "--dist", "loadgroup", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "WHERE": str(where)},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ran = [json.loads(line) for line in where.read_text().splitlines()]
    assert len(ran) == 18, ran

    def workers(prefix: str) -> set[str]:
        return {w for nodeid, w in ran if nodeid.split("::")[1].startswith(prefix)}

    # Two workers really ran: the independent tests are spread over both.
    assert workers("test_independent") == {"gw0", "gw1"}, ran
    # The lab's tests (marked by the conftest) and the swarm side of a backend-parametrized
    # test (marked on the fixture's param) share one worker.
    lab = workers("test_uses_the_lab") | workers("test_either_backend[swarm]")
    assert len(lab) == 1, ran
    assert len(workers("test_in_a_static_group")) == 1, ran
