"""Resilience's Prometheus sections: component health (stale included) and breakers.

Registered from ``ResilienceConfig.ready()``; served by ``/metrics`` (``core.metrics``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, Metric

from core.metrics import gauge as _gauge
from core.metrics import metrics_section


@metrics_section("health", order=60)
def health_metrics(now: datetime) -> Iterator[Metric]:
    """Each component's status as operators see it: a check older than two ticks is ``stale``."""
    from resilience.models import ComponentHealth
    from resilience.verdict import display_status

    rows = ComponentHealth.objects.order_by().values_list(
        "name", "component_type", "critical", "status", "last_checked_at", "consecutive_failures", "needs_attention"
    )
    status = _gauge(
        "fcp_component_status",
        "The component's status (healthy, degraded, unhealthy, unknown, stale): 1 for the current one.",
        ["component", "type", "critical", "status"],
    )
    checked = _gauge(
        "fcp_component_last_check_timestamp_seconds", "The component's last check (Unix time).", ["component"]
    )
    failures = _gauge("fcp_component_consecutive_failures", "Failed checks in a row.", ["component"])
    attention = _gauge(
        "fcp_component_needs_attention", "1 when healing gave up and waits for an operator.", ["component"]
    )
    for name, kind, critical, current, checked_at, streak, needs_attention in rows:
        shown = display_status(current, checked_at, now)
        status.add_metric([name, kind, "true" if critical else "false", shown], 1)
        if checked_at is not None:
            checked.add_metric([name], checked_at.timestamp())
        failures.add_metric([name], streak)
        attention.add_metric([name], 1 if needs_attention else 0)
    yield from (status, checked, failures, attention)


@metrics_section("breakers", order=70)
def breaker_metrics(now: datetime) -> Iterator[Metric]:
    """Breaker snapshots (refreshed every tick): a state set, the failure rate, calls and rejections."""
    from resilience.models import BreakerStateChoice, CircuitBreakerState

    rows = CircuitBreakerState.objects.order_by().values_list(
        "name", "state", "failure_rate", "total_calls", "rejected_calls", "opened_at", "refreshed_at"
    )
    state = _gauge(
        "fcp_breaker_state", "The breaker's state: 1 for the current one, 0 for the others.", ["breaker", "state"]
    )
    rate = _gauge("fcp_breaker_failure_rate_ratio", "Failed share of the current sliding window (0-1).", ["breaker"])
    opened = _gauge(
        "fcp_breaker_opened_timestamp_seconds", "When a breaker not closed opened (Unix time).", ["breaker"]
    )
    refreshed = _gauge(
        "fcp_breaker_snapshot_timestamp_seconds", "When this snapshot was taken (Unix time).", ["breaker"]
    )
    calls = CounterMetricFamily("fcp_breaker_calls", "Calls through the breaker.", labels=["breaker"])
    rejected = CounterMetricFamily("fcp_breaker_rejected_calls", "Calls the breaker rejected.", labels=["breaker"])
    for name, current, failure_rate, total_calls, rejected_calls, opened_at, refreshed_at in rows:
        for value in BreakerStateChoice.values:
            state.add_metric([name, value], 1 if value == current else 0)
        rate.add_metric([name], failure_rate / 100)
        if current != BreakerStateChoice.CLOSED and opened_at is not None:
            opened.add_metric([name], opened_at.timestamp())
        refreshed.add_metric([name], refreshed_at.timestamp())
        calls.add_metric([name], total_calls)
        rejected.add_metric([name], rejected_calls)
    yield from (state, rate, opened, refreshed, calls, rejected)
