"""`obsdeploy release VERSION` (SPEC §10): build, log in, push, tag, push the tag.

`plan_release` inspects the world (git, the registry, the local engine) and returns a
`ReleasePlan`: the steps, each already done or still to do, after refusing what must be
refused (a dirty tree, a tag on another commit, a registry tag with another revision).
`execute` runs the steps that are not done through `ReleaseActions`, the one class that
touches Docker and git. A re-run after a failure at any point plans again from what exists,
so it finishes the job and skips what is done.

Credentials: `GHCR_USERNAME` / `GHCR_TOKEN` are handed to the Docker SDK's `login` (an API
call, never a command line); the token is registered with the redactor before anything runs.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel

from server_agent.common.errors import ImageError, ObsError, UsageError
from server_agent.common.progress import LayerTally, track
from server_agent.common.redact import REDACTOR
from server_agent.common.versions import validate_version

from .config import ObsdeployConfig
from .git import Git, source_url

log = logging.getLogger("obsdeploy.release")

LABEL = "org.opencontainers.image."
USERNAME_ENV = "GHCR_USERNAME"
TOKEN_ENV = "GHCR_TOKEN"
DIE_AFTER_ENV = "OBSDEPLOY_DIE_AFTER"  # test hook: SIGKILL ourselves after the named step
# The classic builder's "Step 3/7 : RUN ..." lines: how far the build is.
_BUILD_STEP = re.compile(r"Step (\d+)/(\d+) :")

StepName = Literal["login", "build", "push", "tag", "push-tag"]
StepState = Literal["todo", "already-done", "done", "failed"]


class Step(BaseModel):
    name: StepName
    description: str
    state: StepState


class ReleasePlan(BaseModel):
    version: str
    image: str
    reference: str
    registry: str
    revision: str
    source: str
    git_remote: str
    dry_run: bool
    labels: dict[str, str]
    steps: list[Step]

    def step(self, name: StepName) -> Step:
        return next(s for s in self.steps if s.name == name)

    @property
    def todo(self) -> list[Step]:
        return [s for s in self.steps if s.state == "todo"]


class Credentials(BaseModel):
    username: str
    token: str

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


class ReleaseActions:
    """Everything `release` does to the outside world: the Docker SDK and git."""

    def __init__(self, cfg: ObsdeployConfig, git: Git, client: Any = None,
                 progress: Callable[[str], None] = lambda line: None) -> None:
        import docker
        import docker.auth

        self.cfg = cfg
        self.git = git
        self.image = cfg.require_image()
        self.registry, _ = docker.auth.resolve_repository_name(self.image)
        self.client = client if client is not None else docker.from_env()
        self.progress = progress
        self.creds: Credentials | None = None

    # --- read-only inspection ----------------------------------------------------------------
    def login(self, creds: Credentials) -> None:
        self.creds = creds
        try:
            self.client.login(username=creds.username, password=creds.token,
                              registry=self.registry, reauth=True)
        except Exception as exc:
            raise ImageError(
                f"registry login to {self.registry} as {creds.username} failed: "
                f"{_docker_message(exc)}",
                hint=f"check {USERNAME_ENV} and {TOKEN_ENV} (the token needs write:packages)",
            ) from None

    def remote_revision(self, reference: str) -> str | None:
        """None when the registry lacks the tag; else the revision label of what it holds,
        read from the manifest and config blob (a few KiB), never by pulling the image."""
        from .registry import RegistryReader

        creds = self.creds
        reader = RegistryReader(self.image, creds.username if creds else None,
                                creds.token if creds else None)
        tag = reference.rsplit(":", 1)[1]
        labels = reader.config_labels(tag, self.cfg.platforms[0])
        return None if labels is None else str(labels.get(LABEL + "revision", ""))

    def local_revision(self, reference: str) -> str | None:
        import docker.errors

        try:
            img = self.client.images.get(reference)
        except docker.errors.ImageNotFound:
            return None
        return str((img.labels or {}).get(LABEL + "revision", ""))

    # --- changes -------------------------------------------------------------------------------
    def build(self, plan: ReleasePlan) -> None:
        """BuildKit (`docker buildx build`) when the docker CLI has it, for `platforms`;
        else the engine's legacy builder through the SDK, said so (one platform only)."""
        ctx = self.cfg.context_dir
        if not ctx.is_dir():
            raise UsageError(f"build context {ctx} does not exist", hint="check `context`")
        platforms = self.cfg.platforms
        if buildx_available():
            self.progress(f"building with BuildKit (docker buildx) for {', '.join(platforms)}")
            self._build_buildx(plan)
            return
        if len(platforms) > 1:
            raise UsageError(
                f"building for {len(platforms)} platforms ({', '.join(platforms)}) needs BuildKit, "
                "and `docker buildx` is not available here",
                hint="install the docker buildx plugin, or set platforms to one platform")
        self.progress(f"docker buildx is not available: building with the legacy builder "
                      f"for {platforms[0]}")
        self._build_legacy(plan, platforms[0])

    def _build_buildx(self, plan: ReleasePlan) -> None:
        from server_agent.common.runner import run

        res = run(buildx_argv(plan, self.cfg), check=False, timeout=3600)
        for line in (res.stdout + res.stderr).splitlines()[-40:]:
            self.progress(line)
        if res.returncode != 0:
            raise ImageError(f"docker buildx build of {plan.reference} failed (exit {res.returncode})",
                             hint="the build's last lines are above")

    def _build_legacy(self, plan: ReleasePlan, platform: str) -> None:
        try:
            stream = self.client.api.build(
                path=str(self.cfg.context_dir), dockerfile=self.cfg.dockerfile, tag=plan.reference,
                labels=plan.labels, buildargs=self.cfg.build_args, rm=True, decode=True,
                platform=platform,
            )
            with track(f"build {plan.reference}", unit="step") as tracker:
                for chunk in stream:
                    if "error" in chunk:
                        raise ImageError(
                            f"build of {plan.reference} failed: {REDACTOR(str(chunk['error']))}")
                    text = chunk.get("stream", "").rstrip()
                    if text:
                        self.progress(text)
                        step = _BUILD_STEP.match(text)
                        if step:
                            tracker.update(int(step[1]), int(step[2]))
        except ObsError:
            raise
        except Exception as exc:
            raise ImageError(f"build of {plan.reference} failed: {_docker_message(exc)}") from None

    def push(self, plan: ReleasePlan) -> None:
        if len(self.cfg.platforms) > 1:  # the buildx build pushed the image index itself
            self.progress(f"{plan.reference} was pushed by the build "
                          f"({', '.join(self.cfg.platforms)})")
            return
        seen: dict[str, str] = {}
        try:
            with track(f"push {plan.reference}") as tracker:
                on_event = LayerTally().feed(tracker)  # bytes and layers, every few seconds
                for chunk in self.client.api.push(self.image, tag=plan.version, stream=True,
                                                  decode=True):
                    if "error" in chunk:
                        raise ImageError(
                            f"push of {plan.reference} failed: {REDACTOR(str(chunk['error']))}",
                            hint=f"check {USERNAME_ENV}/{TOKEN_ENV} and the registry",
                        )
                    on_event(chunk)
                    layer, status = chunk.get("id"), chunk.get("status", "")
                    if layer and status and seen.get(layer) != status and status != "Pushing":
                        seen[layer] = status
                        self.progress(f"{layer}: {status}")
                    elif not layer and status:
                        self.progress(status)
        except ObsError:
            raise
        except Exception as exc:
            raise ImageError(f"push of {plan.reference} failed: {_docker_message(exc)}") from None

    def tag(self, plan: ReleasePlan) -> None:
        self.git.create_annotated_tag(plan.version, f"Release {plan.version}\n\nImage: "
                                                   f"{plan.reference}")

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


