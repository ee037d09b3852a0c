"""`obsdeploy release` of a project of several images (`images_from` a compose file, and
`[[images]]`), against a real registry with authentication and a bare git remote: each image
built and pushed with its context digest, unchanged ones reused by a manifest put, the git
tag only when every image is in, re-runs that finish the job."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.integration.obsdeploy_fixtures import (  # noqa: F401 (fixtures)
    REG_PASSWORD,
    REG_USER,
    AppRepo,
    app_repo,
    auth_registry,
)
from tests.integration.test_obsdeploy_release import LABEL, annotated_tag_commit, registry_image

pytestmark = pytest.mark.integration

CREDS = {"GHCR_USERNAME": REG_USER, "GHCR_TOKEN": REG_PASSWORD}
CONTEXT_LABEL = "dev.obsdeploy.context-digest"
NAMES = ("api", "worker", "web")


@pytest.fixture(autouse=True)
def _remove_images(auth_registry, docker_client):  # type: ignore[no-untyped-def]  # noqa: F811
    """The images built and pulled here: every one of this test's own registry."""
    yield
    for img in docker_client.images.list():
        if any(t.startswith(auth_registry.address + "/") for t in img.tags + (img.attrs.get("RepoDigests") or [])):
            subprocess.run(["docker", "rmi", "-f", img.id], capture_output=True)


def make_project(repo: AppRepo, *, worker_from: str = "scratch") -> dict[str, str]:
    """Three services with a build: section and an image of ${IMAGE_TAG}, an accessory, and a
    service built for local use only; obsdeploy.toml reads them from compose.yaml."""
    base = repo.image.rsplit("/", 1)[0]
    images = {n: f"{base}/{n}" for n in NAMES}
    for n in NAMES:
        (repo.path / n).mkdir()
        (repo.path / n / f"{n}.txt").write_text(f"{n} 1\n")
        (repo.path / n / ".dockerignore").write_text("*.log\n")
        (repo.path / n / "Dockerfile").write_text(
            f"FROM {worker_from if n == 'worker' else 'scratch'}\nCOPY {n}.txt /\n")
    (repo.path / "compose.yaml").write_text(
        "services:\n"
        f"  api: {{image: '{images['api']}:${{IMAGE_TAG}}', build: api}}\n"
        f"  worker: {{image: '{images['worker']}:${{IMAGE_TAG}}', build: {{context: worker, args: {{MODE: jobs}}}}}}\n"
        f"  web: {{image: '{images['web']}:${{IMAGE_TAG}}', build: {{context: web, dockerfile: Dockerfile}}}}\n"
        "  kv: {image: 'redis:7'}\n"
        "  tool: {build: api}\n")
    (repo.path / "obsdeploy.toml").write_text(
        'images_from = "compose.yaml"\nsource = "https://github.com/acme/observer"\n')
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "three images")
    return images


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in report["images"]}


def steps_of(report: dict[str, Any], image: str) -> dict[str, str]:
    return {s["name"]: s["state"] for s in report["steps"] if s["image"] == image}


def test_three_images_released_then_one_changed_reuses_the_two_others(
        app_repo: AppRepo, docker_client) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    images = make_project(app_repo)
    first_head = app_repo.head()
    res = app_repo.release("v1.0.0", "--json", **CREDS)
    assert res.returncode == 0, res.stdout + res.stderr
    assert REG_PASSWORD not in res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["image"] is None and sorted(by_name(report)) == sorted(NAMES)
    digests = {}
    for n in NAMES:
        img = by_name(report)[n]
        assert img["reference"] == f"{images[n]}:v1.0.0" and img["action"] == "build"
        assert steps_of(report, n) == {"build": "done", "push": "done"}
        digest, labels = registry_image(docker_client, app_repo, "v1.0.0", image=images[n])
        assert img["digest"] == digest
        assert labels[LABEL + "revision"] == first_head and labels[LABEL + "version"] == "v1.0.0"
        assert labels[CONTEXT_LABEL] == img["context_digest"]
        assert f"[{n}] Step 1/7 : FROM" in res.stderr  # progress per image
        digests[n] = digest
    assert annotated_tag_commit(app_repo, "v1.0.0", remote=True) == first_head

    # A log file (ignored by .dockerignore) and a change of the worker only.
    (app_repo.path / "api" / "debug.log").write_text("noise\n")
    (app_repo.path / ".gitignore").write_text("build/\n*.log\n")  # outside every context
    (app_repo.path / "worker" / "worker.txt").write_text("worker 2\n")
    app_repo.git("add", "-A")
    app_repo.git("commit", "-q", "-m", "a new worker")
    dry = app_repo.release("v1.1.0", "--dry-run", "--json", **CREDS)
    assert dry.returncode == 0, dry.stderr
    planned = by_name(json.loads(dry.stdout))
    assert {n: (i["action"], i["copy_from"]) for n, i in planned.items()} == {
        "api": ("reuse", "v1.0.0"), "worker": ("build", None), "web": ("reuse", "v1.0.0")}
    assert "would be reused from v1.0.0" not in dry.stdout  # --json: the text goes to stderr
    assert "api" in dry.stderr and "reused from v1.0.0" in dry.stderr
    assert registry_image(docker_client, app_repo, "v1.1.0", image=images["api"]) is None

    res = app_repo.release("v1.1.0", "--json", **CREDS)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    for n in ("api", "web"):
        img = by_name(report)[n]
        assert (img["action"], img["reused_from"]) == ("reuse", "v1.0.0")
        assert steps_of(report, n) == {"reuse": "done"}  # no build step at all
        assert f"-> build: build {images[n]}" not in res.stderr
        assert img["digest"] == digests[n]
        assert registry_image(docker_client, app_repo, "v1.1.0", image=images[n])[0] == digests[n]
    worker = by_name(report)["worker"]
    assert worker["action"] == "build" and worker["digest"] != digests["worker"]
    assert steps_of(report, "worker") == {"build": "done", "push": "done"}
    assert "reused from v1.0.0" in res.stderr
    assert annotated_tag_commit(app_repo, "v1.1.0", remote=True) == app_repo.head()

    again = app_repo.release("v1.1.0", "--json", **CREDS)
    assert again.returncode == 0, again.stderr
    assert {s["state"] for s in json.loads(again.stdout)["steps"]} == {"done", "already-done"}
    assert {s["name"] for s in json.loads(again.stdout)["steps"] if s["state"] == "done"} == {"login"}


