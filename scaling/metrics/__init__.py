"""Metric collectors. Each returns a value with its timestamp, or "missing" with the reason.

``gather`` reads only the metrics a policy has targets for. A metric that cannot be
read is reported as missing with why, never as 0: zero load would scale a service
down on an outage of the thing measuring it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import connection

from scaling.decisions import MetricName, MetricReading
from scaling.metrics import celery_queues, database, docker_stats, response_time

if TYPE_CHECKING:
    from scaling.models import ScalingPolicy


@dataclass(frozen=True)
class Gathered:
    readings: dict[str, MetricReading]
    # CPU % per container id, when it was read: scale-down stops the least busy first.
    cpu_by_container: dict[str, float] = field(default_factory=dict)


def gather(policy: ScalingPolicy, containers: Sequence[docker_stats.StatsSource], now: datetime) -> Gathered:
    """Read every metric ``policy`` targets (only called once the engine listed ``containers``)."""
    targets = policy.targets()
    readings: dict[str, MetricReading] = {}
    cpu_by_container: dict[str, float] = {}
    if MetricName.CPU in targets or MetricName.MEMORY in targets:
        usages = docker_stats.gather_usage(containers, settings.SCALING_STATS_WORKERS)
        cpu_by_container = {u.container_id: u.cpu_percent for u in usages if u.cpu_percent is not None}
        if MetricName.CPU in targets:
            readings[MetricName.CPU] = docker_stats.average(usages, lambda u: u.cpu_percent, "CPU", now)
        if MetricName.MEMORY in targets:
            readings[MetricName.MEMORY] = docker_stats.average(usages, lambda u: u.memory_percent, "memory", now)
    if MetricName.DB_CONNECTIONS in targets:
        readings[MetricName.DB_CONNECTIONS] = database.active_connections(connection, now)
    if MetricName.RESPONSE_TIME in targets:
        readings[MetricName.RESPONSE_TIME] = response_time.read_average(policy.service, now)
    if MetricName.QUEUE_DEPTH in targets:
        readings[MetricName.QUEUE_DEPTH] = celery_queues.queue_depth(policy.queues, now)
    if MetricName.QUEUE_LATENCY in targets:
        readings[MetricName.QUEUE_LATENCY] = celery_queues.queue_latency(policy.queues, now)
    return Gathered(readings, cpu_by_container)
