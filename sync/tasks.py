"""Celery tasks for fabric sync: thin wrappers that take ids and a lease token."""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Reject
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from core.process_limits import descriptors_exhausted, is_resource_exhaustion
from core.redaction import redact
from sync import backoff_probe, bulk_unchanged, claim_markers, leases
from sync.errors import DatabaseUnavailable, PermanentSyncError, TransientSyncError
from sync.models import Fabric
from sync.runner import record_failure, run_sync
from sync.scheduling import retry_countdown
from sync.sources.git import RemoteUnavailable

logger = logging.getLogger(__name__)


# The database (not the fabric) failed: connection refused, dropped, reset. Such a
# failure is retried without counting against the fabric, until OUTAGE_RETRY_SECONDS.
DATABASE_OUTAGE = (OperationalError, InterfaceError)
OUTAGE_RETRY_SECONDS = 600
OUTAGE_BACKOFF_MAX = 10


def _attempt_name(task: Task, nonce: str) -> str:
    """Who runs this attempt: host and pid for operators, then the nonce of its chain of
    outage retries (``/`` + nonce ends the name; ``leases.begin`` resumes on it)."""
    return f"{task.request.hostname or socket.gethostname()}:{os.getpid()}/{nonce}"


def _retry_through_outage(
    task: Task,
    exc: Exception,
    nonce: str,
    outage_since: float | None,
    outage_retries: int,
    claim: tuple[int, str, str],
) -> Exception:
    """Retry this delivery once the database is back, resuming the lease its chain holds.

    The attempt that failed is over (we are in its handler), so the retry may take its
    lease over at once; nothing is recorded, as nothing can be written now, and no
    failure is counted. Every attempt of the chain carries the same ``nonce`` in its
    owner name, so the retry resumes whichever of them got the lease (a ``begin`` may
    commit just before the connection drops). Backoff with full jitter, up to
    OUTAGE_BACKOFF_MAX seconds, so the fabric resumes within seconds of the database
    returning.

    When the retry cannot even be published (the process is out of file descriptors: no
    socket for a broker connection), Celery would drop this delivery and leave the claim
    to the lease reaper, which counts a worker death. ``claim`` (fabric id, token, this
    attempt's owner name) is then given back instead, if the database still answers.
    """
    now = timezone.now().timestamp()
    since = outage_since or now
    if now - since > OUTAGE_RETRY_SECONDS:
        return exc  # a database down this long: the lease reaper takes it from here
    countdown = random.uniform(0, min(OUTAGE_BACKOFF_MAX, 2**outage_retries))
    kwargs = {
        **(task.request.kwargs or {}),
        "resume": nonce,
        "outage_since": since,
        "outage_retries": outage_retries + 1,
    }
    cause = descriptors_exhausted()
    logger.warning(
        "database unavailable (%s%s); retrying in %.1f s", type(exc).__name__, f"; {cause}" if cause else "", countdown
    )
    try:
        return task.retry(countdown=countdown, kwargs=kwargs, max_retries=task.request.retries + 1)
    except Reject as unpublished:  # Celery's answer to a retry it could not publish
        return _give_back(unpublished, claim)


def _give_back(unpublished: Reject, claim: tuple[int, str, str]) -> Reject:
    fabric_id, token, worker = claim
    cause = redact(str(getattr(unpublished, "reason", unpublished)))
    try:
        given = leases.give_back(fabric_id, token, worker, timezone.now(), cause)
    except (*DATABASE_OUTAGE, OSError):
        return unpublished  # nothing can be written either: the lease reaper takes it from here
    if given:
        logger.warning("could not publish the retry of fabric %s (%s); gave its claim back for the next tick",
                       fabric_id, cause)  # fmt: skip
    return unpublished


@shared_task(name="sync.probe_backoff", ignore_result=True)
def probe_backoff() -> dict[str, int]:
    """Ask the remotes of fabrics in failure backoff for a new commit (``sync.backoff_probe``)."""
    return backoff_probe.probe(timezone.now())


