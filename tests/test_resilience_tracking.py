"""Recording a check result writes only what tracking owns: operators' and healing's fields survive it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from core.health import HealthCheckResult
from resilience import tracking
from resilience.models import ComponentHealth, ComponentType, HealthStatus

pytestmark = pytest.mark.django_db
H, U = HealthStatus.HEALTHY, HealthStatus.UNHEALTHY


def result(name: str, status: HealthStatus, message: str = "") -> HealthCheckResult:
    return HealthCheckResult(
        component=name,
        component_type=ComponentType.CONTAINER,
        status=status,
        message=message,
        failure_threshold=2,
        success_threshold=2,
    )


def written_meanwhile(monkeypatch: pytest.MonkeyPatch, **fields: Any) -> None:
    """Write ``fields`` to the row after tracking has read it and before it writes it back."""
    real = tracking.next_status

    def next_status_after_someone_wrote(*args: Any, **kwargs: Any) -> tracking.Smoothed:
        ComponentHealth.objects.update(**fields)
        return real(*args, **kwargs)

    monkeypatch.setattr(tracking, "next_status", next_status_after_someone_wrote)


def test_maintenance_and_healing_state_written_while_tracking_holds_the_row_survive_its_write(monkeypatch) -> None:
    now = timezone.now()
    ComponentHealth.objects.create(
        name="container:api-1", component_type=ComponentType.CONTAINER, status=U, last_checked_at=now
    )
    lock_until = now + timedelta(minutes=2)
    written_meanwhile(
        monkeypatch,
        in_maintenance=True,
        needs_attention=True,
        heal_attempts=4,
        heal_lock_until=lock_until,
        heal_lock_owner="worker-b:77",
    )

    tracking.record_results([result("container:api-1", U, "exited (exit code 137)")])

    row = ComponentHealth.objects.get(name="container:api-1")
    assert (row.in_maintenance, row.needs_attention, row.heal_attempts) == (True, True, 4)
    assert (row.heal_lock_until, row.heal_lock_owner) == (lock_until, "worker-b:77")
    assert (row.consecutive_failures, row.last_message) == (1, "exited (exit code 137)")  # tracking's own write


def test_a_stale_instance_never_takes_back_an_operators_maintenance() -> None:
    ComponentHealth.objects.create(name="container:api-2", component_type=ComponentType.CONTAINER, status=H)
    stale = ComponentHealth.objects.get(name="container:api-2")
    ComponentHealth.objects.filter(pk=stale.pk).update(in_maintenance=True)

    assert tracking.apply_result(stale, result("container:api-2", U, "exited"))

    row = ComponentHealth.objects.get(pk=stale.pk)
    assert row.in_maintenance
    assert (row.status, row.consecutive_failures, row.last_message) == (H, 1, "exited")


def test_ten_healthy_minutes_give_the_budget_back_without_touching_maintenance(monkeypatch) -> None:
    now = timezone.now()
    ComponentHealth.objects.create(
        name="container:api-3",
        component_type=ComponentType.CONTAINER,
        status=H,
        status_since=now - timedelta(minutes=11),
        last_checked_at=now - timedelta(minutes=1),
        heal_attempts=2,
        heal_backoff_seconds=20,
        next_heal_at=now - timedelta(minutes=10),
    )
    written_meanwhile(monkeypatch, in_maintenance=True)

    (returned,) = tracking.record_results([result("container:api-3", H, "running")])

    row = ComponentHealth.objects.get(name="container:api-3")
    assert row.in_maintenance
    assert (row.heal_attempts, row.heal_backoff_seconds, row.next_heal_at) == (0, 0, None)
    assert (returned.heal_attempts, returned.next_heal_at) == (0, None)
