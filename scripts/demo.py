"""The demo behind `bash scripts/demo` (run that: it installs what this needs first).

One machine plays every part: a sample app repository on the "laptop", the registry on
127.0.0.1:5000 standing in for GHCR, an sshd on loopback standing in for the VM, and the
agent root /tmp/obsdeploy-demo/server/observer on that "VM".
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.parts import SECRETS, free_port, wait_port  # noqa: E402
from tests.parts_ssh import Sshd  # noqa: E402

BIN = Path(sys.executable).parent
WORK = Path("/tmp/obsdeploy-demo")
REGISTRY = "127.0.0.1:5000"
PROJECT = "obsdemo"


def say(text: str) -> None:
    print(f"\n\033[1;34m==> {text}\033[0m", flush=True)


def sh(argv: list[str], cwd: Path | None = None, ok: tuple[int, ...] = (0,), env: dict[str, str] | None = None) -> int:
    print(f"\033[2m$ {shlex.join(argv)}\033[0m", flush=True)
    code = subprocess.run(argv, cwd=cwd, env={**os.environ, **(env or {})}).returncode
    if code not in ok:
        sys.exit(f"demo: {argv[0]} exited {code}, expected {ok}")
    return code


def git(app: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=Demo", "-c", "user.email=demo@example.invalid", *args],
                   cwd=app, check=True, capture_output=True)


def clean_previous_run() -> None:
    pid = WORK / "vm" / "sshd.pid"
    if pid.exists():
        subprocess.run(["kill", pid.read_text().strip()], capture_output=True)
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"],
                         capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    shutil.rmtree(WORK, ignore_errors=True)


def make_app(image: str, sshd: Sshd, known_hosts: Path) -> Path:
    """A sample app repository: the fixture observer (busybox, FROM scratch) and obsdeploy.toml."""
    app = WORK / "app"
    app.mkdir(parents=True)
    shutil.copy(REPO / "tests/fixtures/image/observer.sh", app / "observer.sh")
    shutil.copy("/bin/busybox", app / "busybox")
    (app / "Dockerfile").write_text(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n"
        "COPY observer.sh /app/observer.sh\nARG MODE=healthy\nENV MODE=$MODE\n"
        "CMD [\"/bin/sh\", \"/app/observer.sh\"]\n"
    )
    (app / "obsdeploy.toml").write_text(
        f'image = "{image}"\n'
        'build_args = { MODE = "healthy" }\n'
        "\n[deploy]\n"
        f'hosts = ["{sshd.address}"]\n'
        f'identity = "{sshd.client_key}"\n'
        f'known_hosts = "{known_hosts}"\n'
        f'agent_command = "{BIN / "obs-agent"}"\n'
    )
    remote = WORK / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    git(app, "init", "-q", "-b", "main")
    git(app, "remote", "add", "origin", str(remote))
    git(app, "add", ".")
    git(app, "commit", "-q", "-m", "observer: first release")
    return app


def make_accessory_image() -> str:
    """The demo's accessory, a stand-in key-value store: busybox httpd on :6379, built here
    (accessories are pulled only when missing, so a local image is enough)."""
    ctx = WORK / "kv"
    ctx.mkdir(parents=True)
    shutil.copy("/bin/busybox", ctx / "busybox")
    (ctx / "Dockerfile").write_text(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n"
        "RUN mkdir -p /www && echo PONG > /www/ping\n"
        "CMD [\"httpd\", \"-f\", \"-p\", \"6379\", \"-h\", \"/www\"]\n")
    subprocess.run(["docker", "build", "-q", "-t", f"{PROJECT}-kv:7", str(ctx)], check=True,
                   capture_output=True)
    return f"{PROJECT}-kv:7"


def make_server(port: int, kv_image: str) -> Path:
    root = WORK / "server" / "observer"
    root.mkdir(parents=True)
    image = "${IMAGE_TAG:?IMAGE_TAG required}"
    (root / "docker-compose.server.yml").write_text(f"""\
