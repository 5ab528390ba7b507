"""When is a fabric due? Pure functions of a fabric's state and an injected clock.

The tick selects due fabrics with one indexed query (``sync.leases.due_fabrics``).
``fabric_needs_sync`` states the same rule in Python, for one fabric; production never
calls it. It is the oracle that ``tests/test_sync_due_predicate.py`` checks the SQL
query against on generated fabrics (hypothesis), so the two cannot drift apart.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from sync.models import Fabric, SyncStatus


def fabric_needs_sync(fabric: Fabric, now: datetime) -> bool:
    """True when the tick should dispatch this fabric at ``now``.

    1. Disabled and suspended fabrics are never due.
    2. A fabric whose lease is still held is being handled; not due.
    3. Otherwise it is due once ``next_sync_at`` has been reached (inclusive: with a
       300 s interval it is due exactly 300 s after the last sync, not at 299 s).
    """
    if not fabric.sync_enabled or fabric.sync_status == SyncStatus.SUSPENDED:
        return False
    if fabric.lease_expires_at is not None and fabric.lease_expires_at > now:
        return False
    return fabric.next_sync_at <= now


def next_sync_after_success(
    finished_at: datetime, sync_interval: int, due_at: datetime | None = None, grace_seconds: int = 0
) -> datetime:
    """When a fabric that synced successfully is due again.

    Anchored to when it was *due*, not when the sync finished: a sync always finishes
    after the tick that claimed it, so "finish + interval" made every fabric miss one
    tick (a 60 s interval synced every 120 s). So:

    1. Without a due time, or when it was synced before it was due (an operator's
       "Sync now"): one interval after it finished.
    2. Otherwise the first point of its schedule (due, due + interval, ...) later than
       ``grace_seconds`` before it finished: one interval after it was due, or later if
       the sync (or a backlog) took longer than an interval, without piling up missed
       syncs. The workers pass the tick's period as the grace: a point that fell due
       less than a tick before the finish is kept, already due, for the next tick to
       claim, as that tick claims every fabric due since the one before. Without it, a
       fabric due just after its tick (claimed 59.6 s after it was due, finished 0.5 s
       later) skipped the point one interval on, and every point after it: it synced
       every 120 s for good (9 of 2,000 fabrics at 60 s in ``bench/sustained.py``).
       A point that fell due in that last tick before a late sync *began* costs one
       sync more at the next tick; all older points are skipped.
    """
    interval = timedelta(seconds=sync_interval)
    if due_at is None or due_at > finished_at or sync_interval <= 0:
        return finished_at + interval
    horizon = finished_at - timedelta(seconds=grace_seconds)
    missed = int((horizon - due_at) / interval) if horizon > due_at else 0
    return due_at + interval * (missed + 1)


def failure_backoff_seconds(consecutive_failures: int, sync_interval: int, cap: int) -> int:
    """Delay before the next scheduled attempt after ``consecutive_failures`` failures.

    Doubles from twice the interval, so a broken fabric is not hammered every tick:
    interval 300 s gives 600, 1200, 2400, then ``cap`` (but never less than the
    fabric's own interval).
    """
    if consecutive_failures <= 0:
        return sync_interval
    exponent = min(consecutive_failures, 20)  # keeps the integer small
    return max(sync_interval, min(sync_interval * 2**exponent, cap))


def next_sync_after_failure(failed_at: datetime, consecutive_failures: int, sync_interval: int, cap: int) -> datetime:
    return failed_at + timedelta(seconds=failure_backoff_seconds(consecutive_failures, sync_interval, cap))


def retry_countdown(retries: int, maximum: int, rng: random.Random | None = None) -> float:
    """Countdown before retry ``retries`` (0-based) of a transient failure.

    Exponential with full jitter: uniform in [0, min(maximum, 2 ** (retries + 1))].
    Full jitter spreads retries of many fabrics that failed together (a network blip)
    instead of making them hit the Git server again in lockstep.
    """
    ceiling = min(maximum, 2 ** (retries + 1))
    return (rng or random).uniform(0, ceiling)


def should_suspend(consecutive_failures: int, suspend_after: int) -> bool:
    return suspend_after > 0 and consecutive_failures >= suspend_after
