"""RolloutPlan: what a deploy of TAG will do to a compose project (SPEC §14), as a plain value.

Built from what `compose config` resolved and the containers that run now; nothing here
talks to Docker, so every rule is tested on values. `obs-agent plan` prints it, preflight
reports its problems, and `rollout.py` carries it out step by step.

    roles        release (image uses ${IMAGE_TAG}, or label obsdeploy.role: release),
                 job (label obsdeploy.role: job), accessory (everything else)
    jobs         run once per deploy, before any release service is switched
    steps        release services by ascending obsdeploy.order, one service a step; the
                 unlabelled ones together in one last step
    strategy     deploy.update_config.order: stop-first (default) or start-first; the proxy's
                 service start-first, unless it is a single writer
    single writer a contract service (unless labelled obsdeploy.single_writer "false") or one
                 labelled "true": always stop-first, one replica (SPEC §19); behind a proxy
                 its switch holds requests during the gap
    accessories  left alone when running, started when missing or stopped: before the first
                 step, or, when they depend on release services (a project's own nginx),
                 right after the step that switched the last of those
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .common.redact import REDACTOR
from .compose import ComposeConfig, ServiceSpec
from .engine import ContainerInfo
from .names import (
    BACKUP_LABEL,
    ORDER_LABEL,
    RESTORE_LABEL,
    REVERSIBLE_LABEL,
    ROLE_LABEL,
    SINGLE_WRITER_LABEL,
)

ROLES = ("release", "accessory", "job")
STRATEGIES = ("stop-first", "start-first")


@dataclass(frozen=True)
class ServicePlan:
    name: str
    strategy: str  # stop-first | start-first
    replicas: int
    container_name: str | None
    contract: bool  # carries the path contract, health_url and verify
    # Never two of its containers at once (SPEC §19): stop-first everywhere, walk back included.
    single_writer: bool = False


@dataclass(frozen=True)
class Step:
    order: int | None  # None: the last step, the release services without obsdeploy.order
    services: tuple[ServicePlan, ...]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.services]

    @property
    def contract(self) -> set[str]:
        """The step's services that carry the contract."""
        return {s.name for s in self.services if s.contract}

    @property
    def services_by_name(self) -> dict[str, ServicePlan]:
        return {s.name: s for s in self.services}


@dataclass(frozen=True)
class AccessoryPlan:
    name: str
    action: str  # leave (it runs) | start (missing or stopped)
    definition_changed: bool  # its compose definition differs from its container's
    needs: tuple[str, ...] = ()  # the release services it depends on, directly or through accessories
    after_step: int = 0  # started after this step (1-based); 0: before the first step
    dump: tuple[str, ...] = ()  # obsdeploy.backup as argv: its stdout is the dump; () none
    restore: tuple[str, ...] = ()  # obsdeploy.restore as argv: reads a dump on stdin

    @property
    def dumped(self) -> bool:
        """A deploy dumps it: it has a backup command and runs (a missing one holds nothing)."""
        return bool(self.dump) and self.action == "leave"
    build: bool = False  # its image is missing and it has `build:`: built here, never pulled


