"""Issue 12, engine and rollback: digest-pinned images, an image built for another platform,
and `rollback` without a tag walking back through the history."""

from __future__ import annotations

import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.parts import REPOSITORY, AgentRootDir, history, status

pytestmark = pytest.mark.integration


def push(client, ref: str) -> str:  # type: ignore[no-untyped-def]
    """Push `ref` (repo:tag) and return its `repo@sha256:…` digest reference."""
    repo, tag = ref.rsplit(":", 1)
    digest = None
    for line in client.api.push(repo, tag=tag, stream=True, decode=True):
        if "error" in line:
            raise RuntimeError(f"push {ref}: {line['error']}")
        digest = (line.get("aux") or {}).get("Digest") or digest
    assert digest, f"push {ref} reported no digest"
    return f"{repo}@{digest}"


def forget(*refs: str) -> None:
    subprocess.run(["docker", "rmi", *refs], capture_output=True, timeout=60)


def test_digest_pinned_images_pull_and_deploy(agent_root: AgentRootDir, images: dict[str, str],
                                              docker_client) -> None:  # type: ignore[no-untyped-def]
    """The release service pinned as `img:${IMAGE_TAG}@sha256:…` and an accessory pinned as
    `img@sha256:…`, neither present locally: the agent pulls both by digest and deploys."""
    uid = uuid.uuid4().hex[:8]
    registry = agent_root.registry
    pinned = f"{registry}/obs/pinned-{uid}"
    kv = f"{registry}/obs/kvpin-{uid}"
    docker_client.images.get(images["v1.0.0"]).tag(pinned, "v1.0.0")
    docker_client.images.get(images["v1.1.0"]).tag(kv, "7")
    release_digest = push(docker_client, f"{pinned}:v1.0.0").split("@", 1)[1]
    kv_ref = push(docker_client, f"{kv}:7")
    forget(f"{pinned}:v1.0.0", f"{kv}:7")
    compose = agent_root.path / "docker-compose.server.yml"
    text = compose.read_text().replace(
        f"image: {registry}/{REPOSITORY}:${{IMAGE_TAG:?IMAGE_TAG required}}",
        f"image: {pinned}:${{IMAGE_TAG:?IMAGE_TAG required}}@{release_digest}")
    assert release_digest in text
    text = text.replace("services:\n", f"services:\n  kv:\n    image: {kv_ref}\n"
                                       "    restart: unless-stopped\n", 1)
    compose.write_text(text)
    try:
        res = agent_root.agent("deploy", "v1.0.0")
        assert res.returncode == 0, res.stdout + res.stderr
        st = status(agent_root)
        assert st["current_tag"] == "v1.0.0" and st["healthy"] is True
        assert agent_root.health()["version"] == "v1.0.0"
        images_by_service = {s["name"]: s["image"] for s in st["services"]}
        assert set(images_by_service) == {"observer", "kv"}
        kv_running = [c for c in docker_client.containers.list(
            filters={"label": f"com.docker.compose.project={agent_root.project}"})
            if c.labels.get("com.docker.compose.service") == "kv"]
        assert len(kv_running) == 1
    finally:
        agent_root.down()
        forget(f"{pinned}@{release_digest}", kv_ref)


def test_an_image_for_another_platform_is_refused_before_anything_changes(
        agent_root: AgentRootDir, docker_client) -> None:  # type: ignore[no-untyped-def]
    """An arm64 image (built on a laptop) for this amd64 engine: exit 11, the platforms named,
    and the running release, its containers and history untouched."""
    host = docker_client.version()
    host_platform = f"{host['Os']}/{host['Arch']}"
    other = "linux/arm64" if host["Arch"] != "arm64" else "linux/amd64"
    uid = uuid.uuid4().hex[:8]
    foreign = f"{agent_root.registry}/obs/foreign-{uid}"
    with tempfile.TemporaryDirectory() as ctx:
        Path(ctx, "Dockerfile").write_text("FROM scratch\nCOPY marker /marker\n")
        Path(ctx, "marker").write_text(uid)
        docker_client.images.build(path=ctx, tag=f"{foreign}:v1.1.0", platform=other, rm=True)
    built = docker_client.images.get(f"{foreign}:v1.1.0").attrs
    assert f"{built['Os']}/{built['Architecture']}" == other
    push(docker_client, f"{foreign}:v1.1.0")
    forget(f"{foreign}:v1.1.0")
    try:
        assert agent_root.agent("deploy", "v1.0.0").returncode == 0
        before = {c.id: c.status for c in docker_client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={agent_root.project}"})}
        history_before = history(agent_root)
        compose = agent_root.path / "docker-compose.server.yml"
        compose.write_text(compose.read_text().replace(
            f"{agent_root.registry}/{REPOSITORY}:", f"{foreign}:"))
        res = agent_root.agent("deploy", "v1.1.0")
        assert res.returncode == 11, res.stdout + res.stderr
        assert other in res.stderr and host_platform in res.stderr, res.stderr
        assert "nothing was changed" in res.stderr
        after = {c.id: c.status for c in docker_client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={agent_root.project}"})}
        assert after == before
        assert history(agent_root) == history_before
        assert agent_root.health()["version"] == "v1.0.0"
        assert agent_root.last_good() == "v1.0.0"
    finally:
        forget(f"{foreign}:v1.1.0")


def test_rollback_without_a_tag_walks_back_through_history(agent_root: AgentRootDir) -> None:
    """v1.0.0 → v1.1.0 → v1.2.0, then `rollback` three times: v1.1.0, v1.0.0, then refused
    (there is nothing older); never back and forth between the two newest."""
    for tag in ("v1.0.0", "v1.1.0", "v1.2.0"):
        assert agent_root.agent("deploy", tag).returncode == 0
    seen = []
    for _ in range(2):
        res = agent_root.agent("rollback")
        assert res.returncode == 0, res.stdout + res.stderr
        seen.append(agent_root.last_good())
        assert agent_root.health()["version"] == seen[-1]
    assert seen == ["v1.1.0", "v1.0.0"]
    res = agent_root.agent("rollback")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no earlier good release" in res.stderr
    assert agent_root.health()["version"] == "v1.0.0"
    # A deploy after the walk back starts a new line: its rollback goes to v1.0.0 again.
    assert agent_root.agent("deploy", "v1.2.0").returncode == 0
    assert agent_root.agent("rollback").returncode == 0
    assert agent_root.last_good() == "v1.0.0"
    assert [(r["action"], r["tag"]) for r in history(agent_root)][:3] == [
        ("rollback", "v1.0.0"), ("deploy", "v1.2.0"), ("rollback", "v1.0.0")]

