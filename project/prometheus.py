"""The master tick's Prometheus section: age and duration of the last tick, its steps,
and whether the beat entry is enabled. Registered from ``ProjectConfig.ready()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from core.metrics import gauge as _gauge
from core.metrics import metrics_section
from resilience.verdict import last_tick_age


@metrics_section("tick", order=40)
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
