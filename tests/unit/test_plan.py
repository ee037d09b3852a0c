"""RolloutPlan as a plain value (SPEC §14): roles, steps, strategies, problems, changes."""

from __future__ import annotations

from typing import Any

from server_agent.compose import ComposeConfig, release_override
from server_agent.engine import ContainerInfo
from server_agent.plan import RolloutPlan, ServicePlan, build_plan, contract_services

IMG = "reg/app:${IMAGE_TAG:?IMAGE_TAG required}"


def _config(services: dict[str, dict[str, Any]]) -> ComposeConfig:
    """A resolved config (tag v2) and the images as written."""
    raw = {name: {**svc, "image": svc["image"].replace(IMG, "reg/app:v2")}
           for name, svc in services.items()}
    return ComposeConfig({"services": raw}, {n: s["image"] for n, s in services.items()})


def _container(service: str, *, tag: str | None = "v1", running: bool = True,
               config_hash: str = "h", image: str = "reg/app:v1", number: int = 1) -> ContainerInfo:
    return ContainerInfo(
        id=f"{service}{number}", name=f"p-{service}-{number}", service=service, number=number,
        image=image, state="running" if running else "exited", health=None, exit_code=0,
        restart_count=0, env_names=frozenset({"A"}), stop_timeout=None, restart_policy={},
        tag=tag, role="release" if tag else "accessory", config_hash=config_hash,
        binds=frozenset(), ports=frozenset())


SEED = {
    "kv": {"image": "reg/kv:7"},
    "migrate": {"image": IMG, "labels": {"obsdeploy.role": "job"}},
    "gateway": {"image": IMG, "labels": {"obsdeploy.order": "1"}, "container_name": "qts-gateway",
                "depends_on": {"kv": {}}},
    "scanner": {"image": IMG, "labels": {"obsdeploy.order": "2"}, "depends_on": {"gateway": {}}},
    "worker": {"image": IMG, "deploy": {"replicas": 2, "update_config": {"order": "start-first"}}},
    "monitor": {"image": IMG},
}


def service_of(plan: RolloutPlan, name: str) -> ServicePlan:
    return next(s for s in plan.release_services if s.name == name)


def test_roles_steps_and_strategies() -> None:
    plan = build_plan(_config(SEED), "v2", [], contract={"gateway"})
    assert plan.jobs == ("migrate",)
    assert [a.name for a in plan.accessories] == ["kv"]
    assert [(st.order, st.names) for st in plan.steps] == [
        (1, ["gateway"]), (2, ["scanner"]), (None, ["monitor", "worker"])]
    worker = service_of(plan, "worker")
    assert (worker.strategy, worker.replicas) == ("start-first", 2)
    gateway = service_of(plan, "gateway")
    assert (gateway.strategy, gateway.container_name, gateway.contract) == (
        "stop-first", "qts-gateway", True)
    assert plan.steps[0].contract == {"gateway"} and plan.steps[2].contract == set()
    assert plan.problems == ()
    d = plan.as_dict()
    assert d["steps"][2]["services"][1]["replicas"] == 2 and d["jobs"] == ["migrate"]
    assert any("step 1" in line and "gateway" in line for line in plan.describe())


def test_a_role_label_wins_over_the_image() -> None:
    cfg = _config({"app": {"image": "reg/app:fixed", "labels": {"obsdeploy.role": "release"}},
                   "cache": {"image": IMG, "labels": {"obsdeploy.role": "accessory"}}})
    plan = build_plan(cfg, "v2", [], contract=set())
    assert [s.name for s in plan.release_services] == ["app"]
    assert [a.name for a in plan.accessories] == ["cache"]


def test_accessories_missing_or_stopped_are_started_running_ones_left() -> None:
    cfg = _config({"kv": {"image": "reg/kv:7"}, "mq": {"image": "reg/mq:3"}, "app": {"image": IMG}})
    containers = [_container("kv", tag=None, config_hash="old"),
                  _container("mq", tag=None, running=False)]
    plan = build_plan(cfg, "v2", containers, contract=set(), accessory_hashes={"kv": "new", "mq": "x"})
    assert {a.name: (a.action, a.definition_changed) for a in plan.accessories} == {
        "kv": ("leave", True), "mq": ("start", False)}


