"""Breaker snapshots for operators: read the shared state, copy it into the database.

The admin lists ``CircuitBreakerState`` rows (refreshed each tick) and its actions
change the live state in Redis, then refresh the row at once.
"""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone

from core.breaker import REDIS_TIMEOUT, BreakerMetrics, CircuitBreaker, channel_for
from core.breaker_redis import known_breakers
from resilience.models import CircuitBreakerState

OPERATIONS = ("force_open", "disable", "reset", "forget")


def _channel_args() -> tuple[str, float]:
    return settings.REDIS_URL, REDIS_TIMEOUT


def read_breaker(name: str) -> BreakerMetrics:
    """The shared state of ``name``; raises if Redis does not answer (never a local guess)."""
    breaker = CircuitBreaker(name)
    assert breaker._store is not None
    return breaker._shared_metrics(breaker._store.read())


def read_breakers() -> list[BreakerMetrics]:
    prefix = settings.BREAKER_KEY_PREFIX
    return [read_breaker(name) for name in known_breakers(channel_for(*_channel_args()), prefix)]


def refresh_snapshots() -> int:
    """Upsert one row per shared breaker; returns how many were written."""
    now = timezone.now()
    written = 0
    for m in read_breakers():
        CircuitBreakerState.objects.update_or_create(
            name=m.name,
            defaults={
                "state": m.state.value,
                "total_calls": m.total_calls,
                "successful_calls": m.successful_calls,
                "failed_calls": m.failed_calls,
                "rejected_calls": m.rejected_calls,
                "failure_rate": m.failure_rate,
                "consecutive_failures": m.consecutive_failures,
                "opened_at": m.opened_at,
                "open_until": m.open_until,
                "last_failure_at": m.last_failure_at,
                "refreshed_at": now,
            },
        )
        written += 1
    return written


def operate(names: list[str], operation: str) -> int:
    """Apply an operator action (force_open, disable, reset) to each named breaker."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown breaker operation {operation!r}")
    for name in names:
        breaker = CircuitBreaker(name)
        getattr(breaker, operation)()
    if operation == "forget":
        CircuitBreakerState.objects.filter(name__in=names).delete()
    refresh_snapshots()
    return len(names)
