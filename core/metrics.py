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

Each app registers its own sections from its ``AppConfig.ready()`` with
``@metrics_section(name, order=N)`` (``sync/prometheus.py``, ``scaling/prometheus.py``,
``resilience/prometheus.py``, ``project/prometheus.py``), so no app reads another's
models for metrics. The alert rules and a dashboard built on these names:
docs/monitoring.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric

logger = logging.getLogger(__name__)

Section = Callable[[datetime], Iterable[Metric]]


@dataclass(frozen=True)
class MetricsSection:
    name: str
    order: int
    collect: Section


_sections: dict[str, MetricsSection] = {}  # code only: which sections exist


def metrics_section(name: str, order: int = 100) -> Callable[[Section], Section]:
    """Register the decorated function as the ``/metrics`` section ``name``."""

    def register(function: Section) -> Section:
        _sections[name] = MetricsSection(name, order, function)
        return function

    return register


def registered_sections() -> list[MetricsSection]:
    return sorted(_sections.values(), key=lambda s: (s.order, s.name))


def timestamp(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


def gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


class ControlPlaneCollector:
    """Yields every section's families at scrape time; a failing section is reported, not raised."""

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        now = timezone.now()
        up = gauge("fcp_metrics_section_up", "1 when the section's numbers could be read at this scrape.", ["section"])
        for section in registered_sections():
            try:
                families = list(section.collect(now))
            except Exception as exc:
                logger.warning("metrics section %s failed: %s: %s", section.name, type(exc).__name__, exc)
                up.add_metric([section.name], 0)
                continue
            up.add_metric([section.name], 1)
            yield from families
        yield up
        yield GaugeMetricFamily(
            "fcp_metrics_scrape_duration_seconds",
            "How long reading these metrics took.",
            value=time.perf_counter() - started,
        )
