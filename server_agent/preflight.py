"""Preflight (SPEC §5, §7.2): every check runs, every finding is reported together.

Checks return `Problem`s; they never raise for a finding. Nothing here changes anything
except, for a deploy, creating missing host directories of the path contract, which it
reports as a note (check and plan create nothing: they say what a deploy will create).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common.errors import CommandError, ObsError
from .common.redact import REDACTOR
from .compose import ComposeConfig, ComposeProject, ServiceSpec
from .engine import Engine, importing_sdk_meanwhile, socket_denied
from .names import SINGLE_WRITER_LABEL
from .plan import PreflightReport, Problem, RolloutPlan, build_plan, contract_services
from .root import AgentRoot

if TYPE_CHECKING:
    from .backends.base import Backend
    from .proxy import Proxy

log = logging.getLogger("obs.preflight")


def run_preflight(root: AgentRoot, backend: Backend[Any], tag: str, *,
                  accessory_changes: bool = False) -> PreflightReport:
    """Every check, the backend's own included; with `accessory_changes` (check and plan),
    also compare each running accessory with its compose definition (one more compose
    call), and create nothing: the host directories a deploy would create are notes."""
    engine = backend.engine
    report = PreflightReport()
    report.problems += access_problems(root.path)
    env = root.compose_env(tag)
    for problem in root.sourced.problems:
        report.add("secret_source", problem)
    _check_env(root, env, report)
    _check_env_file(root, report)
    docker_ok = _check_docker(engine, report)
    # A deploy or a rollback (not check or plan) goes on to pull and switch, with the SDK.
    _check_compose(root, env, report, import_sdk=not accessory_changes)
    if report.config is not None:
        report.plan = rollout_plan(root, engine if docker_ok else None, report.config, tag,
                                   accessory_changes=accessory_changes)
        for code, message in report.plan.problems:
            report.add(code, message)
        for a in report.plan.accessories:
            if a.definition_changed:
                report.notes.append(f"accessory {a.name}: its compose definition differs from its "
                                    "running container; deploys leave it as it is (recreate it with "
                                    f"docker compose up -d {a.name} when you mean to)")
        _check_mounts(root, report.config, report.plan, report, create=not accessory_changes)
        _check_health_url(root, report.config, report.plan, report)
        _note_source_mounts(root, report.config, report.plan, report)
        _check_aliases_in_compose(root, report.config, report)
        _check_hook_services(root, report.config, report)
        if docker_ok:
            _note_start_interval(engine, report.config, report)
    _check_disk(root, engine if docker_ok else None, report)
    if docker_ok:
        backend.preflight(report)
    _check_proxy(root, report)
    return report


def _check_proxy(root: AgentRoot, report: PreflightReport) -> None:
    """The proxy answers (SPEC §15): caddy's admin API, nginx's upstream file writable.
    A proxy run as an accessory that is not running yet is asked again once the deploy has
    started the accessories, before anything is switched (the backend's start_accessories)."""
    from .proxy import proxy_for

    proxy = proxy_for(root)
    if proxy is None or root.settings.proxy is None:
        return
    advice = proxy.driver.advice()
    if advice:
        report.notes.append(f"proxy: {advice}")
    _check_canary(root, proxy.driver, report)
    cannot_hold = (proxy.driver.hold_problem() if report.plan is not None and report.plan.proxied
                   and any(sv.single_writer for sv in report.plan.release_services
                           if sv.name == report.plan.proxied) else None)
    if cannot_hold:
        assert report.plan is not None
        report.add("proxy.cannot_hold", (
            f"service {report.plan.proxied} is a single writer, so it is switched stop-first, "
            "and the requests that arrive while it stops and its new container is gated must "
            f"be held (they would fail): {cannot_hold}; or label the service "
            f"{SINGLE_WRITER_LABEL}: \"false\" if two of its containers may run at once (then it "
            "is switched start-first)"))
    problem = proxy.driver.problem()
    if problem is None:
        return
    starting = [a.name for a in report.plan.accessories if a.action == "start"] if report.plan else []
    if starting:
        report.notes.append(f"{problem}; asked again after starting the accessories "
                            f"{', '.join(starting)}")
    else:
        report.add(f"proxy.{root.settings.proxy.kind}", problem)


def _check_canary(root: AgentRoot, driver: Proxy, report: PreflightReport) -> None:
    """What a canary needs of the proxy and its access log (SPEC §20)."""
    canary, proxy = root.settings.canary, root.settings.proxy
    if canary is None or proxy is None:
        return
    if root.settings.engine != "compose":
        report.add("canary.engine", f"agent.canary needs engine compose (this is {root.settings.engine}): "
                                    "a swarm's routing mesh cannot split requests by weight")
    problem = driver.canary_problem(canary.sticky)
    if problem is not None:
        report.add(f"canary.{proxy.kind}", problem)
    plan = report.plan
    if plan is not None and any(sv.single_writer for sv in plan.release_services if sv.name == plan.proxied):
        report.add("canary.single_writer", (
            f"service {plan.proxied} is a single writer: two of its releases never run at once, so "
            f"it cannot be a canary: remove agent.canary, or label the service {SINGLE_WRITER_LABEL}: "
            "\"false\" if two of its containers may run at once"))
    if proxy.access_log is None:
        return
    log_file = Path(proxy.access_log)
    if proxy.kind == "caddy":  # caddy writes it where the agent configures it
        if not log_file.parent.is_dir():
            report.add("canary.access_log", f"the directory of agent.proxy.access_log {log_file} "
                                            "does not exist")
    elif not os.access(log_file, os.R_OK):
        report.add("canary.access_log", f"agent.proxy.access_log {log_file} is not readable"
                   + (" (it does not exist)" if not log_file.exists() else "")
                   + f": {proxy.kind} must write it in the format the README's canary section shows")


def _check_hook_services(root: AgentRoot, cfg: ComposeConfig, report: PreflightReport) -> None:
    """An exec hook runs in a service of the project: one the compose file does not have
    would fail at the switch (a pre_switch's: exit 13) instead of now."""
    from .settings import HOOK_NAMES, ExecHookAction

    names = sorted(s.name for s in cfg.services)
    for hook in HOOK_NAMES:
        for n, action in enumerate(getattr(root.settings.hooks, hook)):
            if isinstance(action, ExecHookAction) and action.exec.service not in names:
                report.add("hooks.exec_service", (
                    f"agent.hooks.{hook}.{n}.exec.service: {action.exec.service!r} is not a service of "
                    f"{root.compose_file.name} (its services: {', '.join(names) or 'none'})"))


def contract_of(root: AgentRoot, cfg: ComposeConfig) -> set[str]:
    """The contract services (plan.contract_services), with host paths resolved here."""
    from dataclasses import replace

    hosts = {str((root.path / host).resolve()) for host in root.settings.mounts}
    specs = [replace(s, binds={str(Path(h).resolve()): t for h, t in s.binds.items()})
             for s in cfg.services]
    return contract_services(specs, root.settings.contract_services, hosts)


def rollout_plan(root: AgentRoot, engine: Engine | None, cfg: ComposeConfig, tag: str, *,
                 accessory_changes: bool = False) -> RolloutPlan:
    containers = engine.project_containers(root.project) if engine is not None else []
    hashes = None
    if accessory_changes and containers:
        from .plan import role_of

        project = ComposeProject(root.path, root.compose_file, root.project)
        accessories = [s.name for s in cfg.services if role_of(s) == "accessory"]
        hashes = project.config_hashes(accessories, root.compose_env(tag))
    proxy = root.settings.proxy
    from .plan import role_of

    buildable = {s.image for s in cfg.services if s.build and role_of(s) == "accessory"}
    missing = frozenset(i for i in buildable if engine is not None and not engine.has_image(i))
    plan = build_plan(cfg, tag, containers, contract_of(root, cfg), hashes,
                      proxy_service=proxy.service if proxy else None, missing_images=missing)
    canary = root.settings.canary
    if canary is None or plan.proxied is None:
        return plan
    from dataclasses import replace

    from .canary import check_label

    return replace(plan, canary=tuple((st.weight, st.seconds) for st in canary.steps),
                   canary_checks=tuple(check_label(c) for c in canary.checks),
                   canary_interval=canary.interval)


def _check_health_url(root: AgentRoot, cfg: ComposeConfig, plan: RolloutPlan,
                      report: PreflightReport) -> None:
    """health_url is asked of a release service at its published port or its container
    address (backends/compose.py health_urls): one of them must publish or listen on its
    port, else every gate would wait on an answer that never comes."""
    from .gate.probe import url_port

    url = root.settings.health_url
    if url is None or plan.proxied is not None:  # the proxied service is asked at its own address
        return
    port = url_port(url)
    for s in (cfg.service(r.name) for r in plan.release_services):
        if any(p.rpartition(":")[2] == str(port) for p in s.published_ports) or (
                f"{port}/tcp" in s.container_ports + s.exposed):
            return
    report.add("health_url.unanswered",
               f"agent.health_url {url} names port {port}, which no release service of "
               f"{root.compose_file.name} publishes or listens on (ports:, expose:): set "
               "agent.health_url to the release service's published port, or null for none")


def observer_default(root: AgentRoot, key: str, empty: str) -> str:
    """What a problem caused by a setting left at the observer's default adds: the key to
    set when the project is not the observer; "" when the configuration sets it."""
    settings: Any = root.settings
    *parents, field = key.split(".")
    for p in parents:
        if p not in settings.model_fields_set:
            break
        settings = getattr(settings, p)
    else:
        if field in settings.model_fields_set:
            return ""
    return (f"; agent.{key} is the observer's default: set it to {empty} in "
            "deployment_config.json when this project is not the observer")


def _note_source_mounts(root: AgentRoot, cfg: ComposeConfig, plan: RolloutPlan,
                        report: PreflightReport) -> None:
    """A release service that bind-mounts the agent root or a directory above it (`.:/code`,
    a development setup) runs the files on the server, not its image's: a release would
    then not be its image. Said, not refused: it may be meant."""
    top = root.path.resolve()
    for r in plan.release_services:
        for host, target in cfg.service(r.name).binds.items():
            src = Path(host).resolve()
            if src == top or src in top.parents:
                report.notes.append(
                    f"service {r.name} bind-mounts {host} at {target}, the agent root or a "
                    "directory above it: it runs the files there rather than its image's "
                    "(a development mount? drop it from the server's compose file)")


def _check_env(root: AgentRoot, env: dict[str, str], report: PreflightReport) -> None:
    s = root.settings
    for name in s.required_env:
        if not env.get(name):
            report.add("env.missing",
                       f"required variable {name} is not set (set it in {root.env_file}, in "
                       f"deployment_config.json's \"environment\", or in the agent's environment)"
                       + observer_default(root, "required_env", "[]"))
    for name in s.secret_env:
        if not env.get(name):
            report.add("env.secret_missing",
                       f"secret variable {name} is not set (put it in {root.env_file}, mode 0600, "
                       "send it with `obsdeploy deploy --secret`, or name a store in "
                       "agent.secret_sources)" + observer_default(root, "secret_env", "[]"))
    for alias, standard in s.env_aliases.items():
        if alias in env:
            report.add("env.alias",
                       f"{alias} is a non-standard name: rename it to {standard}"
                       + observer_default(root, "env_aliases", "{}"))


def _check_aliases_in_compose(root: AgentRoot, cfg: ComposeConfig, report: PreflightReport) -> None:
    for svc in cfg.services:
        for alias, standard in root.settings.env_aliases.items():
            if alias in svc.environment:
                report.add("env.alias",
                           f"service {svc.name} sets {alias} in {root.compose_file.name}: "
                           f"rename it to {standard}" + observer_default(root, "env_aliases", "{}"))


def _check_env_file(root: AgentRoot, report: PreflightReport) -> None:
    try:
        mode = stat.S_IMODE(root.env_file.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077:
        report.add("env_file.mode",
                   f"{root.env_file} has mode {mode:04o}; it holds secrets and must be 0600 "
                   f"(chmod 600 {root.env_file})")


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def access_problems(path: Path) -> list[Problem]:
    """What the user the agent runs as cannot do in the agent root: write it and the state
    and backups in it (the lock is the first thing a deploy writes), read .env. Checked before
    anything else, so a deploy user who does not own the root is told so (exit 10), not met
    by a PermissionError half-way."""
    user, uid = _user(), os.getuid()
    problems = []
    writable = [path, path / "state", path / "state" / "releases", path / "backups"]
    state = path / "state"
    if state.is_dir():
        writable += sorted(p for p in state.iterdir() if p.is_file())
    denied = [p for p in writable if p.exists() and not os.access(p, os.W_OK)]
    if denied:
        shown = ", ".join(str(p) for p in denied[:4]) + (" ..." if len(denied) > 4 else "")
        problems.append(Problem(
            "root.not_writable",
            f"the agent root is not writable by {user} (uid {uid}), who runs the agent: {shown}; "
            f"make {user} its owner (sudo chown -R {user}: {path}) or run the agent as its owner"))
    env_file = path / ".env"
    if env_file.exists() and not os.access(env_file, os.R_OK):
        problems.append(Problem(
            "env_file.unreadable",
            f"{env_file} is not readable by {user} (uid {uid}): make {user} its owner "
            f"(sudo chown {user}: {env_file}; keep mode 0600)"))
    return problems


def docker_socket_problem() -> Problem | None:
    """A local Docker socket this user may not use: say which group grants it."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return None
    denied = socket_denied(host.removeprefix("unix://"))
    return Problem("docker.permission", denied) if denied else None


# Docker Engine 25 (API 1.44) is the first to honour a healthcheck's start_interval.
START_INTERVAL_API = (1, 44)


def _note_start_interval(engine: Engine, cfg: ComposeConfig, report: PreflightReport) -> None:
    """Say when the engine ignores `start_interval`: every deploy's gate then waits a full
    `interval` for Docker's first health check."""
    using = [name for name, svc in cfg.raw.get("services", {}).items()
             if (svc.get("healthcheck") or {}).get("start_interval")]
    if not using:
        return
    try:
        api = str(engine.version().get("ApiVersion", "0.0"))
        if tuple(int(x) for x in api.split(".")[:2]) >= START_INTERVAL_API:
            return
    except (ObsError, ValueError):
        return
    report.notes.append(
        f"this Docker engine (API {api}) ignores healthcheck start_interval ({', '.join(using)}): "
        "the first health check runs after the full interval, and the gate waits for it "
        "(Docker Engine 25+ honours it)")


def _check_docker(engine: Engine, report: PreflightReport) -> bool:
    try:
        engine.ping()
        return True
    except Exception as exc:  # any failure to talk to the engine is this one finding
        denied = docker_socket_problem()
        if denied is not None:
            report.problems.append(denied)
            return False
        report.add("docker.unreachable",
                   f"the Docker engine is not reachable ({type(exc).__name__}: "
                   f"{REDACTOR(str(exc))[:200]}); start dockerd or fix DOCKER_HOST")
        return False


def _check_compose(root: AgentRoot, env: dict[str, str], report: PreflightReport, *,
                   import_sdk: bool = False) -> None:
    """compose config for the tag; with `import_sdk`, the docker SDK is imported meanwhile
    (engine.importing_sdk_meanwhile: the block runs a subprocess and imports nothing)."""
    if not root.compose_file.exists():
        report.add("compose.missing",
                   f"compose file {root.compose_file} does not exist (setting compose_file)")
        return
    try:
        text = root.compose_file.read_text(encoding="utf-8")
    except OSError as exc:
        report.add("compose.unreadable", f"cannot read {root.compose_file}: {exc.strerror}")
        return
    if "IMAGE_TAG" not in text and "obsdeploy.role" not in text:
        report.add("compose.no_image_tag",
                   f"{root.compose_file} does not use ${{IMAGE_TAG}}; write the image as "
                   "image: REPO:${IMAGE_TAG:?IMAGE_TAG required}")
    project = ComposeProject(root.path, root.compose_file, root.project)
    try:
        with importing_sdk_meanwhile() if import_sdk else contextlib.nullcontext():
            report.config = project.config(env)
    except CommandError as exc:
        report.add("compose.invalid", f"{root.compose_file} is not valid with IMAGE_TAG set: "
                                      f"{exc.stderr.strip()[-400:]}")
    except ObsError as exc:
        report.add("compose.unavailable", str(exc))
        return
    if report.config is not None and not report.config.services:
        report.add("compose.no_services", f"{root.compose_file} defines no services")
        report.config = None


def _check_mounts(root: AgentRoot, cfg: ComposeConfig, plan: RolloutPlan,
                  report: PreflightReport, *, create: bool) -> None:
    """The path contract (SPEC §5), on the contract services only (SPEC §14): an
    accessory's or a job's own bind mounts are its own business."""
    expected = {
        str((root.path / host).resolve()): container
        for host, container in root.settings.mounts.items()
    }
    mounting = [cfg.service(s.name) for s in plan.release_services if s.contract]
    if not mounting and root.settings.mounts:
        report.add("mounts.none",
                   f"no release service in {root.compose_file.name} mounts the path contract "
                   + ", ".join(f"{h}:{c}" for h, c in root.settings.mounts.items())
                   + " (or name the services that carry it in agent.contract_services)"
                   + observer_default(root, "mounts", "{}"))
    for svc in mounting:
        actual = {str(Path(h).resolve()): c for h, c in svc.binds.items()}
        if actual != expected:
            missing = [f"{_rel(root, h)}:{c}" for h, c in expected.items() if actual.get(h) != c]
            extra = [f"{_rel(root, h)}:{c}" for h, c in actual.items() if expected.get(h) != c]
            detail = []
            if missing:
                detail.append("missing " + ", ".join(missing))
            if extra:
                detail.append("unexpected " + ", ".join(extra))
            report.add("mounts.mismatch",
                       f"service {svc.name} does not mount the path contract exactly: "
                       + "; ".join(detail))
    _check_verify_paths(root, mounting, report)
    owner = _contract_owner(mounting, report)
    for host in root.settings.mounts:
        path = (root.path / host).resolve()
        if not path.exists() and not create:
            report.notes.append(f"a deploy will create the missing host directory {path}"
                                + (f" owned by {owner[0]}:{owner[1]}" if owner else ""))
            continue
        if not path.exists():
            try:
                path.mkdir(parents=True)
                if owner is not None:
                    os.chown(path, owner[0], owner[1])
                report.notes.append(f"created missing host directory {path}"
                                    + (f" owned by {owner[0]}:{owner[1]}" if owner else ""))
            except OSError as exc:
                report.add("mounts.create", f"cannot create {path}: {exc.strerror}")
                continue
        if not path.is_dir():
            report.add("mounts.not_dir", f"{path} is not a directory")
            continue
        if owner is None:
            if not os.access(path, os.W_OK):
                report.add("mounts.not_writable", f"{path} is not writable by uid {os.getuid()}")
        elif not _writable_by(path, *owner):
            report.add("mounts.not_writable",
                       f"{path} is not writable by uid {owner[0]} (the `user` the service runs "
                       f"as); e.g. chown -R {owner[0]}:{owner[1]} {path}")


def _check_verify_paths(root: AgentRoot, mounting: list[ServiceSpec], report: PreflightReport) -> None:
    """A verify path no contract service mounts would never appear: the gate would wait
    health_timeout for it, then fail a release that works."""
    if not mounting:
        return
    sources = [Path(h).resolve() for s in mounting for h in s.binds]
    for rel in root.settings.verify.paths:
        path = (root.path / rel).resolve()
        if not any(path == src or src in path.parents for src in sources):
            report.add("verify.paths", f"verify path {rel} is not under any directory that "
                       f"{', '.join(s.name for s in mounting)} bind-mount(s), so it would never "
                       "appear" + observer_default(root, "verify.paths", "[]"))


def _contract_owner(services: list[ServiceSpec], report: PreflightReport) -> tuple[int, int] | None:
    """The uid:gid the contract services run as (compose `user:`), when it is numeric; None
    when they run as the image's default user (the agent cannot know it without running
    the image, and root-run containers write anywhere)."""
    users = {s.user for s in services if s.user}
    if not users:
        return None
    if len(users) > 1:
        report.add("mounts.users", "the services that carry the path contract run as different "
                   f"users ({', '.join(sorted(users))}); they share the same directories")
        return None
    user = users.pop()
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        report.notes.append(f"user {user!r} is not numeric: the contract directories are "
                            "checked as the agent's own uid")
        return None
    return int(uid), int(gid or uid)


def _writable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether uid:gid may create files in `path`, from its owner and mode bits (root may
    always). Supplementary groups and ACLs are not considered."""
    if uid == 0:
        return True
    st = path.stat()
    if st.st_uid == uid:
        return st.st_mode & 0o300 == 0o300
    if st.st_gid == gid:
        return st.st_mode & 0o030 == 0o030
    return st.st_mode & 0o003 == 0o003


def _rel(root: AgentRoot, host: str) -> str:
    try:
        return "./" + str(Path(host).relative_to(root.path.resolve()))
    except ValueError:
        return host


def backup_size(root: AgentRoot) -> int:
    total = 0
    for rel in root.settings.backup_paths:
        for dirpath, _dirs, files in os.walk(root.path / rel):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except OSError:
                    pass
    return total


def _check_disk(root: AgentRoot, engine: Engine | None, report: PreflightReport) -> None:
    need = root.settings.min_free_mb * 1024 * 1024
    free_root = shutil.disk_usage(root.path).free
    if free_root < need:
        report.add("disk.root", f"{root.path} has {free_root // 2**20} MB free; "
                                f"min_free_mb is {root.settings.min_free_mb}")
    else:
        backup = backup_size(root)
        if free_root - backup < need:
            report.add("disk.backup",
                       f"the backup needs {backup // 2**20} MB and would leave {root.path} with "
                       f"{(free_root - backup) // 2**20} MB free (min_free_mb is "
                       f"{root.settings.min_free_mb}); free space or lower backup_keep")
    if engine is None:
        return
    docker_root = engine.root_dir()
    if os.path.isdir(docker_root):  # a remote engine's root is not ours to measure
        free = shutil.disk_usage(docker_root).free
        if free < need:
            report.add("disk.docker", f"Docker's root {docker_root} has {free // 2**20} MB free; "
                                      f"min_free_mb is {root.settings.min_free_mb}")