# The observer (release: its image follows IMAGE_TAG), a key-value store beside it
# (accessory: never restarted by a deploy) and a migration (job: runs once per deploy,
# before the switch).
services:
  kv:
    image: {kv_image}
    restart: unless-stopped
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:6379/ping"]
      interval: 1s
  migrate:
    image: {REGISTRY}/{PROJECT}-{{run}}/observer:{image}
    labels:
      obsdeploy.role: job
    environment:
      VERSION: ${{IMAGE_TAG}}
    command:
      - /bin/sh
      - -c
      - echo "migrating the archive to $$VERSION"; echo $$VERSION >> /app/data/observer/migrations.log
    volumes:
      - ./data:/app/data/observer
  observer:
    image: {REGISTRY}/{PROJECT}-{{run}}/observer:{image}
    restart: unless-stopped
    stop_grace_period: 10s
    ports: ["127.0.0.1:{port}:8000"]
    environment:
      QTS_OBSERVER_STANDALONE: ${{QTS_OBSERVER_STANDALONE}}
      PYTHONPATH: ${{PYTHONPATH}}
      KIS_API_KEY: ${{KIS_API_KEY}}
      KIS_API_SECRET: ${{KIS_API_SECRET}}
      VERSION: ${{IMAGE_TAG}}
    depends_on: [kv]
    volumes:
      - ./data:/app/data/observer
      - ./logs:/app/logs
      - ./config:/app/config
""")
    (root / "deployment_config.json").write_text(json.dumps({
        "service": {"name": "observer"},
        "agent": {"project_name": PROJECT, "health_url": f"http://127.0.0.1:{port}/health",
                  "health_timeout": 30, "stabilize_seconds": 1, "min_free_mb": 100},
        "environment": {"QTS_OBSERVER_STANDALONE": "1", "PYTHONPATH": "/app/src"},
    }, indent=2))
    env = root / ".env"
    env.write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    env.chmod(0o600)
    return root


def main() -> None:
    t0 = time.monotonic()
    clean_previous_run()
    wait_port(5000)
    run = time.strftime("%Y%m%d%H%M%S")
    image = f"{REGISTRY}/{PROJECT}-{run}/observer"
    port = free_port()

    say("The VM: sshd on loopback with its own host key, and the agent root")
    root = make_server(port, make_accessory_image())
    compose = root / "docker-compose.server.yml"
    compose.write_text(compose.read_text().replace("{run}", run))
    sshd = Sshd(WORK / "vm", env={"OBS_AGENT_ROOT": str(root)}).start()
    known_hosts = sshd.write_known_hosts(WORK / "known_hosts")
    print(f"VM at {sshd.address}, agent root {root}, service on 127.0.0.1:{port}")

    say("The laptop: a sample app repository with obsdeploy.toml")
    app = make_app(image, sshd, known_hosts)
    obsdeploy = str(BIN / "obsdeploy")

    say("obsdeploy release v1.0.0: build, push, annotated tag, push the tag")
    sh([obsdeploy, "release", "v1.0.0"], cwd=app)

    say("obs-agent plan v1.0.0 on the VM: the job, the accessory, the steps (changes nothing)")
    sh([str(BIN / "obs-agent"), "--root", str(root), "plan", "v1.0.0"])

    say("obsdeploy deploy v1.0.0: SSH into the VM, run the agent there")
    sh([obsdeploy, "deploy", "v1.0.0"], cwd=app)
    sh(["wget", "-qO-", f"http://127.0.0.1:{port}/health"]) if shutil.which("wget") else None

    say("A broken change: v1.0.1's health endpoint answers an error")
    toml = app / "obsdeploy.toml"
    toml.write_text(toml.read_text().replace('MODE = "healthy"', 'MODE = "error"'))
    git(app, "commit", "-q", "-am", "observer: a bad change")
    sh([obsdeploy, "release", "v1.0.1"], cwd=app)

    say("obsdeploy deploy v1.0.1: the agent sees it fail and rolls back by itself (exit 20)")
    code = sh([obsdeploy, "deploy", "v1.0.1"], cwd=app, ok=(20,))

    say("obsdeploy status: v1.0.0 is serving again")
    sh([obsdeploy, "status"], cwd=app)

    say("obs-agent history on the VM, and the migrations the job ran (once per deploy, before the "
        "switch; never on a rollback)")
    sh([str(BIN / "obs-agent"), "--root", str(root), "history"])
    print("migrations.log:", (root / "data" / "migrations.log").read_text().split())

    sshd.stop()
    print(f"\ndemo done in {time.monotonic() - t0:.0f}s: v1.0.0 deployed, v1.0.1 failed its health gate "
          f"and was rolled back automatically (exit {code}). The service keeps running; "
          f"re-run `bash scripts/demo` any time.")


if __name__ == "__main__":
    main()
