"""Issue 15: `obsdeploy release` says how far its push is. Off a terminal (a CI log), a line
every `progress_seconds` with the bytes and layers pushed, on stderr: with --json, stdout is
the JSON document alone."""

from __future__ import annotations

import json
import os
import re
import subprocess

from tests.faults import FaultProxy
from tests.integration.obsdeploy_fixtures import (  # noqa: F401 (fixtures)
    REG_PASSWORD,
    REG_USER,
    AppRepo,
    app_repo,
    auth_registry,
)

CREDS = {"GHCR_USERNAME": REG_USER, "GHCR_TOKEN": REG_PASSWORD}


def test_a_slow_push_reports_its_progress(app_repo: AppRepo, auth_registry) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    proxy = FaultProxy(auth_registry.address).start()
    image = f"{proxy.address}/acme/observer"
    try:
        (app_repo.path / "blob").write_bytes(os.urandom(12 * 1024 * 1024))  # incompressible
        (app_repo.path / "Dockerfile").write_text("FROM scratch\nCOPY app.txt blob /\n")
        toml = (app_repo.path / "obsdeploy.toml").read_text()
        (app_repo.path / "obsdeploy.toml").write_text(
            toml.replace(app_repo.image, image).replace("[deploy]", "progress_seconds = 0.5\n[deploy]"))
        app_repo.git("add", "-A")
        app_repo.git("commit", "-q", "-m", "a large layer")
        proxy.set("slow", delay=0.015, upload=True)  # every chunk to the registry held back

        res = app_repo.release("v1.4.0", "--json", **CREDS)
        assert res.returncode == 0, res.stdout + res.stderr
        assert json.loads(res.stdout)["version"] == "v1.4.0"  # stdout: the JSON alone
        push = re.compile(rf"INFO push {re.escape(image)}:v1\.4\.0: (\d+\.\d) MB of (\d+\.\d) MB "
                          r"\(\d+%\), (\d+)/(\d+) layers")
        seen = push.findall(res.stderr)
        assert len(seen) >= 2, res.stderr  # lines while it pushed, not one at the end
        done = [float(m[0]) for m in seen]
        assert done == sorted(done) and done[-1] > done[0], seen
        assert re.search(rf"INFO push {re.escape(image)}:v1\.4\.0: done, ", res.stderr), res.stderr
        assert REG_PASSWORD not in res.stdout + res.stderr
    finally:
        proxy.stop()
        subprocess.run(["docker", "rmi", f"{image}:v1.4.0"], capture_output=True)