def buildx_argv(plan: ReleasePlan, cfg: ObsdeployConfig) -> list[str]:
    """`docker buildx build` for the release: its labels and build args, for `platforms`.
    One platform is loaded into the local engine (the push step pushes it, as with the
    legacy builder); several can only live in a registry, so they are pushed by the build
    itself (an image index), and the push step then finds them there."""
    argv = ["docker", "buildx", "build", "--platform", ",".join(cfg.platforms),
            "-f", str(cfg.context_dir / cfg.dockerfile), "-t", plan.reference]
    for key, value in plan.labels.items():
        argv += ["--label", f"{key}={value}"]
    for key, value in cfg.build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    argv.append("--load" if len(cfg.platforms) == 1 else "--push")
    argv.append(str(cfg.context_dir))
    return argv


def plan_release(cfg: ObsdeployConfig, version: str, actions: ReleaseActions, *,
                 allow_dirty: bool = False, dry_run: bool = False) -> ReleasePlan:
    version = validate_version(version)
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
        actions.login(creds)
        steps.append(Step(name="login", state="done",
                          description=f"log in to {actions.registry} as {creds.username}"))

    reference = f"{actions.image}:{version}"
    remote_rev = actions.remote_revision(reference)
    if remote_rev is not None and remote_rev != head:
        raise UsageError(
            f"{reference} is already in the registry with revision "
            f"{remote_rev[:12] or '(none)'}, not HEAD ({head[:12]})",
            hint="released image tags are immutable and never overwritten: release a new version",
        )
    pushed = remote_rev == head
    built = pushed or actions.local_revision(reference) == head
    source = cfg.source or source_url(git.remote_url(cfg.git_remote))
    labels = {
        LABEL + "version": version,
        LABEL + "revision": head,
        LABEL + "source": source,
        LABEL + "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }

    def state(done: bool) -> StepState:
        return "already-done" if done else "todo"

    steps += [
        Step(name="build", state=state(built),
             description=f"build {reference} from {cfg.context_dir} ({cfg.dockerfile})"),
        Step(name="push", state=state(pushed), description=f"push {reference}"),
        Step(name="tag", state=state(local_tag == head),
             description=f"create the annotated tag {version} on {head[:12]}"),
        Step(name="push-tag", state=state(remote_tag == head),
             description=f"push the tag {version} to {cfg.git_remote}"),
    ]
    return ReleasePlan(
        version=version, image=actions.image, reference=reference, registry=actions.registry,
        revision=head, source=source, git_remote=cfg.git_remote, dry_run=dry_run,
        labels=labels, steps=steps,
    )


def execute(plan: ReleasePlan, actions: ReleaseActions,
            on_step: Callable[[Step], None] = lambda s: None) -> Iterator[Step]:
    """Run the steps still to do, in order; yields each as it finishes."""
    runners: dict[str, Callable[[ReleasePlan], None]] = {
        "build": actions.build, "push": actions.push,
        "tag": actions.tag, "push-tag": actions.push_tag,
    }
    for step in plan.steps:
        if step.state != "todo":
            continue
        on_step(step)
        try:
            runners[step.name](plan)
        except BaseException:
            step.state = "failed"
            raise
        step.state = "done"
        if os.environ.get(DIE_AFTER_ENV) == step.name:
            log.warning("%s=%s: killing myself", DIE_AFTER_ENV, step.name)
            os.kill(os.getpid(), signal.SIGKILL)
        yield step
