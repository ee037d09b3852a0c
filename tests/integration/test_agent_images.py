"""Issue 12, engine and rollback: digest-pinned images, an image built for another platform,
and `rollback` without a tag walking back through the history."""

from __future__ import annotations

import io
import subprocess
import tempfile
import time
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


def pulls_during(docker_client, since: float, until: float, ref: str) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    """The engine's image `pull` events for `ref` between two times: the engine records one
    for every pull, also of an image that was up to date."""
    events = docker_client.api.events(since=int(since) - 1, until=int(until) + 2, decode=True,
                                      filters={"type": "image", "event": "pull"})
    return [e for e in events if e.get("id") == ref and since - 1 <= e["timeNano"] / 1e9 <= until + 1]


def own_release_repository(agent_root: AgentRootDir, docker_client, images: dict[str, str],  # type: ignore[no-untyped-def]
                           tags: tuple[str, ...]) -> str:
    """A repository of this test's own, holding the fixture releases `tags` (pushed, so each
    local image knows its registry digest), which the agent root's compose file now uses: a
    test may re-push its tags without touching the session's images."""
    repo = f"{agent_root.registry}/obs/own-{uuid.uuid4().hex[:8]}"
    for tag in tags:
        docker_client.images.get(images[tag]).tag(repo, tag)
        push(docker_client, f"{repo}:{tag}")
    compose = agent_root.path / "docker-compose.server.yml"
    compose.write_text(compose.read_text().replace(f"{agent_root.registry}/{REPOSITORY}:", f"{repo}:"))
    return repo


def test_an_image_present_with_the_registrys_digest_is_not_pulled_again(
        agent_root: AgentRootDir, images: dict[str, str], docker_client) -> None:  # type: ignore[no-untyped-def]
    """A deploy of a tag whose image is here with the digest the registry has for it asks
    the registry once (the manifest) and pulls nothing: the engine records no pull."""
    repo = own_release_repository(agent_root, docker_client, images, ("v1.0.0", "v1.1.0"))
    try:
        for tag in ("v1.0.0", "v1.1.0"):
            t = time.time()
            res = agent_root.agent("deploy", tag)
            assert res.returncode == 0, res.stdout + res.stderr
            assert pulls_during(docker_client, t, time.time(), f"{repo}:{tag}") == []
            assert f"{repo}:{tag} is up to date" in res.stderr, res.stderr
            assert agent_root.health()["version"] == tag
        # An image that is not here is pulled, as always.
        forget(f"{repo}:v1.0.0")
        t = time.time()
        res = agent_root.agent("deploy", "v1.0.0")
        assert res.returncode == 0, res.stdout + res.stderr
        assert len(pulls_during(docker_client, t, time.time(), f"{repo}:v1.0.0")) == 1
        assert agent_root.health()["version"] == "v1.0.0"
    finally:
        agent_root.down()
        forget(f"{repo}:v1.0.0", f"{repo}:v1.1.0")


def test_a_re_pushed_tag_is_pulled_again(agent_root: AgentRootDir, images: dict[str, str],
                                         docker_client) -> None:  # type: ignore[no-untyped-def]
    """v1.1.0 re-pushed with other content (a new digest) while this engine still has the
    old image under that tag: the deploy pulls it, and the new image is what runs."""
    repo = own_release_repository(agent_root, docker_client, images, ("v1.0.0", "v1.1.0"))
    old_id = docker_client.images.get(f"{repo}:v1.1.0").id
    try:
        assert agent_root.agent("deploy", "v1.0.0").returncode == 0
        rebuilt, _ = docker_client.images.build(
            fileobj=io.BytesIO(f"FROM {images['v1.1.0']}\nLABEL rebuilt=yes\n".encode()),
            tag=f"{repo}:v1.1.0", rm=True)
        push(docker_client, f"{repo}:v1.1.0")
        docker_client.images.get(old_id).tag(repo, "v1.1.0")  # this engine: still the old one
        assert docker_client.images.get(f"{repo}:v1.1.0").id == old_id != rebuilt.id
        t = time.time()
        res = agent_root.agent("deploy", "v1.1.0")
        assert res.returncode == 0, res.stdout + res.stderr
        assert len(pulls_during(docker_client, t, time.time(), f"{repo}:v1.1.0")) == 1, res.stderr
        assert "is up to date" not in res.stderr
        assert docker_client.images.get(f"{repo}:v1.1.0").id == rebuilt.id
        (running,) = docker_client.containers.list(
            filters={"label": f"com.docker.compose.project={agent_root.project}"})
        assert running.image.id == rebuilt.id and running.labels.get("rebuilt") == "yes"
        assert agent_root.health()["version"] == "v1.1.0"
    finally:
        agent_root.down()
        forget(f"{repo}:v1.0.0", f"{repo}:v1.1.0", old_id)


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

