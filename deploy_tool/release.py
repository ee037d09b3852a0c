"""`obsdeploy release VERSION`: build every image, push, tag, push the tag.

`plan_release` inspects the world (git, the registry, the local engine) and returns a
`ReleasePlan`, a value: each image with what will be done to it (built, or reused: the
previous release's image tagged again when its context digest is the same) and the steps,
each already done or still to do, after refusing what must be refused (a dirty tree, a tag on
another commit, a registry tag with another revision). `execute` runs the steps that are not
done through `ReleaseActions`, the one class that touches Docker, the registry and git: the
images' steps in parallel (at most `parallel` builds at once), then, only when every image
is in the registry, the git tag. A re-run after a failure at any point plans again from what
exists, so it finishes the job and skips what is done.

Credentials: `GHCR_USERNAME` / `GHCR_TOKEN` are handed to the Docker SDK's `login` (an API
call, never a command line); the token is registered with the redactor before anything runs.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

from server_agent.common.errors import ImageError, ObsError, UsageError
from server_agent.common.progress import LayerTally, track
from server_agent.common.redact import REDACTOR
from server_agent.common.versions import validate_version, version_key

from .config import ObsdeployConfig
from .git import Git, source_url
from .images import CONTEXT_LABEL, ImageSpec, check_context, context_digest, resolve_images

log = logging.getLogger("obsdeploy.release")

LABEL = "org.opencontainers.image."
USERNAME_ENV = "GHCR_USERNAME"
TOKEN_ENV = "GHCR_TOKEN"
BUILD_TIMEOUT = 3600
DIE_AFTER_ENV = "OBSDEPLOY_DIE_AFTER"  # test hook: SIGKILL ourselves after the named step
# The classic builder's "Step 3/7 : RUN ..." lines: how far the build is.
_BUILD_STEP = re.compile(r"Step (\d+)/(\d+) :")

StepName = Literal["login", "build", "push", "reuse", "tag", "push-tag"]
StepState = Literal["todo", "already-done", "done", "failed"]
IMAGE_STEPS = ("build", "push", "reuse")


class Step(BaseModel):
    name: StepName
    description: str
    state: StepState
    image: str | None = None  # the image's name, for build, push and reuse
    seconds: float | None = None  # how long it took, once done


class ImagePlan(BaseModel):
    name: str
    image: str
    reference: str  # image:VERSION
    registry: str
    context: str
    dockerfile: str
    target: str | None
    build_args: dict[str, str]
    context_digest: str
    labels: dict[str, str]
    action: Literal["build", "reuse"]
    # For a reuse: the tag whose manifest is put again as VERSION, and the release that built
    # the image (its version label).
    copy_from: str | None = None
    reused_from: str | None = None
    digest: str | None = None  # the registry's manifest digest of `reference`, when known

    def outcome(self, *, done: bool) -> str:
        """`built` or `reused from vX.Y.Z`; before the run (a dry run), what would be done."""
        how = f"reused from {self.reused_from}" if self.action == "reuse" else "built"
        pending = self.action == "build" and self.digest is None or self.copy_from is not None
        return how if done or not pending else f"would be {how}"

    def spec(self) -> ImageSpec:
        from pathlib import Path

        return ImageSpec(name=self.name, image=self.image, context=Path(self.context),
                         dockerfile=self.dockerfile, target=self.target, build_args=self.build_args)


class ReleasePlan(BaseModel):
    version: str
    revision: str
    source: str
    git_remote: str
    dry_run: bool
    parallel: int
    previous: str | None  # the release whose images an unchanged image is reused from
    labels: dict[str, str]  # the OCI labels every built image gets
    images: list[ImagePlan]
    steps: list[Step]

    # The one-image form's fields, kept: null when the release has several images.
    @computed_field  # type: ignore[prop-decorator]
    @property
    def image(self) -> str | None:
        return self.images[0].image if len(self.images) == 1 else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def reference(self) -> str | None:
        return self.images[0].reference if len(self.images) == 1 else None

    def step(self, name: StepName, image: str | None = None) -> Step:
        return next(s for s in self.steps if s.name == name and (image is None or s.image == image))

    def image_steps(self, name: str) -> list[Step]:
        return [s for s in self.steps if s.image == name]

    @property
    def todo(self) -> list[Step]:
        return [s for s in self.steps if s.state == "todo"]


class Credentials(BaseModel):
    username: str
    token: str = Field(repr=False)

    @classmethod
    def from_env(cls) -> Credentials | None:
        user, token = os.environ.get(USERNAME_ENV), os.environ.get(TOKEN_ENV)
        if token:
            REDACTOR.add([token])
        if not user and not token:
            return None
        if not (user and token):
            raise UsageError(f"set both {USERNAME_ENV} and {TOKEN_ENV}, or neither")
        return cls(username=user, token=token)


def _docker_message(exc: Exception) -> str:
    import docker.errors

    if isinstance(exc, docker.errors.APIError):
        msg = exc.explanation or str(exc)
        return REDACTOR(msg if isinstance(msg, str) else msg.decode(errors="replace"))
    return REDACTOR(str(exc))


class RemoteImage(BaseModel):
    labels: dict[str, str]
    digest: str


class ReleaseActions:
    """Everything `release` does to the outside world: the Docker SDK, the registry, git."""

    def __init__(self, cfg: ObsdeployConfig, git: Git, client: Any = None,
                 progress: Callable[[str], None] = lambda line: None) -> None:
        import docker

        self.cfg = cfg
        self.git = git
        self.client = client if client is not None else docker.from_env()
        self._injected = client is not None
        self._local = threading.local()
        self.progress = progress
        self.creds: Credentials | None = None
        self.logged_in: list[str] = []

    def _client(self) -> Any:
        """The engine client of this thread: images are built and pushed side by side, and
        one requests session shared by threads is not something requests promises to handle."""
        import docker

        if self._injected:
            return self.client
        if not hasattr(self._local, "client"):
            # A build step can print nothing for minutes (a silent RUN): the SDK's default
            # 60 s read timeout would call that a failure.
            client = docker.from_env(timeout=BUILD_TIMEOUT)
            # The login was the main client's; a build pulling a private base image from the
            # registry needs it in this one too.
            for registry in self.logged_in:
                assert self.creds is not None
                client.login(username=self.creds.username, password=self.creds.token,
                             registry=registry, reauth=True)
            self._local.client = client
        return self._local.client

    def say(self, img: ImagePlan, line: str) -> None:
        self.progress(f"[{img.name}] {line}")

    @staticmethod
    def registry_of(image: str) -> str:
        import docker.auth

        return str(docker.auth.resolve_repository_name(image)[0])

    def _registry(self, image: str) -> Any:
        from .registry import RegistryClient

        creds = self.creds
        return RegistryClient(image, creds.username if creds else None,
                              creds.token if creds else None)

    # --- read-only inspection ----------------------------------------------------------------
    def login(self, creds: Credentials, registry: str) -> None:
        self.creds = creds
        try:
            self.client.login(username=creds.username, password=creds.token,
                              registry=registry, reauth=True)
            self.logged_in.append(registry)
        except Exception as exc:
            raise ImageError(
                f"registry login to {registry} as {creds.username} failed: "
                f"{_docker_message(exc)}",
                hint=f"check {USERNAME_ENV} and {TOKEN_ENV} (the token needs write:packages)",
            ) from None

    def remote(self, image: str, tag: str) -> RemoteImage | None:
        """None when the registry lacks image:tag; else its labels and digest, read from the
        manifest and config blob (a few KiB), never by pulling the image."""
        reader = self._registry(image)
        found = reader.manifest(tag)
        if found is None:
            return None
        labels = reader.labels_of(found, tag, self.cfg.platforms[0]) or {}
        return RemoteImage(labels={k: str(v) for k, v in labels.items()}, digest=found.digest)

    def local_labels(self, reference: str) -> dict[str, str] | None:
        import docker.errors

        try:
            img = self.client.images.get(reference)
        except docker.errors.ImageNotFound:
            return None
        return {k: str(v) for k, v in (img.labels or {}).items()}

    def previous_release(self, remote: str, version: str) -> str | None:
        """The highest release tag of the git remote below `version`: a tag there means every
        image of that release is in the registry (the tag is pushed last)."""
        below = []
        for tag in self.git.remote_tags(remote):
            try:
                if version_key(tag) < version_key(version):
                    below.append(tag)
            except UsageError:  # not a release tag
                continue
        return max(below, key=version_key, default=None)

    # --- changes -------------------------------------------------------------------------------
    def build(self, img: ImagePlan) -> None:
        """BuildKit (`docker buildx build`) when the docker CLI has it, for `platforms`;
        else the engine's legacy builder through the SDK, said so (one platform only)."""
        check_context(img.spec())
        platforms = self.cfg.platforms
        if buildx_available():
            self.say(img, f"building with BuildKit (docker buildx) for {', '.join(platforms)}")
            self._build_buildx(img)
            return
        if len(platforms) > 1:
            raise UsageError(
                f"building for {len(platforms)} platforms ({', '.join(platforms)}) needs BuildKit, "
                "and `docker buildx` is not available here",
                hint="install the docker buildx plugin, or set platforms to one platform")
        self.say(img, f"docker buildx is not available: building with the legacy builder "
                      f"for {platforms[0]}")
        self._build_legacy(img, platforms[0])

    def _build_buildx(self, img: ImagePlan) -> None:
        from server_agent.common.runner import run

        res = run(buildx_argv(img, self.cfg.platforms), check=False, timeout=3600)
        for line in (res.stdout + res.stderr).splitlines()[-40:]:
            self.say(img, line)
        if res.returncode != 0:
            raise ImageError(f"docker buildx build of {img.reference} failed (exit {res.returncode})",
                             hint="the build's last lines are above")

    def _build_legacy(self, img: ImagePlan, platform: str) -> None:
        try:
            stream = self._client().api.build(
                path=img.context, dockerfile=img.dockerfile, tag=img.reference,
                labels=img.labels, buildargs=img.build_args, target=img.target, rm=True,
                decode=True, platform=platform,
            )
            with track(f"build {img.reference}", unit="step") as tracker:
                for chunk in stream:
                    if "error" in chunk:
                        raise ImageError(
                            f"build of {img.reference} failed: {REDACTOR(str(chunk['error']))}")
                    text = chunk.get("stream", "").rstrip()
                    if text:
                        self.say(img, text)
                        step = _BUILD_STEP.match(text)
                        if step:
                            tracker.update(int(step[1]), int(step[2]))
        except ObsError:
            raise
        except Exception as exc:
            raise ImageError(f"build of {img.reference} failed: {_docker_message(exc)}") from None

    def push(self, img: ImagePlan, version: str) -> None:
        if len(self.cfg.platforms) > 1:  # the buildx build pushed the image index itself
            self.say(img, f"{img.reference} was pushed by the build "
                          f"({', '.join(self.cfg.platforms)})")
            return
        seen: dict[str, str] = {}
        # Given to each push, since each thread has its own client (login was the main one's).
        auth = {"username": self.creds.username, "password": self.creds.token} if self.creds else None
        try:
            with track(f"push {img.reference}") as tracker:
                on_event = LayerTally().feed(tracker)  # bytes and layers, every few seconds
                for chunk in self._client().api.push(img.image, tag=version, stream=True,
                                                     decode=True, auth_config=auth):
                    if "error" in chunk:
                        raise ImageError(
                            f"push of {img.reference} failed: {REDACTOR(str(chunk['error']))}",
                            hint=f"check {USERNAME_ENV}/{TOKEN_ENV} and the registry",
                        )
                    on_event(chunk)
                    layer, status = chunk.get("id"), chunk.get("status", "")
                    if layer and status and seen.get(layer) != status and status != "Pushing":
                        seen[layer] = status
                        self.say(img, f"{layer}: {status}")
                    elif not layer and status:
                        self.say(img, status)
        except ObsError:
            raise
        except Exception as exc:
            raise ImageError(f"push of {img.reference} failed: {_docker_message(exc)}") from None

    def reuse(self, img: ImagePlan, version: str) -> str:
        """image:copy_from tagged again as image:VERSION in the registry: its manifest put
        under the new tag (no build, no layer moves). The new tag's digest."""
        assert img.copy_from is not None
        registry = self._registry(img.image)
        found = registry.manifest(img.copy_from)
        if found is None:
            raise ImageError(f"{img.image}:{img.copy_from} left the registry while releasing",
                             hint="run the release again: it will build the image")
        digest = str(registry.put_manifest(version, found))
        self.say(img, f"{img.reference} is {img.image}:{img.copy_from} ({digest}), "
                      f"reused from {img.reused_from}")
        return digest

    def tag(self, plan: ReleasePlan) -> None:
        shown = "\n".join(f"Image: {i.reference}" for i in plan.images)
        self.git.create_annotated_tag(plan.version, f"Release {plan.version}\n\n{shown}")

    def push_tag(self, plan: ReleasePlan) -> None:
        self.git.push_tag(plan.git_remote, plan.version)


