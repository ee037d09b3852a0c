"""The service images' cache key (tests/parts_images.py): a tag changes with anything that
makes the image, so a changed recipe is never served from a stale image."""

from __future__ import annotations

from dataclasses import replace

from tests import parts_images
from tests.parts_images import RECIPES, recipe_tag

POSTGRES = next(r for r in RECIPES if r.name == "postgres")


def test_tag_is_stable_and_named() -> None:
    tag = recipe_tag(POSTGRES, "obs-test/debian:0123456789ab")
    assert tag == recipe_tag(POSTGRES, "obs-test/debian:0123456789ab")
    assert tag.startswith("obs-test/postgres:") and len(tag.split(":")[1]) == 12


def test_tag_changes_with_the_base_the_dockerfile_and_each_file() -> None:
    base = "obs-test/debian:0123456789ab"
    tags = {
        recipe_tag(POSTGRES, base),
        recipe_tag(POSTGRES, "obs-test/debian:ba9876543210"),
        recipe_tag(replace(POSTGRES, dockerfile=POSTGRES.dockerfile + "ENV X=1\n"), base),
        recipe_tag(replace(POSTGRES, files={"entrypoint.sh": "#!/bin/sh\nexec true\n"}), base),
        recipe_tag(replace(POSTGRES, executable=()), base),
    }
    assert len(tags) == 5


def test_base_tag_changes_with_what_is_written_into_the_root(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    before = parts_images.base_tag()
    monkeypatch.setattr(parts_images, "POLICY_RC_D", "#!/bin/sh\nexit 0\n")
    assert parts_images.base_tag() != before


def test_every_recipe_is_one_apt_layer_without_recommends() -> None:
    for recipe in RECIPES:
        assert recipe.dockerfile.count("apt-get install") == 1, recipe.name
        assert "--no-install-recommends" in recipe.dockerfile, recipe.name
        assert recipe.dockerfile.startswith("FROM {base}\n"), recipe.name