@shared_task(bind=True, name="sync.fan_out", ignore_result=True)
def fan_out(self: Task, fabric_ids: list[int], token: str, trigger: str = "schedule") -> dict[str, int]:
    """Expand one chunk of a claim: its unchanged fabrics recorded in bulk, one task for each other.

    ``sync.bulk_unchanged`` decides which is which (with ``SYNC_BULK_UNCHANGED`` off,
    or for a trigger other than the schedule, every fabric gets its task).
    """
    from project.celery_app import app

    with app.producer_or_acquire() as producer:

        def dispatch(ids: list[int]) -> None:
            for fabric_id in ids:
                sync_fabric.apply_async((fabric_id, token, trigger), producer=producer)

        worker = _attempt_name(self, f"bulk-{secrets.token_hex(6)}")
        outcome = bulk_unchanged.process_chunk(fabric_ids, token, trigger, worker, dispatch)
    return {"fabrics": len(fabric_ids), **outcome.as_dict()}


@shared_task(
    bind=True,
    name="sync.sync_fabric",
    # Nothing reads a sync's return value (the outcome is on the fabric and its SyncRun),
    # so a success stores nothing in Redis. A failure (and a retry) is still stored, so
    # Celery's own state of a failed sync stays FAILURE for whoever looks it up.
    ignore_result=True,
    store_errors_even_if_ignored=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=settings.SYNC_MAX_RETRIES,
    soft_time_limit=settings.SYNC_SOFT_TIME_LIMIT,
    time_limit=settings.SYNC_HARD_TIME_LIMIT,
)
def sync_fabric(
    self: Task,
    fabric_id: int,
    token: str,
    trigger: str = "schedule",
    resume: str = "",
    outage_since: float | None = None,
    outage_retries: int = 0,
) -> dict[str, Any]:
    """Sync one fabric if ``token`` still holds its lease; raise on failure.

    A sync skipped because its remote's breaker is open is not a failure and is never
    retried here: the runner recorded it and the fabric is due again when the breaker
    admits calls. A database outage is not the fabric's failure either: the delivery
    retries until the database is back (``resume``, ``outage_*`` carry that state
    across retries) and resumes the lease its interrupted attempt held.
    """
    nonce = resume or secrets.token_hex(6)
    worker = _attempt_name(self, nonce)
    claim = (fabric_id, token, worker)
    try:
        begun = leases.begin(fabric_id, token, timezone.now(), worker, resume=resume)
    except (*DATABASE_OUTAGE, OSError) as exc:
        if isinstance(exc, OSError) and not is_resource_exhaustion(exc):
            raise
        # begin may have committed before the connection dropped: the retry resumes it.
        raise _retry_through_outage(self, exc, nonce, outage_since, outage_retries, claim) from None
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
    failure_retries = self.request.retries - outage_retries  # outage retries are not the fabric's
    may_retry = failure_retries < (self.max_retries or 0)
    try:
        result = run_sync(
            fabric_id, token, trigger=trigger, worker=worker, attempt=failure_retries + 1, may_retry=may_retry
        )
    except RemoteUnavailable as exc:
        return {"fabric_id": fabric_id, "skipped": str(exc)}
    except DatabaseUnavailable as exc:
        raise _retry_through_outage(self, exc, nonce, outage_since, outage_retries, claim) from None
    except TransientSyncError as exc:
        if not may_retry:
            raise
        countdown = retry_countdown(failure_retries, settings.SYNC_RETRY_BACKOFF_MAX)
        leases.requeue_for_retry(fabric_id, token, timezone.now(), countdown)
        claim_markers.refresh(token, countdown + settings.SYNC_QUEUE_LEASE_SECONDS)
        raise self.retry(exc=exc, countdown=countdown, max_retries=self.request.retries + 1) from exc
    return result.as_dict()
