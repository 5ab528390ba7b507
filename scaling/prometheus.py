"""Scaling's Prometheus sections: instances and decisions per service, Celery queues.

Registered from ``ScalingConfig.ready()``; served by ``/metrics`` (``core.metrics``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from django.conf import settings
from django.db.models import Count, OuterRef, Subquery
from prometheus_client.core import CounterMetricFamily, Metric

from core.metrics import gauge as _gauge
from core.metrics import metrics_section


@metrics_section("scaling", order=50)
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


@metrics_section("queues", order=80)
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
