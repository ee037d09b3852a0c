"""A local stand-in for `python:3.11-slim` (issue 12): a minimal Debian with Python, made with
debootstrap from the machine's own Debian mirror and imported into the engine, so the shipped
examples/observer/Dockerfile builds as it is, with no registry on the internet.

debootstrap takes minutes, so the imported image is the cache: when the engine already has
it, it is reused (tagged again as the Dockerfile's base if that tag was removed). Its tag
carries a hash of what goes into it, so a change of the recipe builds a new one; one process
on the machine builds it at a time (the workers of a run, other sessions), the others wait
and reuse it."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests import runs

# The image the Dockerfile starts FROM, and the name of the cached import (its content is
# bookworm's python3, not the Python project's 3.11 build: close enough for the example,
# which uses the standard library only).
BASE_TAG = "python:3.11-slim"
SUITE = "bookworm"
# python3-minimal is the interpreter; libpython3.11-stdlib holds http.server, json, logging.
PACKAGES = ("python3-minimal", "libpython3.11-stdlib", "ca-certificates")
RECIPE = 2  # raise when ensure_base_image changes what it makes
CACHED = "obs-debian-python:" + SUITE + "-" + hashlib.sha256(
    repr((SUITE, PACKAGES, RECIPE)).encode()).hexdigest()[:12]
SOURCES = Path("/etc/apt/sources.list.d")
LOCK = Path("/tmp/obs-debian-base.lock")


def debian_mirror() -> str:
    """The machine's Debian mirror, from its deb822 or one-line apt sources."""
    for f in sorted(SOURCES.glob("*.sources")) + sorted(SOURCES.glob("*.list")):
        text = f.read_text()
        m = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.M) or re.search(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s", text, re.M)
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


def _has(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], capture_output=True,
                          timeout=60).returncode == 0


def ensure_base_image() -> str:
    """Make sure BASE_TAG exists on the engine; returns it."""
    from filelock import FileLock

    with FileLock(str(LOCK)):
        if not _has(CACHED):
            _build()
        subprocess.run(["docker", "tag", CACHED, BASE_TAG], check=True, capture_output=True, timeout=60)
    return BASE_TAG


def _build() -> None:
    """debootstrap the root and import it as CACHED."""
    if not shutil.which("debootstrap"):
        raise FileNotFoundError("debootstrap")
    with tempfile.TemporaryDirectory(prefix="obs-debootstrap-", dir="/var/tmp") as tmp:
        runs.record("dir", tmp)
        target = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                        SUITE, str(target), debian_mirror()],
                       check=True, capture_output=True, timeout=1800)
        # The Dockerfile (like python:3.11-slim) calls `python`.
        (target / "usr/local/bin/python").symlink_to("/usr/bin/python3")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(target / junk, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(target), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "--change", 'CMD ["python3"]', "-", CACHED],
                       stdin=tar.stdout, check=True, capture_output=True, timeout=600)
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0:
            raise RuntimeError("tar of the debootstrapped root failed")


if __name__ == "__main__":
    print(ensure_base_image())
