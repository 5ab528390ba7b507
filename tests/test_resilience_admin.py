"""The health and breaker admin: what operators see and what its actions change."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from core.breaker import CircuitBreaker
from core.breaker_core import State
from resilience.models import (
    CircuitBreakerState,
    ComponentHealth,
    ComponentType,
    HealingAttempt,
    HealingOutcome,
    HealthStatus,
    HealthTransition,
)
from resilience.snapshots import refresh_snapshots
from resilience.tracking import prune_stale_components

pytestmark = pytest.mark.django_db


def broken_component(name: str = "container:fcp-worker-3") -> ComponentHealth:
    now = timezone.now()
    component = ComponentHealth.objects.create(
        name=name,
        component_type=ComponentType.CONTAINER,
        status=HealthStatus.UNHEALTHY,
        status_since=now - timedelta(minutes=42),
        consecutive_failures=9,
        last_message="exited (exit code 137)",
        last_checked_at=now,
        needs_attention=True,
        heal_attempts=5,
        heal_backoff_seconds=160,
    )
    HealthTransition.objects.create(
        component=component,
        from_status="healthy",
        to_status="unhealthy",
        message="exited",
        at=now - timedelta(minutes=42),
    )
    HealingAttempt.objects.create(
        component=component,
        action="restart_container",
        host="worker-a:123",
        attempt=5,
        backoff_seconds=160,
        started_at=now - timedelta(minutes=2),
        outcome=HealingOutcome.NOT_HEALED,
        message="restarted; exited again",
    )
    return component


def test_the_component_changelist_says_what_is_broken_and_since_when(admin_client) -> None:
    broken_component()
    response = admin_client.get(reverse("admin:resilience_componenthealth_changelist"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "container:fcp-worker-3" in page
    assert "Unhealthy" in page
    assert "42\xa0minutes ago" in page
    assert "exited (exit code 137)" in page


def test_a_component_page_shows_its_transitions_and_healing_attempts(admin_client) -> None:
    component = broken_component()
    page = admin_client.get(reverse("admin:resilience_componenthealth_change", args=[component.pk])).content.decode()
    assert "restart_container" in page
    assert "restarted; exited again" in page
    assert "worker-a:123" in page


def test_resuming_healing_clears_needs_attention_and_gives_the_budget_back(admin_client) -> None:
    component = broken_component()
    response = admin_client.post(
        reverse("admin:resilience_componenthealth_changelist"),
        {"action": "resume_healing", "_selected_action": [component.pk]},
        follow=True,
    )
    assert "Healing resumed for 1 component(s)" in response.content.decode()
    component.refresh_from_db()
    assert (component.needs_attention, component.heal_attempts, component.heal_backoff_seconds) == (False, 0, 0)


def test_maintenance_actions_park_and_release_a_component(admin_client) -> None:
    component = broken_component()
    url = reverse("admin:resilience_componenthealth_changelist")
    admin_client.post(url, {"action": "start_maintenance", "_selected_action": [component.pk]})
    component.refresh_from_db()
    assert component.in_maintenance
    admin_client.post(url, {"action": "end_maintenance", "_selected_action": [component.pk]})
    component.refresh_from_db()
    assert not component.in_maintenance


def test_breaker_actions_change_the_live_shared_state(admin_client) -> None:
    name = f"test-admin-{uuid.uuid4().hex[:8]}"
    breaker = CircuitBreaker(name)
    breaker.call(lambda: None)
    refresh_snapshots()
    row = CircuitBreakerState.objects.get(name=name)
    url = reverse("admin:resilience_circuitbreakerstate_changelist")
    try:
        response = admin_client.post(url, {"action": "force_open", "_selected_action": [row.pk]}, follow=True)
        assert "Force open: 1 breaker(s), effective on every host." in response.content.decode()
        assert breaker.state is State.FORCED_OPEN
        row.refresh_from_db()
        assert row.state == "forced_open"
        admin_client.post(url, {"action": "disable", "_selected_action": [row.pk]})
        assert breaker.state is State.DISABLED
        admin_client.post(url, {"action": "reset", "_selected_action": [row.pk]})
        assert breaker.state is State.CLOSED
        row.refresh_from_db()
        assert row.state == "closed"  # the snapshot follows at once
    finally:
        admin_client.post(url, {"action": "forget", "_selected_action": [row.pk]})
    assert not CircuitBreakerState.objects.filter(name=name).exists()


def test_components_nobody_reports_any_more_are_pruned_after_a_day() -> None:
    gone = broken_component("container:removed-long-ago")
    ComponentHealth.objects.filter(pk=gone.pk).update(last_checked_at=timezone.now() - timedelta(days=2))
    parked = broken_component("container:parked")
    ComponentHealth.objects.filter(pk=parked.pk).update(
        last_checked_at=timezone.now() - timedelta(days=2), in_maintenance=True
    )
    fresh = broken_component("container:still-here")
    prune_stale_components(timezone.now())
    assert set(ComponentHealth.objects.values_list("name", flat=True)) == {fresh.name, parked.name}
