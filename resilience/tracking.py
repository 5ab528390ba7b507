"""Turn raw check results into each component's smoothed status, with its history.

``next_status`` is the threshold rule (pure); ``record_results`` applies it to
``ComponentHealth`` rows under a row lock and writes a ``HealthTransition`` for every
change. It writes only the fields it owns (``TRACKED_FIELDS``): maintenance, "needs
attention" and the healing budget are written by operators and healing at the same
time, and a whole-row save would undo them. When the database itself is down its results cannot be written, so they
wait in a Redis list and are replayed, in order, by the next recording that reaches
the database: the outage then appears in the history with the times it happened.

``record_outage`` is the one way a failure noticed outside a sweep (a stopped
scheduler, seen at request time) becomes history: one conditional UPDATE decides which
of many concurrent requests writes the transition.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import InterfaceError, OperationalError, close_old_connections, transaction
from django.db.models import F
from django.utils import timezone

from core.clients import redis_client
from core.health import ComponentType, HealthCheckResult
from resilience.models import ComponentHealth, HealthStatus, HealthTransition

logger = logging.getLogger(__name__)

PENDING_KEY = "resilience:pending-results"
PENDING_MAX = 5000  # results kept while the database is away
PENDING_MAX_AGE = timedelta(hours=1)  # older ones say nothing about now: dropped on replay


@dataclass(frozen=True)
class Smoothed:
    status: HealthStatus
    consecutive_failures: int
    consecutive_successes: int


def next_status(
    current: HealthStatus,
    failures: int,
    successes: int,
    raw: HealthStatus,
    failure_threshold: int,
    success_threshold: int,
) -> Smoothed:
    """The threshold rule.

    1. An UNHEALTHY result counts a failure; the component becomes UNHEALTHY at the
       ``failure_threshold``-th in a row (until then it keeps its status).
    2. A HEALTHY or DEGRADED result counts a success; an UNHEALTHY component leaves
       that state only at the ``success_threshold``-th in a row. Otherwise the
       result's status applies at once.
    3. An UNKNOWN result (a check skipped because what it depends on is down) changes
       nothing.
    """
    if raw == HealthStatus.UNKNOWN:
        return Smoothed(current, failures, successes)
    if raw == HealthStatus.UNHEALTHY:
        failures += 1
        status = HealthStatus.UNHEALTHY if failures >= failure_threshold else current
        return Smoothed(status, failures, 0)
    successes += 1
    if current == HealthStatus.UNHEALTHY and successes < success_threshold:
        return Smoothed(current, 0, successes)
    return Smoothed(raw, 0, successes)


# What tracking writes on a component row; everything else belongs to operators
# (maintenance) and healing (needs attention, the budget, the heal lock).
TRACKED_FIELDS = [
    "component_type",
    "critical",
    "status",
    "status_since",
    "consecutive_failures",
    "consecutive_successes",
    "last_message",
    "last_latency_ms",
    "last_details",
    "last_checked_at",
    "updated_at",
]


def _apply(result: HealthCheckResult) -> ComponentHealth | None:
    component, _ = ComponentHealth.objects.select_for_update().get_or_create(
        name=result.component,
        defaults={"component_type": result.component_type, "critical": result.critical},
    )
    return component if apply_result(component, result) else None


def apply_result(component: ComponentHealth, result: HealthCheckResult) -> bool:
    """Apply ``result`` to ``component`` and write only the fields tracking owns.

    ``component`` may be older than the row (the row lock of ``_apply`` prevents that on
    PostgreSQL, not on SQLite): what operators and healing wrote meanwhile stays.
    Returns False for a result older than the last one recorded.
    """
    if component.last_checked_at is not None and result.checked_at <= component.last_checked_at:
        return False  # an older result arriving late (replayed, or a slow overlapping sweep)
    smoothed = next_status(
        HealthStatus(component.status),
        component.consecutive_failures,
        component.consecutive_successes,
        result.status,
        result.failure_threshold,
        result.success_threshold,
    )
    if smoothed.status != component.status:
        HealthTransition.objects.create(
            component=component,
            from_status=component.status,
            to_status=smoothed.status,
            message=result.message,
            at=result.checked_at,
        )
        logger.log(
            logging.WARNING if smoothed.status == HealthStatus.UNHEALTHY else logging.INFO,
            "health: %s %s -> %s (%s)",
            component.name,
            component.status,
            smoothed.status,
            result.message,
        )
        component.status = smoothed.status
        component.status_since = result.checked_at
    component.component_type = result.component_type
    component.critical = result.critical
    component.consecutive_failures = smoothed.consecutive_failures
    component.consecutive_successes = smoothed.consecutive_successes
    component.last_message = result.message
    component.last_latency_ms = result.latency_ms
    component.last_details = result.details
    component.last_checked_at = result.checked_at
    component.save(update_fields=TRACKED_FIELDS)
    _reset_budget_after_healthy_period(component, result.checked_at)
    return True


def _reset_budget_after_healthy_period(component: ComponentHealth, now: datetime) -> None:
    """Ten healthy minutes (Kubernetes' rule) give a component its full healing budget back.

    A conditional UPDATE of the budget fields only, and only when there is a budget to
    give back, so a healthy component costs no extra write.
    """
    healthy_for = timedelta(seconds=settings.HEAL_RESET_AFTER_SECONDS)
    if component.status != HealthStatus.HEALTHY or component.status_since > now - healthy_for:
        return
    full = {"heal_attempts": 0, "heal_backoff_seconds": 0, "heal_window_started_at": None, "next_heal_at": None}
    if any(getattr(component, field) != value for field, value in full.items()):
        ComponentHealth.objects.filter(pk=component.pk, status=HealthStatus.HEALTHY).update(**full)
        for field, value in full.items():
            setattr(component, field, value)


def record_results(results: Iterable[HealthCheckResult]) -> list[ComponentHealth]:
    """Apply results (after any still waiting from a database outage); return the updated rows."""
    fresh = list(results)
    waiting = _take_pending()
    batch = sorted(waiting + fresh, key=lambda r: r.checked_at)
    try:
        with transaction.atomic():
            updated = [row for r in batch if (row := _apply(r)) is not None]
    except (OperationalError, InterfaceError) as exc:
        # The database is away (any other error, a missing table say, is a bug: it raises).
        logger.warning("database unreachable (%s): keeping %d health results for later", exc, len(batch))
        _keep_pending(batch)
        close_old_connections()
        return []
    fresh_names = {r.component for r in fresh}
    return [row for row in updated if row.name in fresh_names]


def record_outage(name: str, component_type: ComponentType, message: str, now: datetime, critical: bool) -> bool:
    """Mark ``name`` UNHEALTHY now, recording the transition once; True when this call recorded it.

    1. Read the component's status (creating its row if no sweep ever did).
    2. Already UNHEALTHY: refresh its message and check time, no transition.
    3. Otherwise one conditional UPDATE from exactly the status read: of many requests
       noticing the same outage at once, only the one whose UPDATE matched writes the
       ``HealthTransition``. The next sweep's results take over with the usual thresholds.
    """
    with transaction.atomic():
        component, _ = ComponentHealth.objects.get_or_create(
            name=name, defaults={"component_type": component_type, "critical": critical}
        )
        rows = ComponentHealth.objects.filter(pk=component.pk)
        if component.status == HealthStatus.UNHEALTHY:
            rows.filter(status=HealthStatus.UNHEALTHY).update(last_message=message, last_checked_at=now, updated_at=now)
            return False
        won = rows.filter(status=component.status).update(
            status=HealthStatus.UNHEALTHY,
            status_since=now,
            consecutive_failures=F("consecutive_failures") + 1,
            consecutive_successes=0,
            last_message=message,
            last_checked_at=now,
            updated_at=now,
        )
        if not won:
            return False
        HealthTransition.objects.create(
            component=component, from_status=component.status, to_status=HealthStatus.UNHEALTHY, message=message, at=now
        )
    logger.warning("health: %s %s -> %s (%s)", name, component.status, HealthStatus.UNHEALTHY, message)
    return True


def _take_pending() -> list[HealthCheckResult]:
    try:
        client = redis_client()
        key = cache.make_key(PENDING_KEY)
        with client.pipeline(transaction=True) as pipe:
            pipe.lrange(key, 0, -1)
            pipe.delete(key)
            raw, _ = pipe.execute()
    except Exception:
        logger.warning("could not read pending health results", exc_info=True)
        return []
    results = [HealthCheckResult.from_dict(json.loads(item)) for item in raw]
    cutoff = timezone.now() - PENDING_MAX_AGE
    return [r for r in results if r.checked_at >= cutoff]


def _keep_pending(results: list[HealthCheckResult]) -> None:
    try:
        client = redis_client()
        key = cache.make_key(PENDING_KEY)
        with client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *[json.dumps(r.as_dict()) for r in results])
            pipe.ltrim(key, -PENDING_MAX, -1)
            pipe.execute()
    except Exception:
        logger.error("health results lost: neither the database nor the cache answers", exc_info=True)


def prune_stale_components(now: datetime) -> int:
    """Forget components no check has reported for a day (a removed container, a deleted fabric)."""
    cutoff = now - timedelta(seconds=settings.HEALTH_PRUNE_AFTER_SECONDS)
    deleted, _ = ComponentHealth.objects.filter(last_checked_at__lt=cutoff, in_maintenance=False).delete()
    return deleted