def test_accessories_that_depend_on_release_services_start_after_their_last_step() -> None:
    cfg = _config({"db": {"image": "reg/db:16"},
                   "api": {"image": IMG, "labels": {"obsdeploy.order": "1"}, "depends_on": {"db": {}}},
                   "web": {"image": IMG, "labels": {"obsdeploy.order": "2"}},
                   "nginx": {"image": "reg/nginx:1", "depends_on": {"api": {}, "web": {}}},
                   "certs": {"image": "reg/certs:1", "depends_on": {"nginx": {}}}})
    plan = build_plan(cfg, "v2", [], contract=set())
    assert {a.name: (a.needs, a.after_step) for a in plan.accessories} == {
        "db": ((), 0), "nginx": (("api", "web"), 2), "certs": (("api", "web"), 2)}
    assert (plan.accessories_starting(0), plan.accessories_starting(1),
            plan.accessories_starting(2)) == (["db"], [], ["nginx", "certs"])
    assert any("nginx: missing or stopped: started after step 2" in line for line in plan.describe())


def test_an_accessory_with_build_is_built_only_when_its_image_is_missing() -> None:
    cfg = _config({"api": {"image": IMG},
                   "tool": {"image": "local/tool:1", "build": {"context": "/srv/tool"}},
                   "db": {"image": "reg/db:16"}})
    plan = build_plan(cfg, "v2", [], contract=set(), missing_images=frozenset({"local/tool:1", "reg/db:16"}))
    assert {a.name: a.build for a in plan.accessories} == {"tool": True, "db": False}  # db is pulled
    assert any("tool: missing or stopped: started first; its image is missing: built here "
               "(compose build tool)" in line for line in plan.describe())
    present = build_plan(cfg, "v2", [], contract=set(), missing_images=frozenset())
    assert not any(a.build for a in present.accessories)
    assert not any("built here" in line for line in present.describe())


def test_problems_order_against_depends_on_start_first_port_container_name() -> None:
    cfg = _config({
        "a": {"image": IMG, "labels": {"obsdeploy.order": "1"}, "depends_on": {"b": {}}},
        "b": {"image": IMG, "labels": {"obsdeploy.order": "2"}},
        "c": {"image": IMG, "labels": {"obsdeploy.order": "x"}},
        "d": {"image": IMG, "labels": {"obsdeploy.order": "3"}, "depends_on": {"e": {}}},
        "e": {"image": IMG},
        "web": {"image": IMG, "deploy": {"update_config": {"order": "start-first"}},
                "ports": [{"target": 80, "published": "8080", "host_ip": "127.0.0.1"}]},
        "ok": {"image": IMG, "deploy": {"update_config": {"order": "start-first"}},
               "ports": [{"target": 80, "host_ip": "127.0.0.1"}]},
        "named": {"image": IMG, "container_name": "x", "deploy": {"replicas": 3}},
        "odd": {"image": IMG, "deploy": {"update_config": {"order": "sideways"}}},
    })
    codes = sorted(c for c, _ in build_plan(cfg, "v2", [], contract={"nope"}).problems)
    assert codes == ["plan.container_name_replicas", "plan.contract_services", "plan.order",
                     "plan.order_depends_on", "plan.order_depends_on", "plan.start_first_port",
                     "plan.strategy"]
    messages = " ".join(m for _, m in build_plan(cfg, "v2", [], contract=set()).problems)
    assert "127.0.0.1:8080" in messages and "a depends_on b" in messages


def test_no_release_service_is_a_problem() -> None:
    plan = build_plan(_config({"kv": {"image": "reg/kv:7"}}), "v2", [], contract=set())
    assert [c for c, _ in plan.problems] == ["plan.no_release"]


