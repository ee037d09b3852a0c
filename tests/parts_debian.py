"""A local stand-in for `python:3.11-slim` (issue 12): a minimal Debian with Python, from the
machine's own Debian mirror, so the shipped examples/observer/Dockerfile builds as it is, with
no registry on the internet.

It is the "python" image of tests/parts_images.py: bookworm's python3 installed on the suite's
one debootstrapped base (debootstrap takes minutes; the service images share that base), and
cached on the engine by a content hash of its recipe like the others. Here it is tagged again
as the Dockerfile's base. This module also knows the machine's Debian mirror and suite, which
the base is made from."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

# The image the Dockerfile starts FROM (its content is bookworm's python3, not the Python
# project's 3.11 build: close enough for the example, which uses the standard library only).
BASE_TAG = "python:3.11-slim"
SUITE = "bookworm"
SOURCES = Path("/etc/apt/sources.list.d")


def debian_mirror() -> str:
    """The machine's Debian mirror, from its deb822 or one-line apt sources."""
    for f in sorted(SOURCES.glob("*.sources")) + sorted(SOURCES.glob("*.list")):
        text = f.read_text()
        m = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.M) or re.search(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s", text, re.M)
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


def ensure_base_image() -> str:
    """Make sure BASE_TAG exists on the engine (built when the engine lacks its recipe's
    image); returns it."""
    from tests import parts_images

    ref = parts_images.ensure_images(("python",)).refs["python"]
    subprocess.run(["docker", "tag", ref, BASE_TAG], check=True, capture_output=True, timeout=60)
    return BASE_TAG


if __name__ == "__main__":
    print(ensure_base_image())
