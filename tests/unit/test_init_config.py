"""obs-agent init's decisions as values (SPEC §24): what compose gave in, the config out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from server_agent.common.errors import UsageError
from server_agent.compose import ComposeConfig
from server_agent.init_config import (
    decide,
    find_compose_file,
    health_choice,
    is_secret,
    required_vars,
    write_config,
)

ROOT = Path("/srv/app")
APP_IMAGE = "${REGISTRY:?set REGISTRY}/app:${IMAGE_TAG:?IMAGE_TAG required}"

WRITTEN: dict[str, Any] = {"services": {
    "api": {"image": APP_IMAGE,
            "environment": {"DB_PASSWORD": "${DB_PASSWORD:?set it}", "API_TOKEN": "${API_TOKEN?}",
                            "PORT": "${PORT:-8080}", "LITERAL": "$${NOT_REQUIRED:?}"}},
    "db": {"image": "postgres:15", "environment": {"POSTGRES_PASSWORD": "${DB_PASSWORD:?set it}"}},
}}


def _resolved(api: dict[str, Any], **more: dict[str, Any]) -> ComposeConfig:
    services = {"api": {"image": "reg/app:v0.0.0", **api}, "db": {"image": "postgres:15"}, **more}
    templates = {"api": "reg/app:${IMAGE_TAG}", "db": "postgres:15"}
    templates.update({n: s["image"] for n, s in more.items()})
    return ComposeConfig({"services": services}, templates)


HEALTHCHECK = {"test": ["CMD", "curl", "-fsS", "http://localhost:8080/healthz"]}
PUBLISHED = [{"target": 8080, "published": "18080", "host_ip": "127.0.0.1", "protocol": "tcp"}]


def test_required_and_secret_variables_come_from_what_the_file_requires() -> None:
    assert required_vars(WRITTEN) == ["API_TOKEN", "DB_PASSWORD", "REGISTRY"]
    assert [n for n in ("DB_PASSWORD", "API_TOKEN", "AWS_SECRET", "X_KEY", "REGISTRY", "KEYS")
            if is_secret(n)] == ["DB_PASSWORD", "API_TOKEN", "AWS_SECRET", "X_KEY"]
    choice = decide("compose.yaml", ROOT, WRITTEN, _resolved({}))
    assert choice.required_env == ("REGISTRY",)
    assert choice.secret_env == ("API_TOKEN", "DB_PASSWORD")
    assert choice.release_services == ("api",) and choice.accessories == ("db",)


def test_health_url_from_the_published_port_and_the_healthcheck_path() -> None:
    choice = decide("compose.yaml", ROOT, WRITTEN, _resolved({"healthcheck": HEALTHCHECK, "ports": PUBLISHED}))
    assert choice.health.url == "http://127.0.0.1:18080/healthz"
    assert choice.agent()["health_url"] == "http://127.0.0.1:18080/healthz"
    # Published on every address: asked on the loopback.
    anywhere = [{**PUBLISHED[0], "host_ip": ""}]
    assert health_choice("api", {"healthcheck": HEALTHCHECK, "ports": anywhere}).url == \
        "http://127.0.0.1:18080/healthz"


@pytest.mark.parametrize("service, suggested", [
    ({"ports": PUBLISHED}, "http://127.0.0.1:18080/health"),  # no healthcheck
    ({"healthcheck": {"test": ["CMD", "pg_isready"]}, "ports": PUBLISHED}, "http://127.0.0.1:18080/health"),
    ({"healthcheck": HEALTHCHECK, "expose": ["8080"]}, "http://127.0.0.1:8080/health"),  # not published
    ({"healthcheck": HEALTHCHECK, "ports": [{**PUBLISHED[0], "target": 9000}]}, "http://127.0.0.1:18080/health"),
])
def test_without_both_no_health_url_but_a_commented_choice(service: dict[str, Any], suggested: str) -> None:
    choice = decide("compose.yaml", ROOT, WRITTEN, _resolved(service))
    assert choice.health.url is None and "health_url" not in choice.agent()
    readme = "\n".join(choice.readme("deployment_config.json"))
    assert f'// "health_url": "{suggested}"' in readme


def test_no_port_at_all_says_the_gate_judges_the_containers() -> None:
    choice = decide("compose.yaml", ROOT, WRITTEN, _resolved({}))
    assert choice.health.url is None and "no port" in choice.health.note


def test_the_observer_defaults_are_set_empty_unless_its_contract_is_mounted() -> None:
    plain = decide("compose.yaml", ROOT, WRITTEN, _resolved({})).agent()
    assert plain["mounts"] == {} and plain["verify"] == {"paths": []} and plain["env_aliases"] == {}
    contract = {"volumes": [{"type": "bind", "source": "/srv/app/config", "target": "/app/config"}]}
    observer = decide("compose.yaml", ROOT, WRITTEN, _resolved(contract))
    assert observer.observer_contract == ("api",)
    assert not {"mounts", "verify", "env_aliases"} & set(observer.agent())
    # A bind mount elsewhere is not the contract.
    other = {"volumes": [{"type": "bind", "source": "/srv/app", "target": "/code"}]}
    assert decide("compose.yaml", ROOT, WRITTEN, _resolved(other)).agent()["mounts"] == {}


def test_no_release_service_says_how_to_mark_one() -> None:
    none = ComposeConfig({"services": {"db": {"image": "postgres:15"}}}, {"db": "postgres:15"})
    with pytest.raises(UsageError) as exc:
        decide("compose.yaml", ROOT, WRITTEN, none)
    assert "${IMAGE_TAG" in str(exc.value) and "obsdeploy.role: release" in str(exc.value)
    labelled = ComposeConfig({"services": {"db": {"image": "pg:15", "labels": {"obsdeploy.role": "release"}}}},
                             {"db": "pg:15"})
    assert decide("compose.yaml", ROOT, {}, labelled).release_services == ("db",)


def test_service_picks_the_release_service_and_must_be_one() -> None:
    more = {"admin": {"image": "reg/admin:v0.0.0", "healthcheck": HEALTHCHECK,
                      "ports": [{**PUBLISHED[0], "published": "19000"}]}}
    resolved = _resolved({"healthcheck": HEALTHCHECK, "ports": PUBLISHED}, **more)
    resolved.templates["admin"] = "reg/admin:${IMAGE_TAG}"
    assert decide("c.yaml", ROOT, {}, resolved).health.url == "http://127.0.0.1:18080/healthz"
    assert decide("c.yaml", ROOT, {}, resolved, "admin").health.url == "http://127.0.0.1:19000/healthz"
    for wrong, said in (("db", "not a release service"), ("nope", "not a service")):
        with pytest.raises(UsageError) as exc:
            decide("c.yaml", ROOT, {}, resolved, wrong)
        assert said in str(exc.value)


def test_compose_file_found_as_compose_does(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--compose FILE"):
        find_compose_file(tmp_path, None)
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    assert find_compose_file(tmp_path, None) == "docker-compose.yml"
    (tmp_path / "compose.yaml").write_text("services: {}\n")
    assert find_compose_file(tmp_path, None) == "compose.yaml"
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "prod.yml").write_text("services: {}\n")
    assert find_compose_file(tmp_path, "deploy/prod.yml") == "deploy/prod.yml"
    assert find_compose_file(tmp_path, str(tmp_path / "deploy/prod.yml")) == "deploy/prod.yml"
    for bad in ("missing.yml", "/etc/hostname", "../x.yml"):
        with pytest.raises(UsageError):
            find_compose_file(tmp_path, bad)


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    choice = decide("compose.yaml", tmp_path, WRITTEN, _resolved({}))
    path = write_config(tmp_path, choice, force=False)
    assert json.loads(path.read_text())["agent"]["compose_file"] == "compose.yaml"
    path.write_text('{"agent": {"health_url": "http://x"}}')
    with pytest.raises(UsageError) as exc:
        write_config(tmp_path, choice, force=False)
    assert "--force" in str(exc.value)
    assert "http://x" in path.read_text()
    write_config(tmp_path, choice, force=True)
    assert "http://x" not in path.read_text()