def test_changes_name_image_environment_and_new_services() -> None:
    cfg = _config({"app": {"image": IMG, "environment": {"A": "1", "NEW": "2"},
                           "ports": [{"target": 8000, "host_ip": "127.0.0.1"}]},
                   "fresh": {"image": IMG}})
    plan = build_plan(cfg, "v2", [_container("app")], contract=set())
    assert plan.changes["fresh"] == ["not running: will be started"]
    app = " | ".join(plan.changes["app"])
    assert "reg/app:v1 -> reg/app:v2" in app and "environment adds NEW" in app and "ports" in app


def test_contract_services_default_to_release_services_mounting_the_contract() -> None:
    cfg = _config({"obs": {"image": IMG, "volumes": [{"type": "bind", "source": "/r/data",
                                                       "target": "/app/data"}]},
                   "db": {"image": "reg/db:1", "volumes": [{"type": "bind", "source": "/r/data",
                                                             "target": "/d"}]},
                   "api": {"image": IMG}})
    assert contract_services(cfg.services, None, {"/r/data"}) == {"obs"}
    assert contract_services(cfg.services, ["api"], {"/r/data"}) == {"api"}


def test_release_override_labels_and_resets() -> None:
    cfg = _config(SEED)
    text = release_override("v2", [cfg.service("gateway"), cfg.service("worker")])
    assert text.count('"obsdeploy.release": "v2"') == 2
    assert text.count("depends_on: !reset {}") == 2
    assert text.count("container_name: !reset null") == 1


def test_single_writers_are_contract_services_or_labelled_and_always_stop_first() -> None:
    services = {
        "observer": {"image": IMG},  # carries the contract: a single writer
        "reader": {"image": IMG, "labels": {"obsdeploy.single_writer": "false"}},
        "ledger": {"image": IMG, "labels": {"obsdeploy.single_writer": "true"}},
        "web": {"image": IMG},
    }
    plan = build_plan(_config(services), "v2", [], contract={"observer", "reader"})
    assert {s.name for s in plan.release_services if s.single_writer} == {"observer", "ledger"}
    assert plan.problems == ()
    assert plan.as_dict()["steps"][0]["services"][1]["single_writer"] is True  # ledger
    assert any("observer (stop-first" in line and "single writer" in line for line in plan.describe())


def test_start_first_or_replicas_for_a_single_writer_is_a_problem_naming_what_to_change() -> None:
    services = {
        "observer": {"image": IMG, "deploy": {"update_config": {"order": "start-first"}}},
        "ledger": {"image": IMG, "labels": {"obsdeploy.single_writer": "true"},
                   "deploy": {"replicas": 2}},
        "odd": {"image": IMG, "labels": {"obsdeploy.single_writer": "yes"}},
    }
    problems = dict(build_plan(_config(services), "v2", [], contract={"observer"}).problems)
    assert sorted(problems) == ["plan.single_writer", "plan.single_writer_replicas",
                                "plan.single_writer_start_first"]
    assert "observer" in problems["plan.single_writer_start_first"]
    assert "deploy.update_config.order" in problems["plan.single_writer_start_first"]
    assert "obsdeploy.single_writer" in problems["plan.single_writer_start_first"]
    assert "deploy.replicas 2" in problems["plan.single_writer_replicas"]
    # Opting out lifts both.
    services["observer"]["labels"] = {"obsdeploy.single_writer": "false"}
    services["ledger"]["labels"] = {}
    del services["odd"]
    assert build_plan(_config(services), "v2", [], contract={"observer"}).problems == ()


def test_a_proxied_single_writer_is_stop_first_and_held() -> None:
    services = {"observer": {"image": IMG}}
    held = build_plan(_config(services), "v2", [], contract={"observer"}, proxy_service="observer")
    [observer] = held.release_services
    assert (observer.strategy, observer.single_writer, held.held) == ("stop-first", True, True)
    assert held.as_dict()["held"] is True
    assert any("requests held" in line for line in held.describe())
    # Not a single writer: start-first behind the proxy, as before.
    plain = build_plan(_config(services), "v2", [], contract=set(), proxy_service="observer")
    assert (plain.release_services[0].strategy, plain.held) == ("start-first", False)
