"""The system verdict: live checks run now, plus what the last sweeps found.

``/health/``, the admin and ``manage.py health`` ask this module; the check registry
and runner live in ``core.health``.

Two things are judged here at read time, never by the tick, because a stopped tick
is exactly what they must notice:

- Staleness: a component whose last check is older than two ticks says nothing about
  now; it shows as *stale* (``STALE``), not with the status its last check left.
- The scheduler's own outage: the age of the last tick (``core.tick`` keeps its summary
  in the cache) is read on request; once it passes ``HEALTH_BEAT_MAX_AGE`` the outage is
  recorded as one ``HealthTransition`` (``resilience.tracking.record_outage``).

Anonymous ``/health/`` callers get the overall status from a short cache
(``cached_verdict``): one request at a time computes it (a cache lock), the others read
the last verdict, so a burst of probes costs one sweep, not one each.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
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
from core.tick import LAST_TICK_CACHE_KEY

logger = logging.getLogger(__name__)

STALE = "stale"  # a display status: the last check is too old to say anything about now
SCHEDULER = "scheduler"  # the component name of probes.check_scheduler

# The anonymous verdict's cache. Fresh for 5 s: a load balancer probing every second
# costs one sweep per 5 s, and an outage shows within 5 s plus one sweep. While one
# request computes the next verdict the others get the previous one, at most 15 s old;
# older (after a quiet spell), they wait for it rather than answer from the past.
VERDICT_KEY = "resilience:verdict"
VERDICT_LOCK_KEY = "resilience:verdict:lock"
VERDICT_FRESH_SECONDS = 5.0
VERDICT_STALE_SECONDS = 15.0
VERDICT_POLL_SECONDS = 0.05


def stale_after() -> timedelta:
    """Two ticks: one missed sweep is a blip, two mean the sweeps stopped."""
    return timedelta(seconds=2 * settings.TICK_SECONDS)


def is_stale(last_checked_at: datetime | None, now: datetime) -> bool:
    return last_checked_at is not None and now - last_checked_at > stale_after()


def display_status(status: str, last_checked_at: datetime | None, now: datetime) -> str:
    """What to show for a recorded status: the status, or ``STALE`` when its check is too old."""
    return STALE if is_stale(last_checked_at, now) else status


def last_sweep_at() -> datetime | None:
    """When a sweep last recorded any check (older than two ticks: the sweeps stopped).

    The scheduler's row is left out: ``notice_stale_scheduler`` writes its check time at
    request time, which says nothing about whether sweeps run. None without any check,
    or when the database does not answer.
    """
    from django.db.models import Max

    from resilience.models import ComponentHealth

    try:
        latest = ComponentHealth.objects.exclude(name=SCHEDULER).aggregate(at=Max("last_checked_at"))["at"]
    except Exception as exc:  # the database may be the very thing that is down
        logger.warning("could not read the last sweep: %s: %s", type(exc).__name__, exc)
        return None
    return latest


def get_system_health(names: Iterable[str] | None = None) -> SystemHealth:
    """Run the live checks now, and add what the last sweeps found for sweep-only components.

    Live results are raw (no thresholds: this is a snapshot); sweep-only components
    (fabric sources, sync leases) come from ``ComponentHealth`` when the database
    answers, as UNKNOWN with a "stale" message when their last check is too old.
    """
    if names is not None:
        wanted = set(names)
        checks = [c for c in registered_checks() if c.name in wanted]
    else:
        checks = registered_checks(live_only=True)
    components = run_checks(checks)
    now = timezone.now()
    if names is None:
        components.extend(_persisted_sweep_only(exclude={c.component for c in components}, now=now))
    return SystemHealth(overall_status(components), components, now)


def _persisted_sweep_only(exclude: set[str], now: datetime) -> list[HealthCheckResult]:
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
    return [_persisted_result(row, now) for row in rows if row.name.startswith(prefixes)]


def _persisted_result(row: Any, now: datetime) -> HealthCheckResult:
    checked_at = row.last_checked_at or row.status_since
    status, message, details = HealthStatus(row.status), row.last_message, {}
    if is_stale(checked_at, now):
        # UNKNOWN never worsens the verdict, and never claims HEALTHY for a check that stopped.
        age = (now - checked_at).total_seconds()
        details = {STALE: True, "last_status": str(status)}
        message = f"stale: last checked {age:.0f} s ago (over two ticks); it said {status}: {message}"[:500]
        status = HealthStatus.UNKNOWN
    return HealthCheckResult(
        component=row.name,
        component_type=ComponentType(row.component_type),
        status=status,
        message=message,
        latency_ms=row.last_latency_ms or 0.0,
        details=details,
        checked_at=checked_at,
        critical=row.critical,
    )


def as_body(health: SystemHealth) -> dict[str, Any]:
    """``health.as_dict()``, with stale components shown as ``"stale"`` and what they last said."""
    body = health.as_dict()
    for result in health.components:
        if result.details.get(STALE):
            entry = body["components"][result.component]
            entry["status"] = STALE
            entry["last_status"] = result.details["last_status"]
    return body


# --- the scheduler's staleness, noticed at request time ---------------------------------


def last_tick_age(now: datetime) -> float | None:
    """Seconds since the last master tick (``core.tick``'s summary); None when none is known."""
    try:
        summary = cache.get(LAST_TICK_CACHE_KEY)
    except Exception:
        logger.warning("could not read the last tick from the cache", exc_info=True)
        return None
    if not summary:
        return None
    return (now - datetime.fromisoformat(str(summary["at"]))).total_seconds()


def notice_stale_scheduler(now: datetime | None = None) -> bool:
    """Record a scheduler outage once it is noticed; True when this call recorded it.

    The sweep that would notice is dispatched by the tick itself, so without this a
    stopped scheduler stays HEALTHY in the database for as long as it is stopped.
    """
    from resilience.tracking import record_outage

    now = now or timezone.now()
    age = last_tick_age(now)
    limit = settings.HEALTH_BEAT_MAX_AGE
    if age is None or age <= limit:
        return False
    message = f"no tick for {age:.0f} s (limit {limit} s), noticed at request time"
    try:
        return record_outage(SCHEDULER, ComponentType.SCHEDULER, message, now, critical=True)
    except Exception as exc:  # the database may be down too: /health/ still answers
        logger.warning("could not record the scheduler outage: %s: %s", type(exc).__name__, exc)
        return False


# --- the cached verdict for anonymous callers ------------------------------------------


@dataclass(frozen=True)
class Verdict:
    status: HealthStatus
    checked_at: datetime
    body: dict[str, Any]

    def age(self, now: datetime) -> float:
        return (now - self.checked_at).total_seconds()

    def as_cached(self) -> dict[str, Any]:
        return {"status": str(self.status), "checked_at": self.checked_at.isoformat(), "body": self.body}

    @classmethod
    def from_cached(cls, data: Any) -> Verdict | None:
        try:
            return cls(HealthStatus(data["status"]), datetime.fromisoformat(data["checked_at"]), data["body"])
        except (TypeError, KeyError, ValueError):
            return None


def compute_verdict() -> Verdict:
    """Run the full verdict now, notice a stopped scheduler, and keep the result for others."""
    health = get_system_health()
    notice_stale_scheduler(health.checked_at)
    verdict = Verdict(health.overall_status, health.checked_at, as_body(health))
    try:
        cache.set(VERDICT_KEY, verdict.as_cached(), timeout=int(VERDICT_STALE_SECONDS) + 1)
    except Exception:
        logger.warning("could not cache the health verdict", exc_info=True)
    return verdict


def _lock_seconds() -> float:
    """Longer than one computation: the slowest live check's timeout, plus a margin."""
    return max((c.timeout for c in registered_checks(live_only=True)), default=5.0) + 5.0


def _cached(now: datetime, max_age: float) -> Verdict | None:
    verdict = Verdict.from_cached(cache.get(VERDICT_KEY))
    # A verdict from the future (another clock, a frozen test clock) is not trusted.
    if verdict is not None and 0 <= verdict.age(now) <= max_age:
        return verdict
    return None


def cached_verdict() -> Verdict:
    """The overall verdict, at most ``VERDICT_FRESH_SECONDS`` old when the cache answers.

    1. A fresh cached verdict is returned as it is.
    2. Otherwise one caller wins the cache lock (``add`` is SET NX) and computes it.
    3. The others return the previous verdict if it is at most ``VERDICT_STALE_SECONDS``
       old, or wait for the winner's (polling) up to the lock's lifetime.
    4. A winner that died leaves no verdict and its lock expires: the waiter computes.
    Without a cache every caller computes (the cache check is then failing anyway).
    """
    token = uuid.uuid4().hex
    lock_seconds = _lock_seconds()
    try:
        if (fresh := _cached(timezone.now(), VERDICT_FRESH_SECONDS)) is not None:
            return fresh
        won = bool(cache.add(VERDICT_LOCK_KEY, token, timeout=int(lock_seconds) + 1))
        if not won:
            if (previous := _cached(timezone.now(), VERDICT_STALE_SECONDS)) is not None:
                return previous
            # Counted in polls, not read off a clock: a frozen test clock must not stall it.
            for _ in range(int(lock_seconds / VERDICT_POLL_SECONDS)):
                time.sleep(VERDICT_POLL_SECONDS)
                if (fresh := _cached(timezone.now(), VERDICT_FRESH_SECONDS)) is not None:
                    return fresh
    except Exception:
        logger.warning("health verdict cache unavailable: computing without it", exc_info=True)
        return compute_verdict()
    try:
        return compute_verdict()
    finally:
        if won:
            _release(token)


def _release(token: str) -> None:
    try:
        if cache.get(VERDICT_LOCK_KEY) == token:  # not a lock that expired and was taken again
            cache.delete(VERDICT_LOCK_KEY)
    except Exception:
        logger.warning("could not release the health verdict lock (it expires)", exc_info=True)