def buildx_available() -> bool:
    """The docker CLI has the buildx plugin (`docker buildx version` answers)."""
    import shutil
    import subprocess

    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "buildx", "version"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def buildx_argv(img: ImagePlan, platforms: list[str]) -> list[str]:
    """`docker buildx build` for one image: its labels, target and build args, for `platforms`.
    One platform is loaded into the local engine (the push step pushes it, as with the
    legacy builder); several can only live in a registry, so they are pushed by the build
    itself (an image index), and the push step then finds them there."""
    from pathlib import Path

    argv = ["docker", "buildx", "build", "--platform", ",".join(platforms),
            "-f", str(Path(img.context) / img.dockerfile), "-t", img.reference]
    for key, value in img.labels.items():
        argv += ["--label", f"{key}={value}"]
    for key, value in img.build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    if img.target:
        argv += ["--target", img.target]
    argv.append("--load" if len(platforms) == 1 else "--push")
    argv.append(img.context)
    return argv


def default_parallel() -> int:
    """As many builds at once as this process may use cores."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def plan_release(cfg: ObsdeployConfig, version: str, actions: ReleaseActions, *,
                 allow_dirty: bool = False, dry_run: bool = False,
                 parallel: int | None = None) -> ReleasePlan:
    version = validate_version(version)
    specs = resolve_images(cfg)
    git = actions.git
    head = git.head()
    dirty = git.dirty_files()
    if dirty and not allow_dirty:
        shown = ", ".join(dirty[:8]) + (f" and {len(dirty) - 8} more" if len(dirty) > 8 else "")
        raise UsageError(f"the working tree is dirty ({shown}); a release is built from a commit",
                         hint="commit or stash the changes, or pass --allow-dirty")

    local_tag = git.tag_commit(version)
    if local_tag is not None and local_tag != head:
        raise UsageError(
            f"tag {version} already exists on commit {local_tag[:12]}, not on HEAD ({head[:12]})",
            hint="released versions are immutable: release a new version",
        )
    remote_tag = git.remote_tag_commit(cfg.git_remote, version)
    if remote_tag is not None and remote_tag != head:
        raise UsageError(
            f"tag {version} already exists on {cfg.git_remote} on commit {remote_tag[:12]}, "
            f"not on HEAD ({head[:12]})",
            hint="released versions are immutable: release a new version",
        )

    steps: list[Step] = []
    creds = Credentials.from_env()
    if creds is not None:
        # Needed to read the registry at all; an API call, so it is done while planning.
        for registry in dict.fromkeys(actions.registry_of(s.image) for s in specs):
            actions.login(creds, registry)
            steps.append(Step(name="login", state="done",
                              description=f"log in to {registry} as {creds.username}"))

    source = cfg.source or source_url(git.remote_url(cfg.git_remote))
    labels = {
        LABEL + "version": version,
        LABEL + "revision": head,
        LABEL + "source": source,
        LABEL + "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    previous = actions.previous_release(cfg.git_remote, version)
    images = []
    for spec in specs:
        img = plan_image(spec, version, head, labels, previous, actions)
        images.append(img)
        steps += image_steps(img, actions)
    steps += [
        Step(name="tag", state="already-done" if local_tag == head else "todo",
             description=f"create the annotated tag {version} on {head[:12]}"),
        Step(name="push-tag", state="already-done" if remote_tag == head else "todo",
             description=f"push the tag {version} to {cfg.git_remote}"),
    ]
    return ReleasePlan(
        version=version, revision=head, source=source, git_remote=cfg.git_remote,
        dry_run=dry_run, parallel=parallel or default_parallel(), previous=previous,
        labels=labels, images=images, steps=steps,
    )


def plan_image(spec: ImageSpec, version: str, head: str, labels: dict[str, str],
               previous: str | None, actions: ReleaseActions) -> ImagePlan:
    """What one image needs: nothing (in the registry already), a reuse, or a build."""
    digest = context_digest(spec)
    img = ImagePlan(name=spec.name, image=spec.image, reference=f"{spec.image}:{version}",
                    registry=actions.registry_of(spec.image), context=str(spec.context),
                    dockerfile=spec.dockerfile, target=spec.target, build_args=spec.build_args,
                    context_digest=digest, labels={**labels, CONTEXT_LABEL: digest},
                    action="build")
    there = actions.remote(spec.image, version)
    if there is not None:
        rev = there.labels.get(LABEL + "revision", "")
        if rev == head:
            return img.model_copy(update={"digest": there.digest})
        # The same build inputs: an image reused by an earlier run of this release.
        if there.labels.get(CONTEXT_LABEL) == digest:
            return img.model_copy(update={"action": "reuse", "digest": there.digest,
                                          "reused_from": there.labels.get(LABEL + "version")})
        raise UsageError(
            f"{img.reference} is already in the registry with revision "
            f"{rev[:12] or '(none)'}, not HEAD ({head[:12]})",
            hint="released image tags are immutable and never overwritten: release a new version",
        )
    before = actions.remote(spec.image, previous) if previous else None
    if before is not None and before.labels.get(CONTEXT_LABEL) == digest:
        return img.model_copy(update={
            "action": "reuse", "copy_from": previous, "digest": before.digest,
            "reused_from": before.labels.get(LABEL + "version") or previous})
    return img


def image_steps(img: ImagePlan, actions: ReleaseActions) -> list[Step]:
    if img.action == "reuse":
        return [Step(name="reuse", image=img.name,
                     state="already-done" if img.copy_from is None else "todo",
                     description=f"tag {img.image}:{img.copy_from or img.reused_from} as "
                                 f"{img.reference} in the registry (reused from "
                                 f"{img.reused_from}: same context digest)")]
    pushed = img.digest is not None
    local = None if pushed else actions.local_labels(img.reference)
    built = pushed or (local is not None and local.get(LABEL + "revision") == img.labels[LABEL + "revision"]
                       and local.get(CONTEXT_LABEL) == img.context_digest)
    dockerfile = img.dockerfile + (f", target {img.target}" if img.target else "")
    return [
        Step(name="build", image=img.name, state="already-done" if built else "todo",
             description=f"build {img.reference} from {img.context} ({dockerfile})"),
        Step(name="push", image=img.name, state="already-done" if pushed else "todo",
             description=f"push {img.reference}"),
    ]


def _finished(step: Step, started: float) -> None:
    step.state = "done"
    step.seconds = round(time.monotonic() - started, 3)
    if os.environ.get(DIE_AFTER_ENV) == step.name:
        log.warning("%s=%s: killing myself", DIE_AFTER_ENV, step.name)
        os.kill(os.getpid(), signal.SIGKILL)


def execute(plan: ReleasePlan, actions: ReleaseActions,
            on_step: Callable[[Step], None] = lambda s: None) -> Iterator[Step]:
    """Run the steps still to do; yields each as it finishes.

    The images go side by side, each its own build then push (or its reuse), with at most
    `plan.parallel` builds at once; pushes and reuses are not counted, they wait on the
    network. Every image's work is finished before a failure is raised (a re-run then has
    less to do), and the git tag is made and pushed only when every image is in the registry."""
    builds = threading.BoundedSemaphore(plan.parallel)
    finished: queue.Queue[Step] = queue.Queue()

    def run_image(img: ImagePlan) -> None:
        for step in plan.image_steps(img.name):
            if step.state != "todo":
                continue
            try:
                if step.name == "build":
                    with builds:  # said when it starts, not while it waits its turn
                        on_step(step)
                        started = time.monotonic()
                        actions.build(img)
                elif step.name == "push":
                    on_step(step)
                    started = time.monotonic()
                    actions.push(img, plan.version)
                    there = actions.remote(img.image, plan.version)
                    img.digest = there.digest if there else None
                else:
                    on_step(step)
                    started = time.monotonic()
                    img.digest = actions.reuse(img, plan.version)
            except BaseException:
                step.state = "failed"
                raise
            _finished(step, started)
            finished.put(step)

    todo = [img for img in plan.images if any(s.state == "todo" for s in plan.image_steps(img.name))]
    failures: list[BaseException] = []
    if todo:
        with ThreadPoolExecutor(max_workers=len(todo), thread_name_prefix="release") as pool:
            futures = [pool.submit(run_image, img) for img in todo]
            while not all(f.done() for f in futures) or not finished.empty():
                try:
                    yield finished.get(timeout=0.2)
                except queue.Empty:
                    continue
            failures = [exc for f in futures if (exc := f.exception()) is not None]
    if failures:
        for exc in failures[1:]:
            log.error("%s", exc)
        raise failures[0]

    runners: dict[str, Callable[[ReleasePlan], None]] = {"tag": actions.tag,
                                                          "push-tag": actions.push_tag}
    for step in plan.steps:
        if step.state != "todo" or step.name not in runners:
            continue
        on_step(step)
        started = time.monotonic()
        try:
            runners[step.name](plan)
        except BaseException:
            step.state = "failed"
            raise
        _finished(step, started)
        yield step