@dataclass(frozen=True)
class RolloutPlan:
    tag: str
    jobs: tuple[str, ...]
    steps: tuple[Step, ...]
    accessories: tuple[AccessoryPlan, ...]
    # release service -> what differs between its running containers and its new definition
    changes: dict[str, list[str]] = field(default_factory=dict)
    problems: tuple[tuple[str, str], ...] = ()
    proxied: str | None = None  # the release service behind agent.proxy (SPEC §15)

    @property
    def held(self) -> bool:
        """The proxied service is a single writer: its switch is stop-first and the proxy
        holds requests from just before its old containers stop until its new ones passed
        their gate (SPEC §19)."""
        return any(s.name == self.proxied and s.single_writer for s in self.release_services)
    # Jobs labelled obsdeploy.reversible "false": once one ran, rolling back to an older
    # release is refused without --force (the older release cannot undo its migration).
    irreversible_jobs: tuple[str, ...] = ()
    # agent.canary (SPEC §20): the proxied service's weights after its gate, each (percent,
    # seconds), and what each round checks; empty: no canary.
    canary: tuple[tuple[int, float], ...] = ()
    canary_checks: tuple[str, ...] = ()
    canary_interval: float = 0.0

    def accessories_starting(self, after_step: int) -> list[str]:
        """The accessories to start once `after_step` steps have passed (0: before the
        first), in compose file order (compose orders them by their depends_on)."""
        return [a.name for a in self.accessories if a.action == "start" and a.after_step == after_step]

    @property
    def release_services(self) -> list[ServicePlan]:
        return [s for step in self.steps for s in step.services]

    def as_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "jobs": list(self.jobs),
            "steps": [{"order": st.order, "services": [asdict(s) for s in st.services]}
                      for st in self.steps],
            "accessories": [asdict(a) for a in self.accessories],
            "changes": self.changes,
            "problems": [{"code": c, "message": m} for c, m in self.problems],
            "proxied": self.proxied,
            "held": self.held,
            "irreversible_jobs": list(self.irreversible_jobs),
            "canary": {"steps": [{"weight": w, "seconds": sec} for w, sec in self.canary],
                       "interval": self.canary_interval, "checks": list(self.canary_checks)}
            if self.canary else None,
        }

    def describe(self) -> list[str]:
        """The plan as lines for a person (obs-agent plan)."""
        lines = [f"plan for {self.tag}:"]
        lines += [f"  dump      {a.name}: {' '.join(a.dump)} (its stdout into the backup, before the jobs)"
                  for a in self.accessories if a.dumped]
        lines += [f"  job       {j}: compose run --rm, must exit 0 before any switch"
                  + ("; not reversible: a rollback to an older release then needs --force"
                     if j in self.irreversible_jobs else "") for j in self.jobs]
        for a in self.accessories:
            note = ("running, left alone" if a.action == "leave" else
                    "missing or stopped: started first" if not a.after_step else
                    f"missing or stopped: started after step {a.after_step} (it depends on "
                    f"{', '.join(a.needs)})")
            if a.definition_changed:
                note += "; its definition differs from the running container (recreate it yourself)"
            if a.build:
                note += f"; its image is missing: built here (compose build {a.name})"
            lines.append(f"  accessory {a.name}: {note}")
        for i, st in enumerate(self.steps, 1):
            order = f"order {st.order}" if st.order is not None else "unordered"
            services = ", ".join(
                f"{s.name} ({s.strategy}, {s.replicas} replica{'s' if s.replicas != 1 else ''}"
                + (f", container_name {s.container_name}" if s.container_name else "")
                + (", contract" if s.contract else "")
                + (", single writer: never two containers at once" if s.single_writer else "")
                + ((", behind the proxy: requests held while it stops and the new one is gated "
                    "at its own address, then sent to it" if s.single_writer else
                    ", behind the proxy: gated at its own address, then the proxy points at it")
                   if s.name == self.proxied else "") + ")"
                for s in st.services)
            lines.append(f"  step {i}   [{order}] {services}; gated before the next step")
        if self.canary:
            weights = " -> ".join(f"{w} % for {sec:g} s" for w, sec in self.canary)
            lines.append(f"  canary    {self.proxied}: after its gate the proxy sends it {weights} "
                         f"-> 100 %, the rest to the release that serves; every "
                         f"{self.canary_interval:g} s: {', '.join(self.canary_checks) or 'no checks'}")
        for name, diffs in self.changes.items():
            lines += [f"  change    {name}: {d}" for d in diffs]
        lines += [f"  problem   [{c}] {m}" for c, m in self.problems]
        return lines


def role_of(spec: ServiceSpec) -> str:
    """release | accessory | job; an unknown obsdeploy.role label is reported by build_plan."""
    label = spec.labels.get(ROLE_LABEL)
    if label in ROLES:
        return label
    return "release" if "IMAGE_TAG" in spec.image_template else "accessory"


def contract_services(specs: Iterable[ServiceSpec], configured: list[str] | None,
                      mount_hosts: set[str]) -> set[str]:
    """The release services that carry the path contract: `agent.contract_services`, or by
    default those that bind-mount a host directory of `mounts` (absolute, resolved paths)."""
    releases = [s for s in specs if role_of(s) == "release"]
    if configured is not None:
        return set(configured)
    return {s.name for s in releases if set(s.binds) & mount_hosts}


