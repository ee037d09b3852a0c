"""obsdeploy release against a real registry with htpasswd auth and a bare git remote (SPEC §10)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests import parts
from tests.integration.obsdeploy_fixtures import (  # noqa: F401 (fixtures)
    REG_PASSWORD,
    REG_USER,
    AppRepo,
    app_repo,
    auth_registry,
)

pytestmark = pytest.mark.integration

CREDS = {"GHCR_USERNAME": REG_USER, "GHCR_TOKEN": REG_PASSWORD}
LABEL = "org.opencontainers.image."


def no_secret(res: subprocess.CompletedProcess[str]) -> None:
    assert REG_PASSWORD not in res.stdout and REG_PASSWORD not in res.stderr


def registry_image(docker_client, repo: AppRepo, tag: str,  # type: ignore[no-untyped-def]
                   image: str | None = None):
    """(digest, labels) of what the registry holds for tag (of repo.image, or `image`), or None."""
    import docker.errors

    image = image or repo.image
    auth = {"username": REG_USER, "password": REG_PASSWORD}
    try:
        dist = docker_client.api.inspect_distribution(f"{image}:{tag}", auth_config=auth)
    except docker.errors.APIError:
        return None
    digest = dist["Descriptor"]["digest"]
    img = docker_client.images.pull(f"{image}@{digest}", auth_config=auth)
    return digest, img.labels


def annotated_tag_commit(repo: AppRepo, tag: str, *, remote: bool) -> str | None:
    git = repo.remote_git if remote else repo.git
    try:
        kind = git("cat-file", "-t", f"refs/tags/{tag}")
    except subprocess.CalledProcessError:
        return None
    if kind != "tag":
        return None
    return git("rev-parse", f"refs/tags/{tag}^{{commit}}") or None


def test_release_pushes_labelled_image_and_tag_then_is_a_no_op(
    app_repo: AppRepo, docker_client  # noqa: F811
) -> None:
    head = app_repo.head()
    res = app_repo.release("v1.2.3", "--json", **CREDS)
    assert res.returncode == 0, res.stderr
    no_secret(res)
    # This machine's docker CLI has no buildx: the release says it falls back.
    assert ("docker buildx is not available: building with the legacy builder for linux/amd64"
            in res.stderr) != buildx_on_path(), res.stderr
    plan = json.loads(res.stdout)
    assert [s["state"] for s in plan["steps"]] == ["done"] * 5
    digest, labels = registry_image(docker_client, app_repo, "v1.2.3")
    assert labels[LABEL + "version"] == "v1.2.3"
    assert labels[LABEL + "revision"] == head
    assert labels[LABEL + "source"] == "https://github.com/acme/observer"
    assert labels[LABEL + "created"].endswith("Z")
    assert annotated_tag_commit(app_repo, "v1.2.3", remote=False) == head
    assert annotated_tag_commit(app_repo, "v1.2.3", remote=True) == head

    again = app_repo.release("v1.2.3", "--json", **CREDS)
    assert again.returncode == 0, again.stderr
    no_secret(again)
    steps = {s["name"]: s["state"] for s in json.loads(again.stdout)["steps"]}
    assert steps == {"login": "done", "build": "already-done", "push": "already-done",
                     "tag": "already-done", "push-tag": "already-done"}
    assert registry_image(docker_client, app_repo, "v1.2.3")[0] == digest


def buildx_on_path() -> bool:
    return subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode == 0


def test_release_killed_after_push_completes_the_tag_on_rerun(
    app_repo: AppRepo, docker_client  # noqa: F811
) -> None:
    killed = app_repo.release("v1.2.3", OBSDEPLOY_DIE_AFTER="push", **CREDS)
    assert killed.returncode == -9
    assert registry_image(docker_client, app_repo, "v1.2.3") is not None
    assert annotated_tag_commit(app_repo, "v1.2.3", remote=False) is None

    res = app_repo.release("v1.2.3", "--json", **CREDS)
    assert res.returncode == 0, res.stderr
    steps = {s["name"]: s["state"] for s in json.loads(res.stdout)["steps"]}
    assert steps["build"] == steps["push"] == "already-done"
    assert steps["tag"] == steps["push-tag"] == "done"
    assert annotated_tag_commit(app_repo, "v1.2.3", remote=True) == app_repo.head()


def test_bad_credentials_are_a_clear_error_and_leave_no_tag(app_repo: AppRepo) -> None:  # noqa: F811
    wrong = "wrong-token-SENTINEL-99aa"
    res = app_repo.release("v1.2.3", GHCR_USERNAME=REG_USER, GHCR_TOKEN=wrong)
    assert res.returncode == 11, res.stderr
    assert "login" in res.stderr and REG_USER in res.stderr
    assert wrong not in res.stdout + res.stderr
    assert annotated_tag_commit(app_repo, "v1.2.3", remote=False) is None
    assert annotated_tag_commit(app_repo, "v1.2.3", remote=True) is None

    anonymous = app_repo.release("v1.2.3")
    assert anonymous.returncode == 11, anonymous.stderr
    assert "GHCR_TOKEN" in anonymous.stderr


def test_dirty_tree_is_refused_unless_allowed(app_repo: AppRepo) -> None:  # noqa: F811
    (app_repo.path / "app.txt").write_text("uncommitted\n")
    res = app_repo.release("v1.2.3", **CREDS)
    assert res.returncode == 2
    assert "dirty" in res.stderr and "app.txt" in res.stderr
    assert annotated_tag_commit(app_repo, "v1.2.3", remote=False) is None

    dry = app_repo.release("v1.2.3", "--allow-dirty", "--dry-run", "--json", **CREDS)
    assert dry.returncode == 0, dry.stderr
    assert {s["state"] for s in json.loads(dry.stdout)["steps"][1:]} == {"todo"}


def test_dry_run_changes_nothing(app_repo: AppRepo, docker_client) -> None:  # noqa: F811
    res = app_repo.release("v1.2.3", "--dry-run", **CREDS)
    assert res.returncode == 0, res.stderr
    assert "dry run" in res.stdout and "build" in res.stdout
    no_secret(res)
    assert registry_image(docker_client, app_repo, "v1.2.3") is None
    assert annotated_tag_commit(app_repo, "v1.2.3", remote=False) is None


def test_dry_run_reads_the_revision_from_the_registry_without_pulling(
    app_repo: AppRepo, docker_client  # noqa: F811
) -> None:
    """After a release, the engine forgets the image; a dry run must still see that the
    registry holds this revision (build and push already done) by reading the manifest and
    config, and the engine has no image of the repository afterwards (nothing was pulled)."""
    assert app_repo.release("v1.2.3", **CREDS).returncode == 0

    def local_images() -> list[str]:
        return [i.id for i in docker_client.images.list(name=app_repo.image)] + [
            i.id for i in docker_client.images.list(filters={"reference": f"{app_repo.image}@*"})]

    for image_id in set(local_images()):
        docker_client.images.remove(image_id, force=True)
    assert local_images() == []
    dry = app_repo.release("v1.2.3", "--dry-run", "--json", **CREDS)
    assert dry.returncode == 0, dry.stderr
    states = {s["name"]: s["state"] for s in json.loads(dry.stdout)["steps"]}
    assert states["build"] == states["push"] == "already-done", states
    assert local_images() == []
    no_secret(dry)


def test_tag_on_another_commit_is_refused(app_repo: AppRepo) -> None:  # noqa: F811
    app_repo.git("tag", "-a", "-m", "old", "v1.2.3")
    app_repo.commit("app.txt", "newer\n")
    res = app_repo.release("v1.2.3", **CREDS)
    assert res.returncode == 2
    assert "already exists on commit" in res.stderr


def test_registry_tag_is_immutable(app_repo: AppRepo, docker_client) -> None:  # noqa: F811
    assert app_repo.release("v1.2.3", **CREDS).returncode == 0
    first = registry_image(docker_client, app_repo, "v1.2.3")
    # Someone deletes the git tag everywhere and tries to re-release from a new commit.
    app_repo.git("tag", "-d", "v1.2.3")
    app_repo.git("push", "-q", "origin", ":refs/tags/v1.2.3")
    app_repo.commit("app.txt", "other content\n")
    res = app_repo.release("v1.2.3", **CREDS)
    assert res.returncode == 2
    assert "immutable" in res.stderr
    assert registry_image(docker_client, app_repo, "v1.2.3") == first


def test_invalid_version_is_refused(app_repo: AppRepo) -> None:  # noqa: F811
    res = app_repo.release("1.2.3", **CREDS)
    assert res.returncode == 2
    assert "vMAJOR.MINOR.PATCH" in res.stderr


_ = parts  # the real parts this module runs against
