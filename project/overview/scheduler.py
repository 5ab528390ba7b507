"""Is the master tick running? Judged on request from the last tick's age and the beat entry.

The tick cannot report its own absence, so nothing here is what the tick wrote about
itself: the age of its last summary (``core.tick`` keeps it in the cache) is computed
now, and the beat entry (``project.schedule``) is read from django-celery-beat's table
now. Ticks older than two intervals, or an entry that is disabled or missing, are the
red banner's reasons.

``set_scheduler_enabled`` is the overview's stop/start button; like every other way to
switch the entry (the *Periodic tasks* admin, ``project.admin``) it leaves an audit entry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.http import HttpRequest

from core.audit import audit
from core.tick import LAST_TICK_CACHE_KEY
from project.tasks import MASTER_TASK_NAME

logger = logging.getLogger(__name__)


def stale_after() -> timedelta:
    """Two ticks: one late tick is a blip, two mean the scheduler stopped."""
    return timedelta(seconds=2 * settings.TICK_SECONDS)


@dataclass(frozen=True)
class SchedulerState:
    """The master tick as seen at ``now``; ``problems`` are the red banner's reasons."""

    now: datetime
    entry_exists: bool
    enabled: bool
    last_run_at: datetime | None  # when beat last sent the task (django-celery-beat writes it)
    last_tick_at: datetime | None  # when a worker last ran the tick (core.tick's summary)
    failing_steps: dict[str, str] = field(default_factory=dict)
    cache_error: str = ""

    @property
    def tick_age(self) -> float | None:
        return None if self.last_tick_at is None else (self.now - self.last_tick_at).total_seconds()

    @property
    def stale(self) -> bool:
        age = self.tick_age
        return age is None or age > stale_after().total_seconds()

    @property
    def problems(self) -> list[str]:
        reasons = []
        if not self.entry_exists:
            reasons.append(
                f"The beat entry {MASTER_TASK_NAME} is missing: no tick will run "
                "(migrate, or restarting beat, creates it again)."
            )
        elif not self.enabled:
            reasons.append(
                f"The beat entry {MASTER_TASK_NAME} is disabled (Periodic tasks): ticks are stopped on purpose."
            )
        limit = stale_after().total_seconds()
        if self.cache_error:
            reasons.append(f"The last tick cannot be read: the cache does not answer ({self.cache_error}).")
        elif self.last_tick_at is None:
            reasons.append("No tick has been recorded yet: nothing has been synced, scaled or checked.")
        elif (age := self.tick_age) is not None and age > limit:
            reasons.append(
                f"The last tick ran {describe_age(age)} ago, more than two ticks ({limit:.0f} s): "
                "nothing is synced, scaled or checked until ticks resume."
            )
        return reasons

    def as_dict(self) -> dict[str, Any]:
        return {
            "entry": MASTER_TASK_NAME,
            "entry_exists": self.entry_exists,
            "enabled": self.enabled,
            "last_sent_at": self.last_run_at.isoformat() if self.last_run_at else None,
            "last_tick_at": self.last_tick_at.isoformat() if self.last_tick_at else None,
            "tick_age_seconds": None if self.tick_age is None else round(self.tick_age, 1),
            "stale": self.stale,
            "problems": self.problems,
            "failing_steps": self.failing_steps,
        }


def describe_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 600:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"


def read_scheduler(now: datetime) -> SchedulerState:
    """The beat entry and the last tick, read now (one query and one cache read)."""
    from django_celery_beat.models import PeriodicTask

    entry = PeriodicTask.objects.filter(name=MASTER_TASK_NAME).values("enabled", "last_run_at").first()
    last_tick_at, failing, cache_error = None, {}, ""
    try:
        summary = cache.get(LAST_TICK_CACHE_KEY)
    except Exception as exc:  # the cache may be the very thing that is down
        logger.warning("could not read the last tick from the cache: %s", type(exc).__name__)
        summary, cache_error = None, type(exc).__name__
    if summary:
        last_tick_at = datetime.fromisoformat(str(summary["at"]))
        failing = dict(summary.get("errors") or {})
    return SchedulerState(
        now=now,
        entry_exists=entry is not None,
        enabled=bool(entry and entry["enabled"]),
        last_run_at=entry["last_run_at"] if entry else None,
        last_tick_at=last_tick_at,
        failing_steps=failing,
        cache_error=cache_error,
    )


def set_scheduler_enabled(request: HttpRequest, enabled: bool) -> bool:
    """Enable or disable the beat entry for ``request.user``, audited; True when it changed.

    One conditional UPDATE (so two operators pressing at once change it once), then the
    change marker django-celery-beat's scheduler polls, as its own admin actions do. A
    disabled entry forgets ``last_run_at``, as ``PeriodicTask.save`` does, so enabling it
    again does not fire a catch-up tick at once.
    """
    from django_celery_beat.models import PeriodicTask, PeriodicTasks

    entry = PeriodicTask.objects.filter(name=MASTER_TASK_NAME)
    changes: dict[str, Any] = {"enabled": enabled} if enabled else {"enabled": False, "last_run_at": None}
    with transaction.atomic():
        changed = entry.exclude(enabled=enabled).update(**changes)
        if changed:
            PeriodicTasks.update_changed()
            verb = "Started" if enabled else "Stopped"
            audit(
                request,
                entry,
                f"{verb} the master scheduler (ticks {'resume' if enabled else 'stop'}) from the overview",
            )
    return bool(changed)