def build_plan(config: ComposeConfig, tag: str, containers: list[ContainerInfo],
               contract: set[str], accessory_hashes: dict[str, str] | None = None,
               proxy_service: str | None = None, missing_images: frozenset[str] = frozenset()
               ) -> RolloutPlan:
    """The plan for deploying `tag`. `containers` are the project's containers now;
    `accessory_hashes` (compose config --hash), when given, tells changed accessories.
    `proxy_service` (SPEC §15) is switched start-first whatever its update_config says,
    unless it is a single writer (SPEC §19): then stop-first, with the requests held.
    `missing_images`: the accessories' images the engine lacks; one with `build:` is built
    (only then: an image that exists is never rebuilt), the others pulled."""
    from dataclasses import replace

    problems: list[tuple[str, str]] = []
    roles = {s.name: role_of(s) for s in config.services}
    writers, writer_problems = single_writers(config.services, roles, contract)
    problems += writer_problems
    specs = [replace(s, update_order="start-first")
             if s.name == proxy_service and s.name not in writers else s
             for s in config.services]
    if proxy_service is not None and roles.get(proxy_service) != "release":
        problems.append(("plan.proxy_service",
                         f"agent.proxy.service {proxy_service!r} is not a release service of the "
                         "compose file" + (f" (it is an {roles[proxy_service]})"
                                           if proxy_service in roles else "")))
    for s in specs:
        if s.labels.get(ROLE_LABEL, "release") not in ROLES:
            problems.append(("plan.role", f"service {s.name}: label {ROLE_LABEL}="
                             f"{s.labels[ROLE_LABEL]!r} is not one of {', '.join(ROLES)}"))
    releases = [s for s in specs if roles[s.name] == "release"]
    if not releases:
        problems.append(("plan.no_release", "no release service: write one service's image as "
                         "REPO:${IMAGE_TAG:?IMAGE_TAG required}, or label it obsdeploy.role: release"))
    for name in sorted(contract - {s.name for s in releases}):
        problems.append(("plan.contract_services", f"agent.contract_services names {name}, which is "
                         "not a release service of the compose file"))

    orders: dict[str, int | None] = {}
    for s in releases:
        raw = s.labels.get(ORDER_LABEL)
        try:
            orders[s.name] = None if raw is None else int(raw)
        except ValueError:
            problems.append(("plan.order", f"service {s.name}: label {ORDER_LABEL}={raw!r} is not "
                             "an integer"))
            orders[s.name] = None
    problems += _order_problems(releases, orders)
    problems += _strategy_problems(releases, proxy_service, writers)
    commands = {s.name: _data_commands(s, roles[s.name], problems) for s in specs}
    irreversible = tuple(sorted(s.name for s in specs if roles[s.name] == "job"
                                and _reversible(s, problems) is False))

    plans = {s.name: ServicePlan(
        name=s.name, strategy=s.update_order, replicas=s.replicas,
        container_name=s.container_name, contract=s.name in contract,
        single_writer=s.name in writers) for s in releases}
    ordered = sorted((o, n) for n, o in orders.items() if o is not None)
    steps = [Step(o, (plans[n],)) for o, n in ordered]
    last = tuple(plans[n] for n in sorted(plans) if orders[n] is None)
    if last:
        steps.append(Step(None, last))

    running = [c for c in containers if c.running]
    hashes = accessory_hashes or {}
    step_of = {svc.name: n for n, st in enumerate(steps, 1) for svc in st.services}
    accessories = []
    for s in specs:
        if roles[s.name] != "accessory":
            continue
        needs = _release_needs(s.name, {x.name: x for x in specs}, roles)
        accessories.append(AccessoryPlan(
            name=s.name,
            action="leave" if any(c.service == s.name for c in running) else "start",
            definition_changed=s.name in hashes and any(
                c.service == s.name and c.config_hash != hashes[s.name] for c in running),
            needs=needs, after_step=max((step_of[n] for n in needs), default=0),
            dump=commands[s.name][0], restore=commands[s.name][1],
            build=s.build and s.image in missing_images))
    changes = {s.name: diffs for s in releases
               if (diffs := definition_changes(s, [c for c in running if c.service == s.name]))}
    return RolloutPlan(
        tag=tag,
        jobs=tuple(sorted(s.name for s in specs if roles[s.name] == "job")),
        steps=tuple(steps),
        accessories=tuple(accessories),
        changes=changes,
        problems=tuple(problems),
        proxied=proxy_service if proxy_service in {s.name for s in releases} else None,
        irreversible_jobs=irreversible,
    )


