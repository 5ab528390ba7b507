"""The master tick and its extension point: a registry of what a tick dispatches.

Each feature registers one *step* from its ``AppConfig.ready()``::

    @tick_step("sync", order=10)
    def dispatch_due_fabrics(now: datetime) -> dict[str, int]:
        ...
        return {"fabrics_due": 3, "fabrics_dispatched": 3}

One error contract for every step: a step either returns its integer metrics (it
succeeded) or raises (it failed). ``StepFailed(reason, metrics)`` carries the
metrics of a partial run; any other exception is a failure with its type and
message as the reason. A step never reports failure as a metric, so a failed step
can never read "ok". The summary groups metrics by step
(``summary["metrics"]["sync"]["fabrics_due"]``), so two steps' keys never collide, and
a step that fails is recorded in ``steps`` and ``errors`` without stopping the steps
after it. Steps must be fast: they select and
dispatch work to Celery, they never do the work themselves. The registry holds code,
not state; everything a step decides with lives in the database or Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import NotRequired, TypedDict

from django.core.cache import cache
from django.db import close_old_connections, connection
from django.utils import timezone

from core.redaction import redact

logger = logging.getLogger(__name__)

StepFunction = Callable[[datetime], Mapping[str, int]]
LAST_TICK_CACHE_KEY = "project:last_tick"


class StepFailed(Exception):
    """A step failed with a reason an operator can read, after doing part of its work."""

    def __init__(self, reason: str, metrics: Mapping[str, int] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.metrics = dict(metrics or {})


class TickSummary(TypedDict):
    at: str
    duration_ms: float
    metrics: dict[str, dict[str, int]]
    steps: dict[str, str]
    errors: NotRequired[dict[str, str]]


@dataclass(frozen=True)
class TickStep:
    name: str
    order: int
    run: StepFunction


_steps: dict[str, TickStep] = {}


def tick_step(name: str, order: int = 100) -> Callable[[StepFunction], StepFunction]:
    """Register ``function`` as the tick step ``name`` (re-registering replaces it)."""

    def register(function: StepFunction) -> StepFunction:
        _steps[name] = TickStep(name, order, function)
        return function

    return register


def registered_steps() -> list[TickStep]:
    return sorted(_steps.values(), key=lambda step: (step.order, step.name))


def run_tick(now: datetime | None = None) -> TickSummary:
    """Run every registered step once and return a small JSON-able summary."""
    now = now or timezone.now()
    # A long-lived worker may hold a connection the database dropped. (Not inside a
    # transaction: Django would close a connection that is mid-transaction.)
    if not connection.in_atomic_block:
        close_old_connections()
    started = time.perf_counter()
    metrics: dict[str, dict[str, int]] = {}
    steps: dict[str, str] = {}
    errors: dict[str, str] = {}
    for step in registered_steps():
        try:
            metrics[step.name] = {key: int(value) for key, value in step.run(now).items()}
            steps[step.name] = "ok"
        except StepFailed as exc:
            logger.error("tick step %s failed: %s", step.name, exc.reason)
            metrics[step.name] = exc.metrics
            steps[step.name] = "error"
            errors[step.name] = redact(exc.reason)[:500]
        except Exception as exc:
            logger.exception("tick step %s failed", step.name)
            metrics[step.name] = {}
            steps[step.name] = "error"
            errors[step.name] = redact(f"{type(exc).__name__}: {exc}")[:500]
    summary: TickSummary = {
        "at": now.isoformat(),
        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        "metrics": metrics,
        "steps": steps,
    }
    if errors:
        summary["errors"] = errors
    _remember_last_tick(summary)
    return summary


def _remember_last_tick(summary: TickSummary) -> None:
    """Health checks read the age of the last tick; a cache outage must not fail the tick."""
    try:
        cache.set(LAST_TICK_CACHE_KEY, summary, timeout=None)
    except Exception:
        logger.warning("could not record the last tick in the cache", exc_info=True)
