"""Celery tasks for fabric sync: thin wrappers that take ids and a lease token."""

from __future__ import annotations

import os
import socket
from typing import Any

from celery import Task, shared_task
from django.conf import settings
from django.utils import timezone

from sync import leases
from sync.errors import PermanentSyncError, TransientSyncError
from sync.models import Fabric
from sync.runner import record_failure, run_sync
from sync.scheduling import retry_countdown
from sync.sources.git import RemoteUnavailable


def _worker_name(task: Task) -> str:
    return f"{task.request.hostname or socket.gethostname()}:{os.getpid()}"


@shared_task(name="sync.fan_out", ignore_result=True)
def fan_out(fabric_ids: list[int], token: str, trigger: str = "schedule") -> int:
    """Expand one chunk of a tick's claim into one task per fabric."""
    from project.celery_app import app

    with app.producer_or_acquire() as producer:
        for fabric_id in fabric_ids:
            sync_fabric.apply_async((fabric_id, token, trigger), producer=producer)
    return len(fabric_ids)


@shared_task(
    bind=True,
    name="sync.sync_fabric",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=settings.SYNC_MAX_RETRIES,
    soft_time_limit=settings.SYNC_SOFT_TIME_LIMIT,
    time_limit=settings.SYNC_HARD_TIME_LIMIT,
)
def sync_fabric(self: Task, fabric_id: int, token: str, trigger: str = "schedule") -> dict[str, Any]:
    """Sync one fabric if ``token`` still holds its lease; raise on failure.

    A sync skipped because its remote's breaker is open is not a failure and is never
    retried here: the runner recorded it and the fabric is due again when the breaker
    admits calls.
    """
    worker = _worker_name(self)
    begun = leases.begin(fabric_id, token, timezone.now(), worker)
    if begun.outcome is leases.BeginOutcome.SUPERSEDED:
        return {"fabric_id": fabric_id, "skipped": "superseded by a newer claim"}
    if begun.outcome is leases.BeginOutcome.HELD:
        # Another delivery of this claim may still be running (we cannot tell a dead
        # worker from a slow one): come back when its lease would have expired.
        raise self.retry(countdown=begun.retry_in, max_retries=self.request.retries + 1)
    if begun.outcome is leases.BeginOutcome.GAVE_UP:
        error = PermanentSyncError(
            f"gave up after {begun.deliveries} deliveries whose worker died mid-sync (poison message?)"
        )
        record_failure(Fabric.objects.get(id=fabric_id), token, None, error, will_retry=False, clock=timezone.now)
        raise error
    may_retry = self.request.retries < (self.max_retries or 0)
    try:
        result = run_sync(
            fabric_id, token, trigger=trigger, worker=worker, attempt=self.request.retries + 1, may_retry=may_retry
        )
    except RemoteUnavailable as exc:
        return {"fabric_id": fabric_id, "skipped": str(exc)}
    except TransientSyncError as exc:
        if not may_retry:
            raise
        countdown = retry_countdown(self.request.retries, settings.SYNC_RETRY_BACKOFF_MAX)
        leases.requeue_for_retry(fabric_id, token, timezone.now(), countdown)
        raise self.retry(exc=exc, countdown=countdown) from exc
    return result.as_dict()
