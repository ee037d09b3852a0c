"""`obsdeploy release` of several images as values: the context digest, the plan (what is built,
reused, refused) and its execution order, with fakes of the registry, git and the builder."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from deploy_tool.config import ImageConfig, ObsdeployConfig
from deploy_tool.images import CONTEXT_LABEL, ImageSpec, context_digest, resolve_images
from deploy_tool.release import (
    LABEL,
    ImagePlan,
    ReleaseActions,
    ReleasePlan,
    RemoteImage,
    execute,
    plan_release,
)
from server_agent.common.errors import ImageError, UsageError
from server_agent.common.versions import version_key

HEAD = "c" * 40


def spec(ctx: Path, **kw: Any) -> ImageSpec:
    return ImageSpec(name="app", image="reg.example/acme/app", context=ctx, dockerfile="Dockerfile", **kw)


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    d = tmp_path / "ctx"
    (d / "src").mkdir(parents=True)
    (d / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    (d / "src" / "a.txt").write_text("a\n")
    (d / ".dockerignore").write_text("# logs are not sent\n*.log\nbuild/\n")
    return d


# --- the context digest --------------------------------------------------------------------------
def test_the_digest_follows_what_docker_sends_and_nothing_else(ctx: Path, tmp_path: Path) -> None:
    first = context_digest(spec(ctx))
    assert first.startswith("sha256:") and context_digest(spec(ctx)) == first
    (ctx / "debug.log").write_text("noise\n")  # ignored by .dockerignore
    (ctx / "build").mkdir()
    (ctx / "build" / "out.bin").write_bytes(b"x")
    os.utime(ctx / "src" / "a.txt", (1, 1))  # a fresh checkout: new mtimes, same content
    assert context_digest(spec(ctx)) == first

    (ctx / "src" / "a.txt").write_text("b\n")
    changed = context_digest(spec(ctx))
    assert changed != first
    (ctx / "src" / "a.txt").chmod(0o755)
    assert context_digest(spec(ctx)) != changed
    (ctx / "src" / "a.txt").chmod(0o644)
    assert context_digest(spec(ctx)) == changed
    assert context_digest(spec(ctx, target="prod")) != changed
    assert context_digest(spec(ctx, build_args={"PY": "3.12"})) != changed
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY src /src\n")
    assert context_digest(spec(ctx)) != changed


def test_the_same_tree_elsewhere_has_the_same_digest(ctx: Path, tmp_path: Path) -> None:
    import shutil

    other = shutil.copytree(ctx, tmp_path / "elsewhere")
    assert context_digest(spec(Path(other))) == context_digest(spec(ctx))


def test_a_missing_context_or_dockerfile_names_the_image(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="context .* of image app does not exist"):
        context_digest(spec(tmp_path / "nope"))
    with pytest.raises(UsageError, match="dockerfile .* of image app does not exist"):
        context_digest(spec(tmp_path))


# --- the images of obsdeploy.toml ----------------------------------------------------------------
def test_the_one_image_form_and_the_list(tmp_path: Path) -> None:
    one = resolve_images(ObsdeployConfig(image="reg.example/acme/observer", context="app",
                                         base_dir=tmp_path))
    assert [(s.name, s.image, s.context) for s in one] == [
        ("observer", "reg.example/acme/observer", (tmp_path / "app").resolve())]
    many = resolve_images(ObsdeployConfig(base_dir=tmp_path, images=[
        ImageConfig(name="api", image="reg.example/acme/api", context="api"),
        ImageConfig(name="worker", image="reg.example/acme/worker", target="prod")]))
    assert [(s.name, s.context, s.target) for s in many] == [
        ("api", (tmp_path / "api").resolve(), None), ("worker", tmp_path.resolve(), "prod")]


@pytest.mark.parametrize("kw, message", [
    ({"image": "reg/a", "images_from": "compose.yaml"}, "set one of image"),
    ({"images": [{"name": "a", "image": "reg/a"}, {"name": "a", "image": "reg/b"}]}, "name a is used twice"),
    ({"images": [{"name": "a", "image": "reg/a"}, {"name": "b", "image": "reg/a"}]}, "image reg/a is used twice"),
    ({"images": [{"name": "A b", "image": "reg/a"}]}, "lowercase"),
    ({"images": [{"name": "a", "image": "reg/a:v1"}]}, "without tag"),
])
def test_bad_image_lists_are_refused(kw: dict[str, Any], message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        ObsdeployConfig(**kw)


def test_images_from_reads_compose_config(tmp_path: Path) -> None:
    """Through `docker compose config`: compose's context, dockerfile, target and args of the
    services that have both build: and an image of ${IMAGE_TAG}."""
    (tmp_path / "w").mkdir()
    (tmp_path / "compose.yaml").write_text(
        "x-build: &b {context: w, dockerfile: Dockerfile.w, target: prod, args: {A: '1'}}\n"
        "services:\n"
        "  api: {image: 'reg.example/acme/api:${IMAGE_TAG}', build: .}\n"
        "  worker: {image: 'reg.example/acme/worker:${IMAGE_TAG:-latest}', build: *b}\n"
        "  kv: {image: 'redis:7'}\n"
        "  tool: {build: w}\n")
    specs = resolve_images(ObsdeployConfig(images_from="compose.yaml", base_dir=tmp_path))
    assert [(s.name, s.image, s.context, s.dockerfile, s.target, s.build_args) for s in specs] == [
        ("api", "reg.example/acme/api", tmp_path, "Dockerfile", None, {}),
        ("worker", "reg.example/acme/worker", tmp_path / "w", "Dockerfile.w", "prod", {"A": "1"}),
    ]
    (tmp_path / "compose.yaml").write_text(
        "services:\n  api: {image: 'reg.example/acme/api:v-${IMAGE_TAG}', build: .}\n")
    with pytest.raises(UsageError, match=r"service api .* must be REPOSITORY:\$\{IMAGE_TAG\}"):
        resolve_images(ObsdeployConfig(images_from="compose.yaml", base_dir=tmp_path))
    (tmp_path / "compose.yaml").write_text(
        "services:\n"
        "  app: {image: 'reg.example/acme/app:${IMAGE_TAG}', build: w}\n"
        "  jobs: {image: 'reg.example/acme/app:${IMAGE_TAG}', build: w, command: [jobs]}\n")
    [one] = resolve_images(ObsdeployConfig(images_from="compose.yaml", base_dir=tmp_path))
    assert one.name == "app"  # one image of two services: built once
    (tmp_path / "compose.yaml").write_text(
        "services:\n"
        "  app: {image: 'reg.example/acme/app:${IMAGE_TAG}', build: w}\n"
        "  jobs: {image: 'reg.example/acme/app:${IMAGE_TAG}', build: .}\n")
    with pytest.raises(UsageError, match="also service app's, built another way"):
        resolve_images(ObsdeployConfig(images_from="compose.yaml", base_dir=tmp_path))
    (tmp_path / "compose.yaml").write_text("services:\n  kv: {image: 'redis:7'}\n")
    with pytest.raises(UsageError, match="no service .* has both a build"):
        resolve_images(ObsdeployConfig(images_from="compose.yaml", base_dir=tmp_path))
    (tmp_path / "compose.yaml").write_text("services: [\n")
    with pytest.raises(UsageError, match="docker compose config"):
        resolve_images(ObsdeployConfig(images_from="compose.yaml", base_dir=tmp_path))
    with pytest.raises(UsageError, match="images_from: .* does not exist"):
        resolve_images(ObsdeployConfig(images_from="nope.yaml", base_dir=tmp_path))


def test_versions_sort_by_semver_precedence() -> None:
    tags = ["v1.10.0", "v1.2.0", "v1.2.0-rc.2", "v1.2.0-rc.10", "v1.2.0-beta", "v0.9.9"]
    assert sorted(tags, key=version_key) == [
        "v0.9.9", "v1.2.0-beta", "v1.2.0-rc.2", "v1.2.0-rc.10", "v1.2.0", "v1.10.0"]


# --- the plan, against fakes ---------------------------------------------------------------------
class FakeGit:
    def __init__(self, tags: list[str]) -> None:
        self.tags = tags
        self.commit = HEAD
        self.made: list[str] = []
        self.pushed: list[str] = []

    def head(self) -> str:
        return self.commit

    def dirty_files(self) -> list[str]:
        return []

    def tag_commit(self, tag: str) -> str | None:
        return self.commit if tag in self.made else None

    def remote_tag_commit(self, remote: str, tag: str) -> str | None:
        return self.commit if tag in self.pushed else None

    def remote_url(self, remote: str) -> str:
        return "https://github.com/acme/app.git"

    def remote_tags(self, remote: str) -> list[str]:
        return [*self.tags, "not-a-version"]

    def create_annotated_tag(self, tag: str, message: str) -> None:
        self.made.append(tag)

    def push_tag(self, remote: str, tag: str) -> None:
        self.pushed.append(tag)


class FakeActions(ReleaseActions):
    """The registry is a dict (image, tag) -> labels; builds and pushes are recorded."""

    def __init__(self, cfg: ObsdeployConfig, git: FakeGit, registry: dict[tuple[str, str], dict[str, str]],
                 fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        super().__init__(cfg, git, client=object())  # type: ignore[arg-type]
        self.registry = registry
        self.fail = fail
        self.log: list[str] = []
        self.lock = threading.Lock()
        self.active = self.most = 0

    def remote(self, image: str, tag: str) -> RemoteImage | None:
        labels = self.registry.get((image, tag))
        return None if labels is None else RemoteImage(labels=labels, digest=f"sha256:{image}@{tag}")

    def local_labels(self, reference: str) -> dict[str, str] | None:
        return None

    def build(self, img: ImagePlan) -> None:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            if img.name in self.fail:
                raise ImageError(f"build of {img.reference} failed")
            self.log.append(f"build {img.name}")
        finally:
            with self.lock:
                self.active -= 1

    def push(self, img: ImagePlan, version: str) -> None:
        self.registry[(img.image, version)] = img.labels
        self.log.append(f"push {img.name}")

    def reuse(self, img: ImagePlan, version: str) -> str:
        assert img.copy_from
        self.registry[(img.image, version)] = self.registry[(img.image, img.copy_from)]
        self.log.append(f"reuse {img.name}")
        return f"sha256:{img.image}@{img.copy_from}"


def project(tmp_path: Path, names: tuple[str, ...] = ("api", "worker", "web")) -> ObsdeployConfig:
    for n in names:
        (tmp_path / n).mkdir(exist_ok=True)
        (tmp_path / n / "Dockerfile").write_text(f"FROM scratch\nCOPY {n}.txt /\n")
        (tmp_path / n / f"{n}.txt").write_text(f"{n}\n")
    return ObsdeployConfig(base_dir=tmp_path, images=[
        ImageConfig(name=n, image=f"reg.example/acme/{n}", context=n) for n in names])


def run(plan: ReleasePlan, actions: FakeActions) -> list[str]:
    return [f"{s.name} {s.image or ''}".strip() for s in execute(plan, actions)]


def test_a_first_release_builds_everything_and_tags_last(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    actions = FakeActions(cfg, FakeGit([]), {})
    plan = plan_release(cfg, "v1.0.0", actions, parallel=2)
    assert plan.previous is None and plan.image is None and plan.reference is None
    assert [(s.name, s.image, s.state) for s in plan.steps] == [
        ("build", "api", "todo"), ("push", "api", "todo"), ("build", "worker", "todo"),
        ("push", "worker", "todo"), ("build", "web", "todo"), ("push", "web", "todo"),
        ("tag", None, "todo"), ("push-tag", None, "todo")]
    assert all(i.labels[CONTEXT_LABEL] == i.context_digest for i in plan.images)
    assert all(i.labels[LABEL + "revision"] == HEAD for i in plan.images)
    done = run(plan, actions)
    assert done[-2:] == ["tag", "push-tag"] and sorted(done[:-2]) == sorted(
        f"{step} {n}" for n in ("api", "worker", "web") for step in ("build", "push"))
    assert {s.state for s in plan.steps} == {"done"}
    assert [i.digest for i in plan.images] == [f"sha256:reg.example/acme/{n}@v1.0.0"
                                               for n in ("api", "worker", "web")]


def test_an_unchanged_image_is_reused_from_the_previous_release(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    git = FakeGit([])
    first = FakeActions(cfg, git, {})
    run(plan_release(cfg, "v1.0.0", first), first)
    git.tags = ["v1.0.0", "v0.9.0", "v2.0.0"]  # v2.0.0 is above the version released now
    git.commit = "e" * 40
    (tmp_path / "worker" / "worker.txt").write_text("changed\n")
    actions = FakeActions(cfg, git, first.registry)
    plan = plan_release(cfg, "v1.1.0", actions)
    assert plan.previous == "v1.0.0"
    assert {i.name: (i.action, i.copy_from, i.reused_from) for i in plan.images} == {
        "api": ("reuse", "v1.0.0", "v1.0.0"), "worker": ("build", None, None),
        "web": ("reuse", "v1.0.0", "v1.0.0")}
    assert plan.step("reuse", "api").description.endswith("(reused from v1.0.0: same context digest)")
    assert [i.outcome(done=False) for i in plan.images] == [
        "would be reused from v1.0.0", "would be built", "would be reused from v1.0.0"]
    run(plan, actions)
    assert [i.outcome(done=True) for i in plan.images] == [
        "reused from v1.0.0", "built", "reused from v1.0.0"]
    assert sorted(actions.log) == ["build worker", "push worker", "reuse api", "reuse web"]
    assert plan.images[0].digest == "sha256:reg.example/acme/api@v1.0.0"

    # A re-run: everything is in; the reused images are recognised by their context digest
    # although their revision label is the older release's.
    again = FakeActions(cfg, git, actions.registry)
    replan = plan_release(cfg, "v1.1.0", again)
    assert {(s.name, s.state) for s in replan.steps} == {
        ("reuse", "already-done"), ("build", "already-done"), ("push", "already-done"),
        ("tag", "already-done"), ("push-tag", "already-done")}
    assert [i.outcome(done=False) for i in replan.images] == [  # a dry run of a done release
        "reused from v1.0.0", "built", "reused from v1.0.0"]
    assert run(replan, again) == [] and again.log == []


def test_a_registry_tag_of_other_content_is_refused(tmp_path: Path) -> None:
    cfg = project(tmp_path, ("api",))
    registry = {("reg.example/acme/api", "v1.0.0"): {LABEL + "revision": "d" * 40,
                                                     CONTEXT_LABEL: "sha256:other"}}
    with pytest.raises(UsageError, match="already in the registry with revision dddddddddddd"):
        plan_release(cfg, "v1.0.0", FakeActions(cfg, FakeGit([]), registry))


def test_a_failed_build_leaves_no_tag_and_the_rerun_finishes(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    git = FakeGit([])
    actions = FakeActions(cfg, git, {}, fail={"worker"})
    plan = plan_release(cfg, "v1.0.0", actions)
    with pytest.raises(ImageError, match="build of reg.example/acme/worker:v1.0.0 failed"):
        run(plan, actions)
    assert git.made == [] and git.pushed == []
    assert sorted(actions.log) == ["build api", "build web", "push api", "push web"]
    assert plan.step("build", "worker").state == "failed"
    assert plan.step("tag").state == "todo"

    rerun = FakeActions(cfg, git, actions.registry)
    plan = plan_release(cfg, "v1.0.0", rerun)
    assert [(s.name, s.image) for s in plan.todo] == [
        ("build", "worker"), ("push", "worker"), ("tag", None), ("push-tag", None)]
    run(plan, rerun)
    assert rerun.log == ["build worker", "push worker"] and git.pushed == ["v1.0.0"]


def test_builds_run_side_by_side_at_most_parallel_at_once(tmp_path: Path) -> None:
    names = tuple(f"s{i}" for i in range(5))
    cfg = project(tmp_path, names)
    two = threading.Barrier(2, timeout=30)  # the first two builds wait for each other
    entered = iter(range(100))
    lock = threading.Lock()

    class Paired(FakeActions):
        def build(self, img: ImagePlan) -> None:
            with lock:
                n = next(entered)
            if n < 2:
                two.wait()  # fails (BrokenBarrierError) unless two builds run at once
            super().build(img)

    actions = Paired(cfg, FakeGit([]), {})
    run(plan_release(cfg, "v1.0.0", actions, parallel=2), actions)
    assert actions.most <= 2 and len([x for x in actions.log if x.startswith("build")]) == 5
