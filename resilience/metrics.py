"""Prometheus metrics for ``/metrics``, computed at scrape time from the database and Redis.

Nothing is counted in process memory: web processes on several hosts each answer a
scrape with the same numbers, read from where the state lives (fabric rows and sync
runs, the tick summary in the cache, scaling policies and events, component health
and breaker snapshots, the broker's queues). One collector, ``ControlPlaneCollector``,
yields metric families section by section:

1. Each section reads with a fixed number of queries (grouped aggregates, one
   correlated subquery), so a scrape costs the same queries for 2 or 10,000 fabrics.
2. A section that fails (the database or Redis away) is left out and reported by
   ``fcp_metrics_section_up{section} 0``; the others are still served.
3. Timestamps are Unix seconds; durations are seconds; names carry the ``fcp_`` prefix
   and their unit, counters end in ``_total`` (Prometheus naming conventions).

This module reads every app's models (sync, scaling, resilience), as the admin does;
it is the one place in ``resilience`` that imports from ``sync`` and ``scaling``, and
only inside the sections, read-only. The alert rules and a dashboard built on these
names: docs/monitoring.md.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Count, OuterRef, Q, Subquery, Sum
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from resilience.verdict import last_tick_age

logger = logging.getLogger(__name__)

# Sync durations: a few hundred ms (unchanged commit) to minutes (a large fetch); the
# last bound is the sync's hard time limit's order of magnitude.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# The histogram covers the runs that finished in this window: a recent distribution
# (read it without rate()), not a running total that retention pruning would shrink.
DURATION_WINDOW = timedelta(hours=1)

Section = Callable[[datetime], Iterable[Metric]]


def _ts(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


# --- fabrics and their syncs --------------------------------------------------------------


def fabric_metrics(now: datetime) -> Iterator[Metric]:
    """Per fabric: last success, last attempt, failures, status, interval; the due backlog."""
    from sync.leases import due_fabrics
    from sync.models import Fabric, SyncStatus

    rows = Fabric.objects.order_by().values_list(
        "name",
        "sync_status",
        "sync_enabled",
        "sync_interval",
        "last_sync",
        "last_attempt_at",
        "next_sync_at",
        "consecutive_failures",
    )
    last_success = _gauge("fcp_fabric_last_success_timestamp_seconds", "Last successful sync (Unix time).", ["fabric"])
    last_attempt = _gauge("fcp_fabric_last_attempt_timestamp_seconds", "Last sync attempt (Unix time).", ["fabric"])
    next_sync = _gauge("fcp_fabric_next_sync_timestamp_seconds", "When the fabric is next due (Unix time).", ["fabric"])
    failures = _gauge("fcp_fabric_consecutive_failures", "Failed syncs in a row (0 after a success).", ["fabric"])
    interval = _gauge("fcp_fabric_sync_interval_seconds", "The fabric's configured sync interval.", ["fabric"])
    enabled = _gauge("fcp_fabric_sync_enabled", "1 when the fabric is synced on schedule, 0 when disabled.", ["fabric"])
    status = _gauge("fcp_fabric_status", "The fabric's sync status: 1 for the current one.", ["fabric", "status"])
    by_status: Counter[str] = Counter()
    for name, sync_status, sync_enabled, sync_interval, last_sync, attempt, next_at, streak in rows:
        if last_sync is not None:
            last_success.add_metric([name], last_sync.timestamp())
        if attempt is not None:
            last_attempt.add_metric([name], attempt.timestamp())
        next_sync.add_metric([name], next_at.timestamp())
        failures.add_metric([name], streak)
        interval.add_metric([name], sync_interval)
        enabled.add_metric([name], 1 if sync_enabled else 0)
        status.add_metric([name, sync_status], 1)
        by_status[sync_status] += 1
    totals = _gauge("fcp_fabrics", "Fabrics by sync status.", ["status"])
    for value in SyncStatus.values:
        totals.add_metric([value], by_status[value])
    yield from (last_success, last_attempt, next_sync, failures, interval, enabled, status, totals)
    yield GaugeMetricFamily(
        "fcp_sync_due_fabrics",
        "Fabrics due now and not leased: what the next tick would claim (the backlog).",
        value=due_fabrics(now).count(),
    )


def sync_duration_metrics(now: datetime) -> Iterator[Metric]:
    """A histogram per fabric of the sync runs that finished within ``DURATION_WINDOW``: one query."""
    from sync.models import SyncRun

    bounds = {f"le_{i}": Count("id", filter=Q(duration_ms__lte=b * 1000)) for i, b in enumerate(DURATION_BUCKETS)}
    rows = (
        SyncRun.objects.filter(finished_at__gte=now - DURATION_WINDOW, duration_ms__isnull=False)
        .order_by()
        .values("fabric__name")
        .annotate(runs=Count("id"), total_ms=Sum("duration_ms"), **bounds)
    )
    histogram = HistogramMetricFamily(
        "fcp_fabric_sync_duration_seconds",
        f"Durations of the sync runs that finished in the last {DURATION_WINDOW.total_seconds():.0f} s "
        "(a window, not a running total: use it without rate()).",
        labels=["fabric"],
    )
    for row in rows:
        buckets = [(floatToGoString(b), float(row[f"le_{i}"])) for i, b in enumerate(DURATION_BUCKETS)]
        buckets.append(("+Inf", float(row["runs"])))
        histogram.add_metric([row["fabric__name"]], buckets, (row["total_ms"] or 0) / 1000)
    yield histogram


def drift_metrics(now: datetime) -> Iterator[Metric]:
    """Drift of each fabric with a Kubernetes cluster, when the installed sync app records it."""
    try:
        cluster = apps.get_model("sync", "FabricCluster")
    except LookupError:
        return  # a sync app from before live drift
    names = {f.name for f in cluster._meta.get_fields()}
    if not {"drift_status", "drift_counts", "drift_compared_at"} <= names:
        return
    try:
        with transaction.atomic():  # a savepoint: a table not migrated yet leaves the transaction usable
            rows = list(
                cluster.objects.order_by().values_list(
                    "fabric__name", "drift_status", "drift_counts", "drift_compared_at"
                )
            )
    except DatabaseError as exc:
        logger.info("drift metrics skipped: %s", exc)
        return
    status = _gauge(
        "fcp_fabric_drift_status", "The fabric's drift status: 1 for the current one.", ["fabric", "status"]
    )
    objects = _gauge(
        "fcp_fabric_drift_objects", "Objects of the fabric by drift state (in_sync, drifted, ...).", ["fabric", "state"]
    )
    compared = _gauge(
        "fcp_fabric_drift_compared_timestamp_seconds", "When drift was last confirmed (Unix time).", ["fabric"]
    )
    for name, drift_status, counts, compared_at in rows:
        status.add_metric([name, drift_status], 1)
        for state, count in sorted((counts or {}).items()):
            if isinstance(count, int | float):
                objects.add_metric([name, str(state)], count)
        if compared_at is not None:
            compared.add_metric([name], compared_at.timestamp())
    yield from (status, objects, compared)


# --- the tick ---------------------------------------------------------------------------


def tick_metrics(now: datetime) -> Iterator[Metric]:
    """The last master tick (``core.tick``'s summary in the cache) and whether beat will fire more."""
    from django.core.cache import cache
    from django_celery_beat.models import PeriodicTask

    from core.tick import LAST_TICK_CACHE_KEY
    from project.tasks import MASTER_TASK_NAME

    summary: dict[str, Any] | None = cache.get(LAST_TICK_CACHE_KEY)
    if summary:
        at = datetime.fromisoformat(str(summary["at"]))
        yield GaugeMetricFamily(
            "fcp_tick_last_timestamp_seconds", "When the last tick ran (Unix time).", value=at.timestamp()
        )
        yield GaugeMetricFamily(
            "fcp_tick_age_seconds", "Seconds since the last tick, at scrape time.", value=last_tick_age(now) or 0.0
        )
        yield GaugeMetricFamily(
            "fcp_tick_duration_seconds", "How long the last tick took.", value=float(summary["duration_ms"]) / 1000
        )
        steps = _gauge("fcp_tick_step_ok", "1 when the step succeeded in the last tick, 0 when it failed.", ["step"])
        for step, outcome in sorted(summary.get("steps", {}).items()):
            steps.add_metric([step], 1 if outcome == "ok" else 0)
        yield steps
    enabled = PeriodicTask.objects.filter(name=MASTER_TASK_NAME).values_list("enabled", flat=True).first()
    yield GaugeMetricFamily(
        "fcp_scheduler_enabled",
        "1 when the master tick's beat entry exists and is enabled (0: ticks stopped on purpose).",
        value=1 if enabled else 0,
    )


# --- scaling ----------------------------------------------------------------------------


def scaling_metrics(now: datetime) -> Iterator[Metric]:
    """Per service: observed and desired instances, limits; decisions by action."""
    from scaling.models import ScalingEvent, ScalingPolicy

    latest = ScalingEvent.objects.filter(service=OuterRef("service")).order_by("-created_at", "-id")
    policies = (
        ScalingPolicy.objects.order_by()
        .annotate(desired=Subquery(latest.values("desired_instances")[:1]))
        .values_list(
            "service", "enabled", "min_instances", "max_instances", "observed_instances", "observed_at", "desired"
        )
    )
    observed = _gauge(
        "fcp_scaling_instances", "Running instances the engine reported at the last evaluation.", ["service"]
    )
    observed_at = _gauge(
        "fcp_scaling_observed_timestamp_seconds", "When the instances were last observed (Unix time).", ["service"]
    )
    desired = _gauge("fcp_scaling_desired_instances", "Instances the last decision asked for.", ["service"])
    low = _gauge("fcp_scaling_min_instances", "The policy's minimum.", ["service"])
    high = _gauge("fcp_scaling_max_instances", "The policy's maximum.", ["service"])
    enabled = _gauge("fcp_scaling_policy_enabled", "1 when the policy is evaluated every tick.", ["service"])
    for service, is_enabled, min_instances, max_instances, instances, seen_at, wanted in policies:
        if instances is not None:
            observed.add_metric([service], instances)
        if seen_at is not None:
            observed_at.add_metric([service], seen_at.timestamp())
        if wanted is not None:
            desired.add_metric([service], wanted)
        low.add_metric([service], min_instances)
        high.add_metric([service], max_instances)
        enabled.add_metric([service], 1 if is_enabled else 0)
    yield from (observed, observed_at, desired, low, high, enabled)
    actions = CounterMetricFamily(
        "fcp_scaling_decisions", "Scaling decisions recorded, by action (up, down, none).", labels=["service", "action"]
    )
    counts = ScalingEvent.objects.order_by().values_list("service", "action").annotate(n=Count("id"))
    for service, action, n in counts:
        actions.add_metric([service, action], n)
    yield actions


# --- component health and breakers --------------------------------------------------------


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


# --- queues -------------------------------------------------------------------------------


def queue_metrics(now: datetime) -> Iterator[Metric]:
    """Depth (waiting plus reserved) and latency of our Celery queues, read from the Redis broker."""
    from scaling.metrics.celery_queues import broker_client, queue_depth, queue_latency
    from scaling.models import ScalingPolicy

    if broker_client() is None:
        return  # not a Redis broker: nothing to read queues from
    queues = {settings.CELERY_TASK_DEFAULT_QUEUE, settings.HEALTH_QUEUE}
    for names in ScalingPolicy.objects.order_by().values_list("queues", flat=True):
        queues.update(str(name) for name in names or [])
    depth = _gauge("fcp_celery_queue_depth", "Messages waiting in the queue plus those reserved by workers.", ["queue"])
    latency = _gauge("fcp_celery_queue_latency_seconds", "Age of the oldest waiting message.", ["queue"])
    for queue in sorted(queues):
        waiting, oldest = queue_depth([queue], now), queue_latency([queue], now)
        if waiting.value is None:
            raise RuntimeError(waiting.missing_reason)  # the broker did not answer: the section is down
        depth.add_metric([queue], waiting.value)
        if oldest.value is not None:  # missing when the oldest message carries no publish time
            latency.add_metric([queue], oldest.value)
    yield from (depth, latency)


SECTIONS: tuple[tuple[str, Section], ...] = (
    ("fabrics", fabric_metrics),
    ("sync_durations", sync_duration_metrics),
    ("drift", drift_metrics),
    ("tick", tick_metrics),
    ("scaling", scaling_metrics),
    ("health", health_metrics),
    ("breakers", breaker_metrics),
    ("queues", queue_metrics),
)


class ControlPlaneCollector:
    """Yields every section's families at scrape time; a failing section is reported, not raised."""

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        now = timezone.now()
        up = _gauge("fcp_metrics_section_up", "1 when the section's numbers could be read at this scrape.", ["section"])
        for name, section in SECTIONS:
            try:
                families = list(section(now))
            except Exception as exc:
                logger.warning("metrics section %s failed: %s: %s", name, type(exc).__name__, exc)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from families
        yield up
        yield GaugeMetricFamily(
            "fcp_metrics_scrape_duration_seconds",
            "How long reading these metrics took.",
            value=time.perf_counter() - started,
        )
