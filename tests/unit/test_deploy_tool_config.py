"""obsdeploy.toml + OBSDEPLOY_* (SPEC §10): precedence, validation, messages naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy_tool.config import load_config
from server_agent.common.errors import ExitCode, UsageError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("OBSDEPLOY_"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "obsdeploy.toml"
    p.write_text(text)
    return p


def test_defaults_without_a_file(tmp_path: Path) -> None:
    cfg = load_config()
    assert cfg.image is None and cfg.git_remote == "origin" and cfg.dockerfile == "Dockerfile"
    assert cfg.deploy.batch == 1 and cfg.deploy.agent_command == "obs-agent"
    assert cfg.deploy.hosts == [] and cfg.deploy.agent_root is None
    with pytest.raises(UsageError, match="no image configured"):
        cfg.require_image()


def test_file_is_read_and_paths_are_relative_to_it(tmp_path: Path) -> None:
    sub = tmp_path / "app"
    sub.mkdir()
    p = sub / "obsdeploy.toml"
    p.write_text('image = "ghcr.io/tawbury/observer"\ncontext = "docker"\n'
                 'build_args = {PY = "3.11"}\n'
                 '[deploy]\nhosts = ["vm1", "deploy@vm2:2222"]\nbatch = 2\n'
                 'agent_root = "/srv/observer"\n')
    cfg = load_config(p)
    assert cfg.image == "ghcr.io/tawbury/observer"
    assert cfg.context_dir == (sub / "docker").resolve()
    assert cfg.build_args == {"PY": "3.11"}
    assert cfg.deploy.hosts == ["vm1", "deploy@vm2:2222"]
    assert cfg.deploy.batch == 2 and cfg.deploy.agent_root == "/srv/observer"


def test_canary_hosts_and_on_failure_from_the_file_and_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (load_config().deploy.canary_hosts, load_config().deploy.on_failure) == (
        0, "rollback-fleet")
    write(tmp_path, '[deploy]\ncanary_hosts = 1\non_failure = "stop"\n')
    assert (load_config().deploy.canary_hosts, load_config().deploy.on_failure) == (1, "stop")
    monkeypatch.setenv("OBSDEPLOY_CANARY_HOSTS", "2")
    monkeypatch.setenv("OBSDEPLOY_ON_FAILURE", "rollback-fleet")
    assert (load_config().deploy.canary_hosts, load_config().deploy.on_failure) == (
        2, "rollback-fleet")


def test_cwd_file_is_the_default(tmp_path: Path) -> None:
    write(tmp_path, 'image = "127.0.0.1:5000/acme/observer"\n')
    assert load_config().image == "127.0.0.1:5000/acme/observer"


def test_env_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, 'image = "ghcr.io/a/b"\n[deploy]\nhosts = ["vm1"]\nbatch = 2\n')
    monkeypatch.setenv("OBSDEPLOY_HOSTS", "vm7, root@vm8:2200,")
    monkeypatch.setenv("OBSDEPLOY_BATCH", "3")
    monkeypatch.setenv("OBSDEPLOY_IMAGE", "ghcr.io/a/c")
    monkeypatch.setenv("OBSDEPLOY_BUILD_ARGS", '{"X": "1"}')
    cfg = load_config()
    assert cfg.deploy.hosts == ["vm7", "root@vm8:2200"]
    assert cfg.deploy.batch == 3 and cfg.image == "ghcr.io/a/c" and cfg.build_args == {"X": "1"}


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        ('[deploy]\nport = 0\n', {}, "obsdeploy.toml: deploy.port"),
        ('[deploy]\nhostz = ["a"]\n', {}, "deploy.hostz: unknown key"),
        ('imagee = "x/y"\n', {}, "imagee: unknown key"),
        ('image = "ghcr.io/a/b:v1"\n', {}, "image: Value error, must be an image repository"),
        ("", {"OBSDEPLOY_BATCH": "0"}, "env OBSDEPLOY_BATCH"),
        ('[deploy]\non_failure = "ignore"\n', {}, "deploy.on_failure: Input should be"),
        ("", {"OBSDEPLOY_ON_FAILURE": "rollback"}, "env OBSDEPLOY_ON_FAILURE"),
        ("", {"OBSDEPLOY_CANARY_HOSTS": "-1"}, "env OBSDEPLOY_CANARY_HOSTS"),
        ("", {"OBSDEPLOY_PORT": "ssh"}, "env OBSDEPLOY_PORT"),
        ("", {"OBSDEPLOY_HOSTZ": "a"}, "unknown setting(s) in the environment: OBSDEPLOY_HOSTZ"),
        ("image = [", {}, "is not valid TOML"),
        ("deploy = 3\n", {}, "must be a table"),
    ],
)
def test_bad_configuration_names_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           toml: str, env: dict[str, str], expected: str) -> None:
    write(tmp_path, toml)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UsageError) as info:
        load_config()
    assert expected in str(info.value)
    assert info.value.exit_code == ExitCode.USAGE


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_buildx_argv_carries_platforms_labels_target_and_build_args(tmp_path: Path) -> None:
    from deploy_tool.release import ImagePlan, buildx_argv

    img = ImagePlan(name="app", image="ghcr.io/o/app", reference="ghcr.io/o/app:v1.0.0",
                    registry="ghcr.io", context=str(tmp_path), dockerfile="Dockerfile",
                    target=None, build_args={"PY": "3.11"}, context_digest="sha256:0",
                    labels={"org.opencontainers.image.revision": "a" * 40}, action="build")
    argv = buildx_argv(img, ["linux/amd64"])
    assert argv[:5] == ["docker", "buildx", "build", "--platform", "linux/amd64"]
    assert argv[-2:] == ["--load", str(tmp_path)]
    label = argv.index("--label")
    assert argv[label:label + 2] == ["--label", f"org.opencontainers.image.revision={'a' * 40}"]
    assert ["--build-arg", "PY=3.11"] == argv[argv.index("--build-arg"):argv.index("--build-arg") + 2]
    assert ["-t", "ghcr.io/o/app:v1.0.0"] == argv[argv.index("-t"):argv.index("-t") + 2]
    assert "--target" not in argv
    argv = buildx_argv(img.model_copy(update={"target": "prod"}), ["linux/amd64", "linux/arm64"])
    assert "linux/amd64,linux/arm64" in argv and "--push" in argv and "--load" not in argv
    assert ["--target", "prod"] == argv[argv.index("--target"):argv.index("--target") + 2]


def test_platforms_are_validated() -> None:
    from pydantic import ValidationError

    from deploy_tool.config import ObsdeployConfig

    assert ObsdeployConfig().platforms == ["linux/amd64"]
    with pytest.raises(ValidationError, match="OS/ARCH"):
        ObsdeployConfig(platforms=["amd64"])


def test_the_deploy_lock_pins_every_dependency_of_pyproject_with_hashes() -> None:
    """requirements/deploy.txt (what the deploy workflow installs with --require-hashes) must
    follow pyproject.toml: a dependency added there and not locked fails the workflow's
    `pip check`. Regenerate it with scripts/lock-deploy-requirements."""
    import re
    import tomllib

    repo = Path(__file__).resolve().parents[2]
    deps = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower().replace("_", "-")
              for d in deps} | {"hatchling"}
    lock = (repo / "requirements" / "deploy.txt").read_text()
    pinned = re.findall(r"^([a-z0-9][a-z0-9._-]*)==\S+ \\\n(\s+--hash=sha256:[0-9a-f]{64})?", lock, re.M)
    assert wanted <= {name for name, _ in pinned}, f"not locked: {sorted(wanted - {n for n, _ in pinned})}"
    assert all(first_hash for _, first_hash in pinned), [n for n, h in pinned if not h]


def test_secret_names_from_the_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, '[deploy]\nsecrets = ["KIS_API_KEY", "KIS_API_SECRET"]\n')
    assert load_config().deploy.secrets == ["KIS_API_KEY", "KIS_API_SECRET"]
    monkeypatch.setenv("OBSDEPLOY_SECRETS", "TELEGRAM_TOKEN, KIS_API_KEY,")
    assert load_config().deploy.secrets == ["TELEGRAM_TOKEN", "KIS_API_KEY"]
    monkeypatch.setenv("OBSDEPLOY_SECRETS", "NOT-A-NAME")
    with pytest.raises(UsageError, match="env OBSDEPLOY_SECRETS.*not a variable name"):
        load_config()
