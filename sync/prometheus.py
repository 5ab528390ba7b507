"""Sync's Prometheus sections: per-fabric sync state, recent sync durations, drift.

Registered from ``SyncConfig.ready()``; served by ``/metrics`` (``core.metrics``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.apps import apps
from django.db import DatabaseError, transaction
from django.db.models import Count, Q, Sum
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from core.metrics import gauge as _gauge
from core.metrics import metrics_section

logger = logging.getLogger(__name__)

# Sync durations: a few hundred ms (unchanged commit) to minutes (a large fetch); the
# last bound is the sync's hard time limit's order of magnitude.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# The histogram covers the runs that finished in this window: a recent distribution
# (read it without rate()), not a running total that retention pruning would shrink.
DURATION_WINDOW = timedelta(hours=1)


@metrics_section("fabrics", order=10)
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
        "failing_since",
    )
    last_success = _gauge("fcp_fabric_last_success_timestamp_seconds", "Last successful sync (Unix time).", ["fabric"])
    last_attempt = _gauge("fcp_fabric_last_attempt_timestamp_seconds", "Last sync attempt (Unix time).", ["fabric"])
    next_sync = _gauge("fcp_fabric_next_sync_timestamp_seconds", "When the fabric is next due (Unix time).", ["fabric"])
    failures = _gauge("fcp_fabric_consecutive_failures", "Failed syncs in a row (0 after a success).", ["fabric"])
    failing_since = _gauge(
        "fcp_fabric_failing_since_timestamp_seconds",
        "Start of the attempt that began the current failure streak (Unix time); absent when not failing.",
        ["fabric"],
    )
    interval = _gauge("fcp_fabric_sync_interval_seconds", "The fabric's configured sync interval.", ["fabric"])
    enabled = _gauge("fcp_fabric_sync_enabled", "1 when the fabric is synced on schedule, 0 when disabled.", ["fabric"])
    status = _gauge("fcp_fabric_status", "The fabric's sync status: 1 for the current one.", ["fabric", "status"])
    by_status: Counter[str] = Counter()
    for name, sync_status, sync_enabled, sync_interval, last_sync, attempt, next_at, streak, since in rows:
        if last_sync is not None:
            last_success.add_metric([name], last_sync.timestamp())
        if attempt is not None:
            last_attempt.add_metric([name], attempt.timestamp())
        next_sync.add_metric([name], next_at.timestamp())
        failures.add_metric([name], streak)
        if since is not None:
            failing_since.add_metric([name], since.timestamp())
        interval.add_metric([name], sync_interval)
        enabled.add_metric([name], 1 if sync_enabled else 0)
        status.add_metric([name, sync_status], 1)
        by_status[sync_status] += 1
    totals = _gauge("fcp_fabrics", "Fabrics by sync status.", ["status"])
    for value in SyncStatus.values:
        totals.add_metric([value], by_status[value])
    yield from (last_success, last_attempt, next_sync, failures, failing_since, interval, enabled, status, totals)
    yield GaugeMetricFamily(
        "fcp_sync_due_fabrics",
        "Fabrics due now and not leased: what the next tick would claim (the backlog).",
        value=due_fabrics(now).count(),
    )


@metrics_section("sync_durations", order=20)
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


@metrics_section("drift", order=30)
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