def test_a_failed_build_leaves_no_tag_and_a_rerun_finishes(
        app_repo: AppRepo, docker_client) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """The worker builds FROM a base image of the registry that is not there yet: its build
    fails, the two others are pushed, no git tag anywhere (exit 11). Once the base is pushed,
    the same command finishes: only the worker is built."""
    base = f"{app_repo.image.rsplit('/', 1)[0]}/base:1"
    images = make_project(app_repo, worker_from=base)
    res = app_repo.release("v1.0.0", "--parallel", "1", "--json", **CREDS)
    assert res.returncode == 11, res.stdout + res.stderr
    assert "build of" in res.stderr and images["worker"] in res.stderr
    assert annotated_tag_commit(app_repo, "v1.0.0", remote=False) is None
    assert annotated_tag_commit(app_repo, "v1.0.0", remote=True) is None
    assert registry_image(docker_client, app_repo, "v1.0.0", image=images["worker"]) is None
    for n in ("api", "web"):
        assert registry_image(docker_client, app_repo, "v1.0.0", image=images[n]) is not None

    auth = {"username": REG_USER, "password": REG_PASSWORD}
    import io

    docker_client.images.build(fileobj=io.BytesIO(b"FROM scratch\nLABEL base=1\n"), tag=base, rm=True)
    try:
        for line in docker_client.api.push(base, stream=True, decode=True, auth_config=auth):
            assert "error" not in line, line
        rerun = app_repo.release("v1.0.0", "--json", **CREDS)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        report = json.loads(rerun.stdout)
        assert steps_of(report, "worker") == {"build": "done", "push": "done"}
        for n in ("api", "web"):
            assert steps_of(report, n) == {"build": "already-done", "push": "already-done"}
        assert annotated_tag_commit(app_repo, "v1.0.0", remote=True) == app_repo.head()
    finally:
        subprocess.run(["docker", "rmi", "-f", base], capture_output=True)


def test_images_listed_in_obsdeploy_toml_with_a_target(
        app_repo: AppRepo, docker_client) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    base = app_repo.image.rsplit("/", 1)[0]
    (app_repo.path / "svc").mkdir()
    (app_repo.path / "svc" / "a.txt").write_text("a\n")
    (app_repo.path / "svc" / "Dockerfile").write_text(
        "FROM scratch AS dev\nCOPY a.txt /dev.txt\nFROM scratch AS prod\nCOPY a.txt /prod.txt\n")
    (app_repo.path / "obsdeploy.toml").write_text(
        'source = "https://github.com/acme/observer"\n'
        f'[[images]]\nname = "one"\nimage = "{base}/one"\ncontext = "svc"\ntarget = "dev"\n'
        f'[[images]]\nname = "two"\nimage = "{base}/two"\ncontext = "svc"\n')
    app_repo.git("add", "-A")
    app_repo.git("commit", "-q", "-m", "two images of one context")
    res = app_repo.release("v1.0.0", "--json", **CREDS)
    assert res.returncode == 0, res.stdout + res.stderr
    imgs = by_name(json.loads(res.stdout))
    assert imgs["one"]["context_digest"] != imgs["two"]["context_digest"]  # the target counts
    assert imgs["one"]["digest"] != imgs["two"]["digest"]
    assert annotated_tag_commit(app_repo, "v1.0.0", remote=True) == app_repo.head()
