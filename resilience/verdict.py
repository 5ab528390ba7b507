"""The system verdict: live checks run now, plus what the last sweeps found.

``/health/`` and ``manage.py health`` ask this module; the check registry and runner
live in ``core.health``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.utils import timezone

from core.health import (
    ComponentType,
    HealthCheckResult,
    HealthStatus,
    SystemHealth,
    overall_status,
    registered_checks,
    run_checks,
)

logger = logging.getLogger(__name__)


def get_system_health(names: Iterable[str] | None = None) -> SystemHealth:
    """Run the live checks now, and add what the last sweeps found for sweep-only components.

    Live results are raw (no thresholds: this is a snapshot); sweep-only components
    (fabric sources, sync leases) come from ``ComponentHealth`` when the database
    answers.
    """
    if names is not None:
        wanted = set(names)
        checks = [c for c in registered_checks() if c.name in wanted]
    else:
        checks = registered_checks(live_only=True)
    components = run_checks(checks)
    if names is None:
        components.extend(_persisted_sweep_only(exclude={c.component for c in components}))
    return SystemHealth(overall_status(components), components, timezone.now())


def _persisted_sweep_only(exclude: set[str]) -> list[HealthCheckResult]:
    from resilience.models import ComponentHealth

    sweep_only = [c for c in registered_checks() if not c.live]
    if not sweep_only:
        return []
    try:
        rows = list(ComponentHealth.objects.exclude(name__in=exclude).exclude(last_checked_at=None))
    except Exception as exc:  # the database may be the very thing that is down
        logger.warning("could not read persisted component health: %s: %s", type(exc).__name__, exc)
        return []
    prefixes = tuple(c.name for c in sweep_only)
    return [
        HealthCheckResult(
            component=row.name,
            component_type=ComponentType(row.component_type),
            status=HealthStatus(row.status),
            message=row.last_message,
            latency_ms=row.last_latency_ms or 0.0,
            checked_at=row.last_checked_at or row.status_since,
            critical=row.critical,
        )
        for row in rows
        if row.name.startswith(prefixes)
    ]
