"""Tick steps that run less often than every tick: one claim per interval across hosts.

A ``PeriodicStep`` row per step holds when it may run next. Every tick calls
``claim(name, now, interval)``:

1. One conditional UPDATE moves ``next_run_at`` an interval on, only where it is due
   (``next_run_at <= now``). Its row count says who won: of several ticks on several
   hosts, exactly one runs the step; a tick that dies mid-run leaves the row an
   interval out, so the next attempt comes an interval later, never a stuck lock.
2. No row updated: an ``INSERT ... ON CONFLICT DO NOTHING`` makes sure the row exists,
   due an interval after the first tick that saw it (a fresh installation, or a test's
   tick, does no periodic work at once). A step that is not due costs these two queries.

The application clock decides (``now``), like leases, so tests travel with freezegun.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from core.models import PeriodicStep


def claim(name: str, now: datetime, interval_seconds: float) -> bool:
    """True when this caller won the step's run for ``now`` (see the module docstring)."""
    next_run_at = now + timedelta(seconds=interval_seconds)
    won = PeriodicStep.objects.filter(name=name, next_run_at__lte=now).update(
        next_run_at=next_run_at, last_started_at=now
    )
    if won:
        return True
    PeriodicStep.objects.bulk_create([PeriodicStep(name=name, next_run_at=next_run_at)], ignore_conflicts=True)
    return False


def finish(name: str, now: datetime, metrics: Mapping[str, int], *, again_at: datetime | None = None) -> None:
    """Record what the run reported; ``again_at`` brings the next run forward (a backlog)."""
    fields: dict[str, object] = {"last_finished_at": now, "last_metrics": dict(metrics)}
    if again_at is not None:
        fields["next_run_at"] = again_at
    PeriodicStep.objects.filter(name=name).update(**fields)
