"""The data of accessories as values: dump and restore commands and irreversible jobs in the
plan, SemVer precedence, and the rollback a migration refuses."""

from __future__ import annotations

import pytest

from server_agent.common.errors import ExitCode, UsageError
from server_agent.common.versions import older_than
from server_agent.plan import build_plan
from server_agent.transaction import refuse_across_a_migration
from tests.unit.test_plan import IMG, _config, _container

PROJECT = {
    "db": {"image": "reg/postgres:15", "labels": {
        "obsdeploy.backup": "pg_dump -Fc -U app app",
        "obsdeploy.restore": "sh -c 'pg_restore --clean -U app -d app'"}},
    "cache": {"image": "reg/redis:7"},
    "migrate": {"image": IMG, "labels": {"obsdeploy.role": "job", "obsdeploy.reversible": "false"}},
    "seed": {"image": IMG, "labels": {"obsdeploy.role": "job"}},
    "app": {"image": IMG, "depends_on": {"db": {}}},
}


def test_the_plan_splits_the_data_commands_and_dumps_only_what_runs() -> None:
    plan = build_plan(_config(PROJECT), "v2", [_container("db", tag=None)], set())
    db = next(a for a in plan.accessories if a.name == "db")
    assert db.dump == ("pg_dump", "-Fc", "-U", "app", "app")
    assert db.restore == ("sh", "-c", "pg_restore --clean -U app -d app")
    assert db.dumped and not plan.problems
    assert plan.irreversible_jobs == ("migrate",)
    assert any("dump      db: pg_dump" in line for line in plan.describe())
    assert any("migrate" in line and "not reversible" in line for line in plan.describe())
    # A missing database holds nothing to dump: it is started, not dumped.
    assert not next(a for a in build_plan(_config(PROJECT), "v2", [], set()).accessories
                    if a.name == "db").dumped


@pytest.mark.parametrize(("service", "labels", "code"), [
    ("app", {"obsdeploy.backup": "pg_dump app"}, "plan.data_label"),  # a release service
    ("migrate", {"obsdeploy.role": "job", "obsdeploy.restore": "cat"}, "plan.data_label"),
    ("db", {"obsdeploy.backup": "sh -c 'unclosed"}, "plan.data_label"),
    ("db", {"obsdeploy.backup": "  "}, "plan.data_label"),
    ("migrate", {"obsdeploy.role": "job", "obsdeploy.reversible": "no"}, "plan.reversible"),
])
def test_misused_data_labels_are_preflight_problems(service: str, labels: dict[str, str], code: str) -> None:
    services = {**PROJECT, service: {**PROJECT[service], "labels": labels}}
    plan = build_plan(_config(services), "v2", [], set())
    assert code in [c for c, _ in plan.problems], plan.problems


def test_older_than_is_semver_precedence() -> None:
    assert older_than("v1.9.0", "v1.10.0")
    assert older_than("v2.0.0-rc.1", "v2.0.0")
    assert not older_than("v2.0.0", "v2.0.0")
    assert not older_than("v2.0.1", "v2.0.0")


def test_a_rollback_older_than_a_migration_is_refused_naming_it() -> None:
    records = [
        {"action": "deploy", "tag": "v1.0.0", "result": "success"},
        {"action": "deploy", "tag": "v2.0.0", "result": "success", "irreversible_jobs": ["migrate"],
         "backup": "backup-x.tar", "started_at": "2026-12-07T10:00:00Z"},
        {"action": "deploy", "tag": "v2.1.0", "result": "success"},
    ]
    with pytest.raises(UsageError) as refused:
        refuse_across_a_migration(records, "v1.0.0")
    message = str(refused.value)
    assert refused.value.exit_code == ExitCode.USAGE
    assert "migrate" in message and "v2.0.0" in message and "backup-x.tar" in message and "--force" in message
    refuse_across_a_migration(records, "v2.0.0")  # the release that ran it: not older
    refuse_across_a_migration(records[:1] + records[2:], "v1.0.0")  # no migration in between


def test_the_notification_carries_the_warning() -> None:
    from server_agent.notify import notice

    n = notice({"action": "deploy", "tag": "v2", "from_tag": "v1", "result": "rolled_back",
                "warnings": ["job migrate of v2 (not reversible) ran before the rollback"]}, "app", "vm1")
    assert "warning: job migrate of v2" in n.body
