"""The health step of the master tick: fan the sweep out as a Celery group.

Each registered check (or provider) becomes one ``resilience.run_check`` task, so the
checks run concurrently on the workers and a sweep lasts about as long as its
slowest check; one ``resilience.housekeeping`` task refreshes the breaker
snapshots. The step only publishes: it never runs a check itself. A failing
publish fails the step with its reason (``StepFailed``); the tick runs the others.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from celery import Signature, group
from django.conf import settings

from core.health import registered_checks
from core.tick import StepFailed, tick_step

logger = logging.getLogger(__name__)


@tick_step("health", order=30)
def dispatch_health_sweep(now: datetime) -> dict[str, int]:
    from resilience.tasks import housekeeping, run_check

    try:
        # A sweep still queued when the next tick comes is stale: drop it, do not pile up.
        expires, queue = settings.HEALTH_SWEEP_EXPIRES_SECONDS, settings.HEALTH_QUEUE
        checks = registered_checks()
        signatures: list[Signature[Any]] = [
            run_check.si(check.name).set(expires=expires, queue=queue) for check in checks
        ]
        signatures.append(housekeeping.si().set(expires=expires, queue=queue))
        group(signatures).apply_async()
    except Exception as exc:
        raise StepFailed(
            f"could not dispatch the health sweep: {type(exc).__name__}: {exc}", {"health_checks_dispatched": 0}
        ) from exc
    return {"health_checks_dispatched": len(checks)}