def _data_commands(spec: ServiceSpec, role: str, problems: list[tuple[str, str]]
                   ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """An accessory's obsdeploy.backup and obsdeploy.restore commands as argv (split as a
    shell would, run without one: write `sh -c '...'` for redirections)."""
    import shlex

    out: list[tuple[str, ...]] = []
    for label in (BACKUP_LABEL, RESTORE_LABEL):
        raw = spec.labels.get(label)
        if raw is None:
            out.append(())
            continue
        if role != "accessory":
            problems.append(("plan.data_label", f"service {spec.name}: label {label} is for "
                             f"accessories (a database, a cache), and {spec.name} is a {role}"))
            out.append(())
            continue
        try:
            argv = tuple(shlex.split(raw))
        except ValueError as exc:
            argv = ()
            problems.append(("plan.data_label", f"service {spec.name}: label {label}={raw!r} "
                             f"cannot be split into a command ({exc})"))
        else:
            if not argv:
                problems.append(("plan.data_label", f"service {spec.name}: label {label} is "
                                 "empty; write the command, e.g. pg_dump -Fc -U app app"))
        out.append(argv)
    return out[0], out[1]


def _reversible(spec: ServiceSpec, problems: list[tuple[str, str]]) -> bool:
    raw = spec.labels.get(REVERSIBLE_LABEL, "true").strip().lower()
    if raw not in ("true", "false"):
        problems.append(("plan.reversible", f"job {spec.name}: label {REVERSIBLE_LABEL}="
                         f"{spec.labels[REVERSIBLE_LABEL]!r} is not \"true\" or \"false\""))
    return raw != "false"


def _release_needs(name: str, specs: dict[str, ServiceSpec], roles: dict[str, str]) -> tuple[str, ...]:
    """The release services `name` depends on, directly or through other accessories."""
    found: set[str] = set()
    seen: set[str] = set()
    todo = list(specs[name].depends_on)
    while todo:
        dep = todo.pop()
        if dep in seen or dep not in specs:
            continue
        seen.add(dep)
        if roles[dep] == "release":
            found.add(dep)
        elif roles[dep] == "accessory":
            todo += specs[dep].depends_on
    return tuple(sorted(found))


def _order_problems(releases: list[ServiceSpec], orders: dict[str, int | None]) -> list[tuple[str, str]]:
    """A service is never switched before a release service it depends on."""
    def key(name: str) -> float:
        o = orders.get(name)
        return math.inf if o is None else o

    out = []
    names = {s.name for s in releases}
    for s in releases:
        for dep in s.depends_on:
            if dep in names and key(s.name) < key(dep):
                out.append(("plan.order_depends_on",
                            f"service {s.name} depends_on {dep} but would be switched before it "
                            f"({ORDER_LABEL} {orders[s.name]} vs "
                            f"{'unordered (last)' if orders[dep] is None else orders[dep]}); give "
                            f"{dep} a lower {ORDER_LABEL} than {s.name}"))
    return out


def single_writers(specs: Iterable[ServiceSpec], roles: dict[str, str], contract: set[str]
                   ) -> tuple[set[str], list[tuple[str, str]]]:
    """The release services that are single writers (SPEC §19): those that carry the path
    contract, unless labelled obsdeploy.single_writer "false", and those labelled "true"."""
    writers: set[str] = set()
    problems = []
    for s in specs:
        if roles.get(s.name) != "release":
            continue
        label = s.labels.get(SINGLE_WRITER_LABEL)
        if label is not None and label.lower() not in ("true", "false"):
            problems.append(("plan.single_writer", f"service {s.name}: label {SINGLE_WRITER_LABEL}="
                             f"{label!r} is not \"true\" or \"false\""))
            label = None
        if (label or "").lower() == "true" or (s.name in contract and (label or "").lower() != "false"):
            writers.add(s.name)
    return writers, problems


def _writer_problems(s: ServiceSpec, why: str) -> list[tuple[str, str]]:
    """A single writer never runs twice: not start-first, not more than one replica."""
    out = []
    fix = (f"or label it {SINGLE_WRITER_LABEL}: \"false\" if two of its containers may run at "
           "the same moment")
    if s.update_order == "start-first":
        out.append(("plan.single_writer_start_first",
                    f"service {s.name} is a single writer ({why}) but its deploy.update_config.order "
                    f"is start-first, which runs two of its containers at once: set it to stop-first "
                    f"(or remove it), {fix}"))
    if s.replicas > 1:
        out.append(("plan.single_writer_replicas",
                    f"service {s.name} is a single writer ({why}) but sets deploy.replicas "
                    f"{s.replicas}: set it to 1, {fix}"))
    return out


def _strategy_problems(releases: list[ServiceSpec], proxy_service: str | None = None,
                       writers: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    out = []
    for s in releases:
        if s.update_order not in STRATEGIES:
            out.append(("plan.strategy", f"service {s.name}: deploy.update_config.order "
                        f"{s.update_order!r} is not one of {', '.join(STRATEGIES)}"))
        if s.name in writers:
            labelled = s.labels.get(SINGLE_WRITER_LABEL, "").lower() == "true"
            out += _writer_problems(s, f"label {SINGLE_WRITER_LABEL}" if labelled
                                    else "it carries the path contract")
        elif s.name == proxy_service and s.published_ports:
            out.append(("plan.proxy_port",
                        f"service {s.name} is behind agent.proxy, so its new containers start "
                        f"beside the old ones, but it publishes the fixed host port(s) "
                        f"{', '.join(s.published_ports)}, which two containers cannot share: publish "
                        "an ephemeral port (\"127.0.0.1::8000\") or none (the proxy then reaches "
                        "the container's network address)"))
        elif s.update_order == "start-first" and s.published_ports:
            out.append(("plan.start_first_port",
                        f"service {s.name} is start-first but publishes the fixed host port(s) "
                        f"{', '.join(s.published_ports)}, which two containers cannot share: publish "
                        "an ephemeral port (\"127.0.0.1::8000\") or use stop-first"))
        if s.container_name and s.replicas > 1:
            out.append(("plan.container_name_replicas",
                        f"service {s.name} sets container_name {s.container_name} and "
                        f"deploy.replicas {s.replicas}: a name is one container; drop one of the two"))
    return out


def definition_changes(spec: ServiceSpec, running: list[ContainerInfo]) -> list[str]:
    """What differs between a service's running containers and its new definition: image,
    environment names, mounts, ports. A service that does not run is new."""
    if not running:
        return ["not running: will be started"]
    c = max(running, key=lambda c: c.number)
    out = []
    if c.image != spec.image:
        out.append(f"image {c.image} -> {spec.image}")
    added = sorted(n for n, v in spec.environment.items() if v and n not in c.env_names)
    if added:
        out.append("environment adds " + ", ".join(added))
    binds = {(h, t) for h, t in spec.binds.items()}
    mounted = {(h, t) for h, t in c.binds if t not in spec.file_targets}  # secrets, configs: not mounts
    if binds != mounted:
        gone = sorted(f"{h}:{t}" for h, t in mounted - binds)
        new = sorted(f"{h}:{t}" for h, t in binds - mounted)
        out.append("mounts" + (" add " + ", ".join(new) if new else "")
                   + (" drop " + ", ".join(gone) if gone else ""))
    if set(spec.container_ports) != set(c.ports):
        out.append(f"ports {sorted(c.ports)} -> {sorted(spec.container_ports)}")
    return out


# --- what preflight found ------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": REDACTOR(self.message)}


@dataclass
class PreflightReport:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: ComposeConfig | None = None
    plan: RolloutPlan | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, code: str, message: str) -> None:
        self.problems.append(Problem(code, message))
