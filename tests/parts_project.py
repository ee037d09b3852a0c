"""A compose project like the seed's (SPEC §14), for the tests and the demo: an accessory
(`kv`), a job (`migrate`), two ordered release services (`gateway` with container_name and the
path contract, then `scanner`), and a start-first `worker` with 2 replicas."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests import parts

KV_REPOSITORY = "obs/kv"
KV_TAG = "7"
# Extra fixture releases of obs/observer for a project (tests/fixtures/image/observer.sh).
PROJECT_RELEASES = {
    "v3.0.0-scannercrash": "crash-scanner",  # step 2 (scanner) crashes; gateway and worker are fine
    "v3.0.0-badjob": "badjob",  # the migrate job fails; the services themselves would be fine
}

PROJECT_TEMPLATE = """\
services:
  kv:
    image: {registry}/{kv}:{kv_tag}
    restart: unless-stopped
    healthcheck: &health
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8000/health"]
      interval: 0.5s
      timeout: 1s
      retries: 3
  migrate:
    image: {registry}/{repository}:${{IMAGE_TAG:?IMAGE_TAG required}}
    labels:
      obsdeploy.role: job
    command:
      - /bin/sh
      - -c
      - >-
        echo "migrating to $$VERSION";
        if [ "$$MODE" = badjob ]; then echo "migration 0042 failed: column exists" >&2; exit 4; fi;
        if [ "$$MODE" = slow ]; then sleep 60; fi;
        echo "$$VERSION" >> /app/data/observer/migrations.log
    volumes:
      - ./data:/app/data/observer
  gateway:
    image: {registry}/{repository}:${{IMAGE_TAG:?IMAGE_TAG required}}
    container_name: {project}-gateway
    labels:
      obsdeploy.order: "1"
    restart: unless-stopped
    stop_grace_period: 5s
    depends_on: [kv]
    ports:
      - "127.0.0.1:{port}:8000"
    environment:
      QTS_OBSERVER_STANDALONE: ${{QTS_OBSERVER_STANDALONE}}
      PYTHONPATH: ${{PYTHONPATH}}
      KIS_API_KEY: ${{KIS_API_KEY}}
      KIS_API_SECRET: ${{KIS_API_SECRET}}
    volumes:
      - ./data:/app/data/observer
      - ./logs:/app/logs
      - ./config:/app/config
    healthcheck: *health
  scanner:
    image: {registry}/{repository}:${{IMAGE_TAG:?IMAGE_TAG required}}
    labels:
      obsdeploy.order: "2"
    restart: unless-stopped
    stop_grace_period: 5s
    depends_on: [gateway]
    environment:
      ROLE: scanner
    healthcheck: *health
  worker:
    image: {registry}/{repository}:${{IMAGE_TAG:?IMAGE_TAG required}}
    restart: unless-stopped
    stop_grace_period: 5s
    environment:
      ROLE: worker
    deploy:
      replicas: 2
      update_config:
        order: start-first
    healthcheck: *health
"""


def build_project_images(client: Any, registry: str) -> None:
    """The accessory's image and the extra releases, on the fixture base image that
    parts.build_fixture_images built."""
    parts.build_release(client, registry, KV_REPOSITORY, KV_TAG, "healthy")
    for tag, mode in PROJECT_RELEASES.items():
        parts.build_release(client, registry, parts.REPOSITORY, tag, mode)


def make_project_root(path: Path, registry: str, project: str, **agent: object) -> parts.AgentRootDir:
    root = parts.make_agent_root(path, registry, project, **agent)
    (path / "docker-compose.server.yml").write_text(PROJECT_TEMPLATE.format(
        registry=registry, repository=parts.REPOSITORY, kv=KV_REPOSITORY, kv_tag=KV_TAG,
        project=project, port=root.port))
    return root


def containers(project: str) -> list[dict[str, Any]]:
    """docker inspect of every container of the project (one-off ones included)."""
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                         capture_output=True, text=True, check=True).stdout.split()
    if not ids:
        return []
    # A container may go between the two calls (a job's `compose run --rm`, a removed old
    # one): inspect then prints the others and exits 1. A thread sampling during a deploy
    # (WorkerWatch) died of that, and its test failed on the counts it never took.
    res = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True)
    if res.returncode != 0 and "No such object" not in res.stderr:
        raise subprocess.CalledProcessError(res.returncode, res.args, res.stdout, res.stderr)
    return json.loads(res.stdout or "[]")  # type: ignore[no-any-return]


def running(project: str, service: str) -> list[dict[str, Any]]:
    return [c for c in containers(project)
            if c["Config"]["Labels"].get("com.docker.compose.service") == service
            and c["State"]["Running"]]


def release_of(c: dict[str, Any]) -> str | None:
    return c["Config"]["Labels"].get("obsdeploy.release")  # type: ignore[no-any-return]
