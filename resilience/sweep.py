"""One health sweep step: run checks, record them, and hand failing components to healing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from core.health import HealthCheck, get_check, registered_checks, run_checks
from resilience.healing import HealPolicy, needs_healing
from resilience.models import ComponentHealth, HealthStatus
from resilience.tracking import record_results

logger = logging.getLogger(__name__)


def check_for_component(name: str) -> HealthCheck | None:
    """The check that reports ``name``: the check itself, or the provider named by its prefix."""
    prefix = name.split(":", 1)[0]
    return next((c for c in registered_checks() if c.name == name or (c.provider and c.name == prefix)), None)


def verify_component(component: ComponentHealth) -> HealthStatus:
    """Re-run the check behind ``component`` now (after a heal action) and return its raw status."""
    check = check_for_component(component.name)
    if check is None:
        return HealthStatus.UNKNOWN
    results = [r for r in run_checks([check]) if r.component == component.name]
    return results[0].status if results else HealthStatus.UNKNOWN


def sweep(names: Iterable[str], heal: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Run the named checks concurrently, record the results, and pass due components to ``heal``."""
    checks = []
    for name in names:
        try:
            checks.append(get_check(name))
        except KeyError:
            logger.warning("health check %s is not registered in this process", name)
    results = run_checks(checks)
    rows = record_results(results)
    policy = HealPolicy.from_settings()
    # A skipped check (what it depends on is down, say the Docker engine) changes nothing,
    # and healing through that same dependency would only spend the budget.
    skipped = {r.component for r in results if r.status == HealthStatus.UNKNOWN}
    due = [row.pk for row in rows if row.name not in skipped and needs_healing(row, policy)]
    if heal is not None:
        for pk in due:
            heal(pk)
    return {
        "checked": len(results),
        "unhealthy": sum(1 for r in results if r.status == HealthStatus.UNHEALTHY),
        "statuses": {r.component: str(r.status) for r in results},
        "heal_due": len(due),
        "slowest_ms": max((r.latency_ms for r in results), default=0.0),
    }
