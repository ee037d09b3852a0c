"""What `obsdeploy release` builds: the images of obsdeploy.toml, each with the digest of its
build context.

Three forms, one list of `ImageSpec`: `image` (the one-image form), `[[images]]`, or
`images_from`, a compose file whose release services (a `build:` section and an `image:` of
`REPOSITORY:${IMAGE_TAG}`) are the images. The compose file is read through
`docker compose config`, so its context, dockerfile, target and args are compose's own
reading of it (interpolation, extends, profiles...), never ours.

The context digest (label `dev.obsdeploy.context-digest`) says what a build would be made of:
the files Docker sends as the build context (the docker SDK's own `.dockerignore` matching),
their modes and contents, the dockerfile's text, the target and the build args. Two builds with
the same digest make the same image, which is what lets a release tag the previous release's
image again instead of building it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from pydantic import BaseModel, Field

from server_agent.common.errors import CommandError, UsageError

from .config import IMAGE_NAME, ObsdeployConfig, check_image

CONTEXT_LABEL = "dev.obsdeploy.context-digest"


class ImageSpec(BaseModel):
    name: str
    image: str  # repository, pushed as image:VERSION
    context: Path
    dockerfile: str  # as `docker build -f` takes it: relative to the context, or absolute
    target: str | None = None
    build_args: dict[str, str] = Field(default_factory=dict)

    @property
    def dockerfile_path(self) -> Path:
        return self.context / self.dockerfile


def resolve_images(cfg: ObsdeployConfig) -> list[ImageSpec]:
    if cfg.images_from:
        return compose_images(cfg.base_dir / cfg.images_from)
    if cfg.images:
        return [ImageSpec(name=i.name, image=i.image, context=(cfg.base_dir / i.context).resolve(),
                          dockerfile=i.dockerfile, target=i.target, build_args=i.build_args)
                for i in cfg.images]
    image = cfg.require_image()
    return [ImageSpec(name=image.rsplit("/", 1)[-1], image=image, context=cfg.context_dir,
                      dockerfile=cfg.dockerfile, build_args=cfg.build_args)]


def compose_images(file: Path) -> list[ImageSpec]:
    """The release services of a compose file that have a `build:` section."""
    from server_agent.common.runner import run

    if not file.is_file():
        raise UsageError(f"images_from: {file} does not exist", hint="check images_from in obsdeploy.toml")
    # IMAGE_TAG set to a marker no compose file contains: an image that holds it after
    # interpolation is built from ${IMAGE_TAG} (the agent's rule for a release service).
    marker = f"obsdeploy-image-tag-{os.urandom(8).hex()}"
    try:
        res = run(["docker", "compose", "-f", str(file), "config", "--format", "json"],
                  env={**os.environ, "IMAGE_TAG": marker}, cwd=file.parent, timeout=120)
    except CommandError as exc:
        raise UsageError(f"images_from: `docker compose config` of {file} failed: "
                         f"{exc.stderr.strip()[-500:]}",
                         hint="fix the compose file (or set the variables it needs)") from None
    services = json.loads(res.stdout).get("services") or {}
    specs: list[ImageSpec] = []
    for name, svc in sorted(services.items()):
        build, image = svc.get("build"), str(svc.get("image") or "")
        if not build or marker not in image:
            continue
        where = f"images_from: service {name} of {file.name}"
        repository, _, tag = image.rpartition(":")
        try:
            if tag != marker or not IMAGE_NAME.fullmatch(name):
                raise ValueError("must be REPOSITORY:${IMAGE_TAG}, the tag the release pushes")
            check_image(repository)
        except ValueError as exc:
            shown = image.replace(marker, "${IMAGE_TAG}")
            raise UsageError(f"{where}: image {shown!r} {exc}",
                             hint="write image: REGISTRY/OWNER/NAME:${IMAGE_TAG}") from None
        if "dockerfile_inline" in build:
            raise UsageError(f"{where}: build.dockerfile_inline is not supported by release",
                             hint="put the dockerfile in a file and name it in build.dockerfile")
        args = {k: str(v) for k, v in (build.get("args") or {}).items() if v is not None}
        spec = ImageSpec(name=name, image=repository, context=Path(build["context"]),
                         dockerfile=build.get("dockerfile") or "Dockerfile",
                         target=build.get("target"), build_args=args)
        same = next((s for s in specs if s.image == repository), None)
        if same is not None:
            # Two services of one image (an app and its worker with another command): one
            # build, when they build it alike.
            if same.model_dump(exclude={"name"}) != spec.model_dump(exclude={"name"}):
                raise UsageError(f"{where}: its image {repository} is also service {same.name}'s, "
                                 "built another way",
                                 hint="give each image one build: section, or different images")
            continue
        specs.append(spec)
    if not specs:
        raise UsageError(f"images_from: no service of {file} has both a build: section and an "
                         "image: of ${IMAGE_TAG}",
                         hint="give each service to release `build:` and `image: REPOSITORY:${IMAGE_TAG}`")
    return specs


def dockerignore_patterns(context: Path) -> list[str]:
    """The context's .dockerignore lines, read as the docker SDK's build reads them."""
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def context_files(spec: ImageSpec) -> list[str]:
    """The paths (files and directories, relative to the context) Docker sends, sorted."""
    from docker.utils.build import exclude_paths

    check_context(spec)
    df = spec.dockerfile_path.resolve()
    inside = df.is_relative_to(spec.context.resolve())
    rel = os.path.relpath(df, spec.context.resolve()) if inside else None
    return sorted(exclude_paths(str(spec.context), dockerignore_patterns(spec.context),
                                dockerfile=rel))


def check_context(spec: ImageSpec) -> None:
    if not spec.context.is_dir():
        raise UsageError(f"build context {spec.context} of image {spec.name} does not exist",
                         hint="check `context`")
    if not spec.dockerfile_path.is_file():
        raise UsageError(f"dockerfile {spec.dockerfile_path} of image {spec.name} does not exist",
                         hint="check `dockerfile` (relative to the context)")


def context_digest(spec: ImageSpec) -> str:
    """sha256 over the context as Docker sends it, the dockerfile, the target and the args.

    Each entry counts with its path, type, permission bits and content (a symlink: its
    target). Owners and mtimes do not: a fresh checkout of the same commit has new mtimes,
    and the classic builder gives COPY'd files to root anyway."""
    h = hashlib.sha256()

    def put(*fields: str | bytes) -> None:
        for f in fields:
            h.update(f.encode() if isinstance(f, str) else f)
            h.update(b"\0")

    for rel in context_files(spec):
        path = spec.context / rel
        st = os.lstat(path)
        mode = oct(stat.S_IMODE(st.st_mode))
        if stat.S_ISLNK(st.st_mode):
            put("link", rel, mode, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            put("dir", rel, mode)
        else:
            put("file", rel, mode, _file_sha256(path))
    put("dockerfile", spec.dockerfile_path.read_bytes())
    put("target", spec.target or "")
    for key, value in sorted(spec.build_args.items()):
        put("arg", key, value)
    return "sha256:" + h.hexdigest()


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
