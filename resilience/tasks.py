"""Celery tasks for health and healing: thin wrappers around ``sweep`` and ``healing``."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from resilience import healing, snapshots, tracking
from resilience.sweep import sweep, verify_component


@shared_task(
    name="resilience.run_check",
    soft_time_limit=settings.HEALTH_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.HEALTH_TASK_SOFT_TIME_LIMIT + 10,
)
def run_check(name: str) -> dict[str, Any]:
    """Run one registered check (or provider), record its results, dispatch any due healing."""
    return sweep([name], heal=lambda pk: heal_component.delay(pk))


# The heal lock outlives the hard limit, so a lock only expires once its holder is dead.
@shared_task(
    name="resilience.heal_component",
    soft_time_limit=settings.HEAL_LOCK_SECONDS - 20,
    time_limit=settings.HEAL_LOCK_SECONDS - 10,
)
def heal_component(component_id: int) -> dict[str, Any]:
    attempt = healing.heal(component_id, timezone.now(), verify=verify_component)
    if attempt is None:
        return {"component_id": component_id, "healed": False, "reason": "not due, out of budget or claimed"}
    return {"component_id": component_id, "action": attempt.action, "outcome": attempt.outcome}


@shared_task(name="resilience.housekeeping")
def housekeeping() -> dict[str, int]:
    """Once a tick: refresh the breaker snapshots, forget components nobody reports any more."""
    return {
        "breakers_refreshed": snapshots.refresh_snapshots(),
        "rows_pruned": tracking.prune_stale_components(timezone.now()),
    }
