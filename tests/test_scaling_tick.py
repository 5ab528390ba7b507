"""The scaling step of the tick: fan-out through a real worker, isolation, lock, broker outage."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model

from core.tick import registered_steps, run_tick
from scaling import locks
from scaling.decisions import Rule, ScaleDirection
from scaling.models import ScalingEvent, ScalingPolicy
from scaling.service import AutoScalingService
from tests import test_scaling_docker
from tests.conftest import tick_with_broker_down, wait_for
from tests.test_scaling_docker import make_policy, owned

# The Docker fixtures, shared with the engine tests.
docker_client = test_scaling_docker.docker_client
service_name = test_scaling_docker.service_name


def test_the_scaling_step_is_registered_after_sync():
    steps = {step.name: step.order for step in registered_steps()}
    assert steps["scaling"] == 20
    assert steps["sync"] < steps["scaling"]


@pytest.mark.worker
@pytest.mark.docker
def test_the_tick_evaluates_each_enabled_policy_on_a_worker_and_isolates_a_broken_one(
    celery_worker, docker_client, service_name
):
    make_policy(service_name, min_instances=0, dry_run=True)
    make_policy(f"{service_name}-broken")
    ScalingPolicy.objects.filter(service=f"{service_name}-broken").update(min_instances=5, max_instances=2)

    summary = run_tick()

    assert summary["steps"]["scaling"] == "ok"
    assert summary["metrics"]["scaling"]["scaling_policies"] == 2  # the default policies are disabled
    assert summary["metrics"]["scaling"]["scaling_dispatched"] == 2
    wait_for(lambda: ScalingEvent.objects.count() == 2, timeout=30, message=celery_worker.log())
    good = ScalingEvent.objects.get(service=service_name)
    broken = ScalingEvent.objects.get(service=f"{service_name}-broken")
    assert (good.action, good.rule, good.success, good.dry_run) == (
        ScaleDirection.NONE,
        "metric:queue_depth",
        True,
        True,
    )
    assert good.metrics["queue_depth"]["value"] == 0
    assert (broken.action, broken.rule, broken.success) == (ScaleDirection.NONE, str(Rule.INVALID_POLICY), False)
    assert broken.error == "invalid policy: min_instances: min_instances (5) cannot exceed max_instances (2)."


def test_an_evaluation_finding_the_lock_held_does_nothing(db):
    policy = ScalingPolicy.objects.create(service="locked", image="fcp-tiny:latest", target_cpu_percent=50.0)
    token = locks.acquire(policy.service, ttl_seconds=30)
    assert token is not None
    try:
        result = AutoScalingService().run(policy.service)
    finally:
        locks.release(policy.service, token)

    assert result == {"service": "locked", "skipped": "another evaluation of this service holds its lock"}
    assert not ScalingEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_when_the_broker_is_down_the_scaling_step_fails_with_its_reason_and_the_tick_goes_on():
    """A real fault: the tick runs in a process whose broker URL points at a closed port."""
    ScalingPolicy.objects.create(service="api", enabled=True, image="fcp-tiny:latest", target_cpu_percent=50.0)
    out = tick_with_broker_down()

    summary = json.loads(out.stdout)
    # One error contract: a failed step reads "error" with its reason, never "ok".
    assert summary["steps"]["scaling"] == "error"
    assert summary["errors"]["scaling"].startswith("could not publish 1 evaluations")
    assert summary["metrics"]["scaling"]["scaling_policies"] == 1
    assert summary["metrics"]["scaling"]["scaling_dispatched"] == 0
    assert {"sync", "health"} <= set(summary["steps"])  # the other steps still ran


@pytest.mark.worker
@pytest.mark.docker
def test_the_admin_action_evaluates_now_as_a_dry_run_on_a_worker(celery_worker, client, docker_client, service_name):
    policy = make_policy(service_name, min_instances=2)  # a live policy that would scale up
    client.force_login(get_user_model().objects.create_superuser("root", "r@example.com", "a-long-password-123"))

    response = client.post(
        "/admin/scaling/scalingpolicy/",
        {"action": "evaluate_now_dry_run", "_selected_action": [policy.pk]},
        follow=True,
    )

    assert "Queued a dry-run evaluation of 1 policy" in response.content.decode()
    event = wait_for(lambda: ScalingEvent.objects.filter(service=service_name).first(), message=celery_worker.log())
    assert (event.action, event.from_instances, event.to_instances) == (ScaleDirection.UP, 0, 2)
    assert (event.dry_run, event.trigger, event.success) == (True, "admin", True)
    assert owned(docker_client, service_name) == []  # a dry run touches nothing
