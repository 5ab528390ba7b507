"""History retention: the tick step that prunes history tables in bounded batches.

Each feature app says what of its history may go by registering *rules* from its
``AppConfig.ready()`` (``sync/retention.py``, ``scaling/retention.py``,
``resilience/retention.py``)::

    @retention_rule("sync_runs_unchanged", SyncRun, order=20)
    def unchanged_beyond_the_newest(now: datetime, limit: int) -> list[int]:
        ...  # up to ``limit`` primary keys of rows that may be deleted now

A rule never names a row that must stay (a RUNNING run, the latest run of a fabric...);
this module decides how much goes per tick. The step ``retention`` (``prune_history``):

1. Disabled (``RETENTION_ENABLED``), or another tick already ran it this interval
   (``core.periodic.claim``, every ``RETENTION_INTERVAL_SECONDS``): ``{"ran": 0}``.
2. For each rule in ``order``, while the tick's row cap (``RETENTION_MAX_ROWS_PER_TICK``)
   and time budget (``RETENTION_TIME_BUDGET_SECONDS``, checked between statements) last:
   ask the rule for up to the rest of the cap, and delete those rows
   ``RETENTION_BATCH_SIZE`` per statement. Each DELETE commits on its own: no lock is
   held for long, and whatever was deleted stays deleted if a later statement fails.
3. A rule that returned as many ids as it was asked for, or a budget that ran out,
   leaves a backlog: the next tick runs the step again rather than waiting an interval
   (so a cap below an hour's growth still keeps the tables bounded).
4. The rows deleted per rule, their total, ``backlog`` and ``duration_ms`` are the
   step's metrics in the tick summary (``summary["metrics"]["retention"]``) and stay on
   the step's ``PeriodicStep`` row until the next run. A rule that fails is reported
   (``StepFailed``) after the other rules ran.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register
from django.db import models
from django.utils import timezone

from core import periodic
from core.redaction import redact
from core.tick import StepFailed, tick_step

logger = logging.getLogger(__name__)

STEP_NAME = "retention"
RuleFunction = Callable[[datetime, int], list[int]]


@dataclass(frozen=True)
class RetentionRule:
    name: str  # the metric key: rows this rule deleted
    model: type[models.Model]
    order: int
    candidates: RuleFunction  # (now, limit) -> up to ``limit`` primary keys that may go


_rules: dict[str, RetentionRule] = {}


def retention_rule(name: str, model: type[models.Model], order: int = 100) -> Callable[[RuleFunction], RuleFunction]:
    """Register ``function`` as the retention rule ``name`` over ``model`` (re-registering replaces it)."""

    def register(function: RuleFunction) -> RuleFunction:
        _rules[name] = RetentionRule(name, model, order, function)
        return function

    return register


def registered_rules() -> list[RetentionRule]:
    return sorted(_rules.values(), key=lambda rule: (rule.order, rule.name))


@register()
def check_retention_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Counts and sizes below 1 would keep nothing or delete nothing: refuse them at start-up."""
    names = ("RETENTION_DAYS", "RETENTION_UNCHANGED_PER_FABRIC", "RETENTION_NO_CHANGE_PER_SERVICE",
             "RETENTION_INTERVAL_SECONDS", "RETENTION_BATCH_SIZE", "RETENTION_MAX_ROWS_PER_TICK")  # fmt: skip
    return [
        Error(f"{name}={getattr(settings, name)!r} must be at least 1.", id="core.E002")
        for name in names
        if getattr(settings, name) < 1
    ]


@dataclass
class Budget:
    """What one tick may still delete: rows (the cap) and time (checked between statements)."""

    rows: int
    deadline: float  # time.monotonic()
    statements: int = 0

    def time_left(self) -> bool:
        # At least one statement per run, so a tiny budget still makes progress.
        return self.statements == 0 or time.monotonic() < self.deadline


def delete_in_batches(model: type[models.Model], ids: list[int], batch_size: int, budget: Budget) -> int:
    """Delete ``ids`` of ``model``, ``batch_size`` per statement, while the budget lasts."""
    deleted = 0
    for start in range(0, len(ids), batch_size):
        if not budget.time_left():
            break
        chunk = ids[start : start + batch_size]
        # History rows have no cascades or signals, so Django deletes them with one
        # "DELETE ... WHERE id IN (...)" per chunk, without loading them first.
        _total, per_model = model._base_manager.filter(pk__in=chunk).delete()
        budget.statements += 1
        deleted += per_model.get(model._meta.label, 0)
    budget.rows -= deleted
    return deleted


def prune(now: datetime, rules: list[RetentionRule] | None = None) -> tuple[dict[str, int], dict[str, str]]:
    """Steps 2 and 3 of the module docstring: (metrics, errors by rule)."""
    started = time.monotonic()
    budget = Budget(settings.RETENTION_MAX_ROWS_PER_TICK, started + settings.RETENTION_TIME_BUDGET_SECONDS)
    batch_size = max(1, settings.RETENTION_BATCH_SIZE)
    metrics: dict[str, int] = {}
    errors: dict[str, str] = {}
    backlog = False
    for rule in rules if rules is not None else registered_rules():
        metrics[rule.name] = 0
        if budget.rows <= 0 or not budget.time_left():
            backlog = True
            continue
        asked = budget.rows
        try:
            ids = rule.candidates(now, asked)[:asked]
            metrics[rule.name] = deleted = delete_in_batches(rule.model, ids, batch_size, budget)
        except Exception as exc:  # one table's trouble must not keep the others growing
            logger.exception("retention rule %s failed", rule.name)
            errors[rule.name] = redact(f"{type(exc).__name__}: {exc}")[:200]
            continue
        if len(ids) >= asked or deleted < len(ids):
            backlog = True
    metrics["deleted"] = sum(metrics.values())
    metrics["backlog"] = int(backlog)
    metrics["duration_ms"] = round((time.monotonic() - started) * 1000)
    return metrics, errors


@tick_step(STEP_NAME, order=90)
def prune_history(now: datetime) -> dict[str, int]:
    """The tick step (the module docstring): at most once per interval, bounded per tick."""
    if not settings.RETENTION_ENABLED or not periodic.claim(STEP_NAME, now, settings.RETENTION_INTERVAL_SECONDS):
        return {"ran": 0}
    metrics, errors = prune(now)
    result: dict[str, Any] = {"ran": 1, **metrics}
    periodic.finish(STEP_NAME, timezone.now(), result, again_at=now if metrics["backlog"] else None)
    if errors:
        raise StepFailed("; ".join(f"{name}: {error}" for name, error in errors.items()), result)
    return result
