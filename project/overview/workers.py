"""Which workers consume which queue: a short broadcast, cached, so the page never waits long.

A Celery ``inspect`` is a broadcast that waits its whole timeout for replies, so it is
asked at most once per ``FRESH_SECONDS`` across every web process (the result is kept
in the shared cache), by the one request that wins a cache lock (``SET NX``, as
``resilience.verdict`` does). Meanwhile the others show the previous answer, or
"being checked" when there is none yet; none of them waits for the broadcast. The
broker is pinged first with a short timeout: a broadcast to a dead broker would hang.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

logger = logging.getLogger(__name__)

WORKERS_KEY = "project:overview:workers"
WORKERS_LOCK_KEY = "project:overview:workers:lock"
FRESH_SECONDS = 15.0
KEEP_SECONDS = 120  # an older answer is still shown (with its age) while the next one is asked for
INSPECT_TIMEOUT = 1.0
BROKER_TIMEOUT = 1


@dataclass(frozen=True)
class QueueWorkers:
    """Workers consuming each known queue at ``checked_at`` (None: not asked yet)."""

    checked_at: datetime | None
    queues: dict[str, list[str]] = field(default_factory=dict)
    error: str = ""

    @property
    def pending(self) -> bool:
        return self.checked_at is None

    def without_workers(self) -> list[str]:
        return [queue for queue, workers in self.queues.items() if not workers]

    def as_cached(self) -> dict[str, Any]:
        return {"checked_at": self.checked_at.isoformat() if self.checked_at else None, **self.as_body()}

    def as_body(self) -> dict[str, Any]:
        return {"queues": self.queues, "error": self.error}

    @classmethod
    def from_cached(cls, data: Any) -> QueueWorkers | None:
        try:
            return cls(datetime.fromisoformat(data["checked_at"]), dict(data["queues"]), str(data["error"]))
        except (TypeError, KeyError, ValueError):
            return None


def known_queues() -> list[str]:
    return [queue.name for queue in settings.CELERY_TASK_QUEUES]


def inspect_queues(timeout: float = INSPECT_TIMEOUT) -> dict[str, list[str]]:
    """Ask every worker which queues it consumes; queue -> sorted worker names (raises if the broker is away)."""
    from project.celery_app import app
    from resilience.probes import broker_reachable

    broker_reachable(timeout=BROKER_TIMEOUT)
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    by_queue: dict[str, list[str]] = {}
    for worker, queues in replies.items():
        for queue in queues or []:
            by_queue.setdefault(str(queue.get("name")), []).append(worker)
    return {queue: sorted(workers) for queue, workers in by_queue.items()}


def ask_workers(now: datetime) -> QueueWorkers:
    """Broadcast now; every known queue appears, with no workers when none consumes it."""
    try:
        found = inspect_queues()
    except Exception as exc:
        return QueueWorkers(now, {q: [] for q in known_queues()}, f"broker unreachable ({type(exc).__name__})")
    queues = {q: found.get(q, []) for q in known_queues()}
    queues.update({q: w for q, w in found.items() if q not in queues})  # queues a worker was started with
    return QueueWorkers(now, queues)


def queue_workers(now: datetime | None = None) -> QueueWorkers:
    """The workers per queue, at most ``FRESH_SECONDS`` old when one request may ask for it.

    1. A fresh cached answer is returned as it is.
    2. Otherwise the request that wins the lock asks the workers and keeps the answer.
    3. The others return the previous answer (older, its age shown), or a pending one.
    """
    now = now or timezone.now()
    try:
        cached = QueueWorkers.from_cached(cache.get(WORKERS_KEY))
        if cached is not None and cached.checked_at and 0 <= (now - cached.checked_at).total_seconds() <= FRESH_SECONDS:
            return cached
        if not cache.add(WORKERS_LOCK_KEY, 1, timeout=int(INSPECT_TIMEOUT + BROKER_TIMEOUT) + 5):
            return cached or QueueWorkers(None, {q: [] for q in known_queues()})
    except Exception as exc:
        return QueueWorkers(None, {q: [] for q in known_queues()}, f"cache unavailable ({type(exc).__name__})")
    try:
        answer = ask_workers(now)
        cache.set(WORKERS_KEY, answer.as_cached(), timeout=KEEP_SECONDS)
        return answer
    finally:
        try:
            cache.delete(WORKERS_LOCK_KEY)
        except Exception:
            logger.warning("could not release the worker inspection lock (it expires)", exc_info=True)
