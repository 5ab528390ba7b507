"""Scaling policies: validation messages, the default policies, and what operators see."""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps as django_apps
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management import call_command

from scaling.decisions import ScaleDirection
from scaling.models import ScalingEvent, ScalingPolicy

create_default_policies = importlib.import_module("scaling.migrations.0002_default_policies").create_policies


def valid_policy(**fields) -> ScalingPolicy:
    defaults = {"service": "api", "min_instances": 1, "max_instances": 3, "target_cpu_percent": 70.0}
    defaults["image"] = "fcp-tiny:latest"
    defaults.update(fields)
    return ScalingPolicy(**defaults)


def errors_of(policy: ScalingPolicy) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        policy.full_clean()
    return caught.value.message_dict


def test_a_complete_policy_is_valid(db):
    valid_policy(queues=["celery"], target_queue_depth_per_instance=5.0, command=["sleep", "600"]).full_clean()


def test_min_above_max_is_rejected_with_both_numbers(db):
    assert errors_of(valid_policy(min_instances=5, max_instances=2))["min_instances"] == [
        "min_instances (5) cannot exceed max_instances (2)."
    ]


def test_a_negative_or_zero_target_is_rejected(db):
    errors = errors_of(valid_policy(target_cpu_percent=-10.0, target_response_time_ms=0.0))
    assert errors["target_cpu_percent"] == ["The CPU % target must be greater than 0 (got -10)."]
    assert errors["target_response_time_ms"] == ["The response time target (ms) must be greater than 0 (got 0)."]


def test_a_policy_without_any_target_is_rejected(db):
    assert errors_of(valid_policy(target_cpu_percent=None))["__all__"] == [
        "Set at least one target (CPU, memory, DB connections, response time, queue latency or depth)."
    ]


@pytest.mark.parametrize("image", ["Fcp-Tiny:latest", "fcp tiny", "fcp-tiny:", "-fcp", "fcp-tiny:latest:again", ""])
def test_a_malformed_image_name_is_rejected(db, image):
    assert "image" in errors_of(valid_policy(image=image))


@pytest.mark.parametrize(
    "image", ["fcp-tiny:latest", "busybox", "registry.example.com:5000/team/app:1.2", "app@sha256:" + "a" * 64]
)
def test_well_formed_image_names_are_accepted(db, image):
    valid_policy(image=image).full_clean()


def test_queue_targets_need_queue_names(db):
    errors = errors_of(valid_policy(target_cpu_percent=None, target_queue_depth_per_instance=10.0))
    assert errors["queues"] == ["Queue targets need at least one queue name."]


def test_the_ownership_labels_cannot_be_set_by_a_template(db):
    errors = errors_of(valid_policy(labels={"io.fabric-control-plane.managed": "true", "team": "infra"}))
    assert "set by the control plane itself" in errors["labels"][0]
    assert "io.fabric-control-plane.managed" in errors["labels"][0]


def test_a_shell_string_command_is_rejected_for_exec_form(db):
    assert "exec form" in errors_of(valid_policy(command="celery -A project worker"))["command"][0]


def test_the_data_migration_creates_disabled_policies_for_backend_frontend_and_worker(db):
    ScalingPolicy.objects.all().delete()  # a transactional test before this one may have flushed them anyway
    ScalingPolicy.objects.create(service="worker", enabled=True, image="mine:1", target_cpu_percent=10.0)

    create_default_policies(django_apps, None)
    create_default_policies(django_apps, None)  # idempotent

    policies = {p.service: p for p in ScalingPolicy.objects.all()}
    assert sorted(policies) == ["backend", "frontend", "worker"]
    for name in ("backend", "frontend"):
        assert policies[name].enabled is False
        policies[name].full_clean()  # valid, ready to enable
    assert (policies["worker"].enabled, policies["worker"].image) == (True, "mine:1")  # an operator's policy is kept


def test_the_default_worker_policy_drains_celery_workers(db):
    ScalingPolicy.objects.all().delete()
    create_default_policies(django_apps, None)
    worker = ScalingPolicy.objects.get(service="worker")

    worker.full_clean()
    assert (worker.enabled, worker.celery_worker, worker.queues) == (False, True, ["celery"])
    assert worker.stop_timeout >= 240  # at least the task soft time limit


@pytest.fixture
def admin_client_logged_in(client, db):
    user = get_user_model().objects.create_superuser("root", "root@example.com", "a-long-password-123")
    client.force_login(user)
    return client


def test_the_policy_changelist_shows_counts_and_never_the_environment(admin_client_logged_in):
    ScalingPolicy.objects.create(
        service="payments",
        image="fcp-tiny:latest",
        target_cpu_percent=60.0,
        environment={"DATABASE_PASSWORD": "hunter2-very-secret"},
    )
    ScalingEvent.objects.create(
        service="payments", action=ScaleDirection.NONE, from_instances=0, desired_instances=1, to_instances=0,
        reason="r", rule="cooldown",
    )  # fmt: skip

    page = admin_client_logged_in.get("/admin/scaling/scalingpolicy/").content.decode()

    assert "payments" in page
    assert "none by cooldown" in page
    assert "cpu_percent 60" in page
    assert "hunter2-very-secret" not in page
    assert "DATABASE_PASSWORD" not in page


def test_events_are_read_only_and_filterable(admin_client_logged_in):
    ScalingEvent.objects.create(
        service="payments", action=ScaleDirection.UP, from_instances=1, desired_instances=3, to_instances=3,
        reason="cpu_percent 140 vs target 70", rule="metric:cpu_percent",
    )  # fmt: skip
    ScalingEvent.objects.create(
        service="search", action=ScaleDirection.NONE, from_instances=0, desired_instances=0, to_instances=0,
        reason="engine down", rule="engine_unreachable", success=False, error="Docker engine unreachable",
    )  # fmt: skip

    filtered = admin_client_logged_in.get("/admin/scaling/scalingevent/?success__exact=0").content.decode()
    add = admin_client_logged_in.get("/admin/scaling/scalingevent/add/")

    assert "Docker engine unreachable" in filtered
    assert "cpu_percent 140 vs target 70" not in filtered
    assert add.status_code == 403


def test_the_status_command_prints_a_table_of_every_policy(db, capsys):
    ScalingPolicy.objects.create(
        service="payments", image="fcp-tiny:latest", queues=["pay"], target_queue_depth_per_instance=10.0,
        min_instances=2, max_instances=6,
    )  # fmt: skip

    call_command("scale", "status")

    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("service"))
    assert header.split()[:2] == ["service", "enabled"]
    assert "last decision" in header
    row = next(line for line in lines if line.startswith("payments "))
    assert "queue_depth 10" in row
    assert "2-6" in row
    assert row.rstrip().endswith("never")
