"""Leases: who may sync a fabric, until when. Every transition is one conditional UPDATE.

A lease is a random token plus an expiry on the fabric row. The row count of a
conditional UPDATE says who won, so two ticks, two beat processes or a redelivered
message can never hold the same fabric at once, on SQLite or PostgreSQL (where
READ COMMITTED re-checks the WHERE clause of a row it waited for).

Lifecycle::

    (due) --claim_due / claim_one--> QUEUED --begin--> SYNCING --finish--> IN_SYNC / ERROR / SUSPENDED
                                       |                  +--release_skipped (breaker open)--> previous status
                                       |                  |
                        queue lease expired      lease expired (worker died)
                                       v                  v
                          previous status           ERROR, due now (reap_expired)
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, cast

from django.conf import settings
from django.db import connections, transaction
from django.db.models import Case, DateTimeField, F, PositiveSmallIntegerField, Q, QuerySet, Value, When
from django.db.models.functions import Coalesce
from django.db.models.sql import UpdateQuery

from sync import claim_markers
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from sync.progress_commit import progress_transaction

LOST_MESSAGE = "Sync did not finish within its lease: the worker running it died or was killed."


def new_token() -> str:
    return uuid.uuid4().hex


def due_fabrics(now: datetime) -> QuerySet[Fabric]:
    """The due predicate of ``sync.scheduling.fabric_needs_sync`` as one indexed query."""
    return Fabric.objects.filter(
        Q(sync_enabled=True, next_sync_at__lte=now)
        & ~Q(sync_status=SyncStatus.SUSPENDED)
        & (Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now))
    )


def streak_start(now: datetime) -> Coalesce:
    """``failing_since`` for a failure being counted, in the same UPDATE: kept when the
    streak began earlier, else the start of this attempt (``begin`` stamps
    ``last_attempt_at``), else ``now``."""
    return Coalesce(F("failing_since"), F("last_attempt_at"), Value(now), output_field=DateTimeField())


def _status_without_lease() -> Case:
    """The status a fabric returns to when an unstarted claim is released."""
    return Case(
        When(consecutive_failures__gte=settings.SYNC_SUSPEND_AFTER_FAILURES, then=Value(SyncStatus.SUSPENDED)),
        When(consecutive_failures__gt=0, then=Value(SyncStatus.ERROR)),
        When(last_sync__isnull=True, then=Value(SyncStatus.NEVER_SYNCED)),
        default=Value(SyncStatus.IN_SYNC),
    )


@dataclass(frozen=True)
class Claim:
    token: str
    fabric_ids: list[int]
    due: int


BeforeClaim = Callable[[str, float], None]


def claim_due(now: datetime, before_claim: BeforeClaim = claim_markers.mark) -> Claim:
    """Claim every due fabric for one tick, in a constant number of queries.

    1. Count the due fabrics (for the tick's metrics).
    2. ``before_claim(token, lease_seconds)`` marks the claim in the broker
       (``sync.claim_markers``); if the broker is down it raises and nothing is
       claimed (nothing could be published either).
    3. One conditional UPDATE stamps a fresh tick token on every row that is still
       due and unleased at that instant; rows another tick won are skipped.
    4. Read back the ids carrying our token: exactly the rows we won.
    """
    token = new_token()
    due = due_fabrics(now).count()
    if due == 0:
        return Claim(token, [], 0)
    before_claim(token, settings.SYNC_QUEUE_LEASE_SECONDS)
    # SKIP LOCKED: a row another session holds locked (a stuck admin edit, a long
    # transaction) is left for a later tick instead of stalling the whole claim behind it.
    unlocked_due = due_fabrics(now).select_for_update(skip_locked=True).values("id")
    with transaction.atomic(savepoint=False):  # one statement; Django wants FOR UPDATE in a transaction
        due_fabrics(now).filter(id__in=unlocked_due).update(
            sync_status=SyncStatus.QUEUED,
            lease_token=token,
            lease_expires_at=now + timedelta(seconds=settings.SYNC_QUEUE_LEASE_SECONDS),
            lease_owner="",
            # lease_deliveries is kept: it counts worker deaths until the fabric's next
            # outcome (see reap_expired), whichever path re-dispatched it.
        )
    ids = list(Fabric.objects.filter(lease_token=token).order_by("next_sync_at").values_list("id", flat=True))
    return Claim(token, ids, due)


def claim_one(fabric_id: int, now: datetime, before_claim: BeforeClaim = claim_markers.mark) -> str | None:
    """Claim one fabric for a manual sync, due or not. None if its lease is held."""
    token = new_token()
    before_claim(token, settings.SYNC_QUEUE_LEASE_SECONDS)
    won = (
        Fabric.objects.filter(id=fabric_id)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now))
        .update(
            sync_status=SyncStatus.QUEUED,
            lease_token=token,
            lease_expires_at=now + timedelta(seconds=settings.SYNC_QUEUE_LEASE_SECONDS),
            lease_owner="",
        )
    )
    return token if won else None


def claimable_ids(fabric_ids: list[int], now: datetime) -> QuerySet[Fabric]:
    """Those of ``fabric_ids`` that ``claim_ids`` would claim at ``now``, locks aside."""
    return due_fabrics(now).filter(id__in=fabric_ids).exclude(sync_status=SyncStatus.SYNCING)


def claim_ids(fabric_ids: list[int], now: datetime, before_claim: BeforeClaim = claim_markers.mark) -> Claim:
    """Claim those of ``fabric_ids`` that are due, exactly as a tick would (a push made them due).

    1. ``before_claim`` marks the token in the broker, as in ``claim_due``.
    2. One conditional UPDATE, with ``due_fabrics``' predicate and ``SKIP LOCKED``,
       stamps the token on each of them still due and unleased at that instant. A
       SYNCING fabric whose lease expired is left to the tick's reaper, which counts
       the dead worker's delivery (the poison-message guard).
    3. Read back the ids carrying the token: exactly the rows won. A tick claiming at
       the same instant won the others; no fabric is claimed twice.
    """
    token = new_token()
    if not fabric_ids:
        return Claim(token, [], 0)
    before_claim(token, settings.SYNC_QUEUE_LEASE_SECONDS)
    claimable = claimable_ids(fabric_ids, now)
    unlocked = claimable.select_for_update(skip_locked=True).values("id")
    with transaction.atomic(savepoint=False):  # one statement; Django wants FOR UPDATE in a transaction
        claimable.filter(id__in=unlocked).update(
            sync_status=SyncStatus.QUEUED,
            lease_token=token,
            lease_expires_at=now + timedelta(seconds=settings.SYNC_QUEUE_LEASE_SECONDS),
            lease_owner="",
        )
    ids = list(Fabric.objects.filter(lease_token=token).order_by("id").values_list("id", flat=True))
    return Claim(token, ids, len(fabric_ids))


def release(fabric_ids: list[int], token: str) -> int:
    """Give back claims that were never dispatched (e.g. the broker refused the publish)."""
    return Fabric.objects.filter(id__in=fabric_ids, lease_token=token, sync_status=SyncStatus.QUEUED).update(
        sync_status=_status_without_lease(), lease_token="", lease_expires_at=None, lease_owner=""
    )


def queued_claims(now: datetime) -> list[tuple[int, str, datetime]]:
    """(fabric id, token, lease expiry) of every claim waiting QUEUED under an unexpired lease."""
    rows = Fabric.objects.filter(sync_status=SyncStatus.QUEUED, lease_expires_at__gt=now).values_list(
        "id", "lease_token", "lease_expires_at"
    )
    return [(fabric_id, token, expires) for fabric_id, token, expires in rows if expires is not None]


def claimed_before(claims: list[tuple[int, str, datetime]], cutoff: datetime) -> set[tuple[int, str]]:
    """The claims taken before ``cutoff`` (a queue lease runs from its claim, or retry)."""
    queue_lease = timedelta(seconds=settings.SYNC_QUEUE_LEASE_SECONDS)
    return {(fabric_id, token) for fabric_id, token, expires in claims if expires - queue_lease <= cutoff}


def release_lost(tokens: set[str]) -> int:
    """Release QUEUED claims whose messages the broker lost, so this tick re-dispatches them.

    Only claims still QUEUED: one a worker began in the meantime (SYNCING) was not
    lost. No failure is counted; the broker lost the work, not the fabric.
    """
    if not tokens:
        return 0
    return Fabric.objects.filter(lease_token__in=tokens, sync_status=SyncStatus.QUEUED).update(
        sync_status=_status_without_lease(), lease_token="", lease_expires_at=None, lease_owner=""
    )


def release_stranded(claims: set[tuple[int, str]]) -> int:
    """Release QUEUED claims whose message the broker no longer holds (``sync.broker_inventory``).

    Like ``release_lost``: only claims still QUEUED under the same token, no failure counted.
    """
    if not claims:
        return 0
    by_token: dict[str, list[int]] = {}
    for fabric_id, token in claims:
        by_token.setdefault(token, []).append(fabric_id)
    condition = Q(pk__in=[])
    for token, ids in by_token.items():
        condition |= Q(lease_token=token, id__in=ids)
    return Fabric.objects.filter(condition, sync_status=SyncStatus.QUEUED).update(
        sync_status=_status_without_lease(), lease_token="", lease_expires_at=None, lease_owner=""
    )


class BeginOutcome(Enum):
    STARTED = "started"
    SUPERSEDED = "superseded"  # our token is gone: a newer claim or a reaper took over
    HELD = "held"  # another delivery of the same claim is (or may be) still running
    GAVE_UP = "gave_up"  # delivered too often: a poison message


@dataclass(frozen=True)
class Begin:
    outcome: BeginOutcome
    retry_in: float = 0.0
    deliveries: int = 0


INTERRUPTED_MESSAGE = "Interrupted: the database became unavailable mid-sync; resumed once it was back."


def begin(fabric_id: int, token: str, now: datetime, worker: str, resume: str = "") -> Begin:
    """Move a claimed fabric to SYNCING under our token, with the full sync lease.

    A QUEUED claim starts normally. A SYNCING claim whose lease expired means the
    previous delivery died (SIGKILL, OOM); we take over and count the delivery.
    A SYNCING claim whose lease is still held may still be running: we must not run
    beside it, so the caller waits until the lease would expire. The one exception is
    ``resume``: the nonce that ends the owner name of every attempt in one chain of
    retries through a database outage (``sync.tasks``). Each of those attempts is over
    (its own handler sent the retry), so we take their lease over at once, counting
    no death, and close their run as interrupted rather than lost.

    Queries: one conditional UPDATE ... RETURNING when the claim starts and no earlier
    run is left RUNNING (the common case); one more SELECT when it does not start (to
    tell a newer claim from a held lease), or one or two UPDATEs closing the runs an
    earlier attempt left RUNNING.
    """
    lease_until = now + timedelta(seconds=settings.SYNC_LEASE_SECONDS)
    resumed = Q(sync_status=SyncStatus.SYNCING, lease_owner__endswith=f"/{resume}") if resume else Q(pk__in=[])
    claim = Fabric.objects.filter(id=fabric_id, lease_token=token).filter(
        Q(sync_status=SyncStatus.QUEUED) | Q(sync_status=SyncStatus.SYNCING, lease_expires_at__lte=now) | resumed
    )
    with progress_transaction():  # a progress marker: sync.progress_commit
        won = _update_returning(
            claim,
            {
                "lease_deliveries": Case(
                    When(resumed, then=F("lease_deliveries")),
                    When(sync_status=SyncStatus.SYNCING, then=F("lease_deliveries") + 1),
                    default=F("lease_deliveries"),
                    output_field=PositiveSmallIntegerField(),
                ),
                "sync_status": SyncStatus.SYNCING,
                "lease_expires_at": lease_until,
                "lease_owner": worker[:200],
                "last_attempt_at": now,
            },
        )
        # We hold the lease exclusively now, so any run still marked RUNNING belongs to an
        # earlier attempt: interrupted by the outage we resume from, or a delivery that
        # died. Close it so run history never shows two at once.
        if won is not None and won[1]:
            running = SyncRun.objects.filter(fabric_id=fabric_id, status=RunStatus.RUNNING)
            if resume:
                running.filter(worker__endswith=f"/{resume}").update(
                    status=RunStatus.RETRYING, finished_at=now, error_class="DatabaseUnavailable",
                    error_message=INTERRUPTED_MESSAGE,
                )  # fmt: skip
            running.update(status=RunStatus.LOST, finished_at=now, error_class="WorkerLost", error_message=LOST_MESSAGE)
    if won is None:
        row = Fabric.objects.filter(id=fabric_id).values("lease_token", "lease_expires_at").first()
        if row is None or row["lease_token"] != token:
            return Begin(BeginOutcome.SUPERSEDED)
        expires = row["lease_expires_at"]
        wait = (expires - now).total_seconds() + 1 if expires else 1.0
        return Begin(BeginOutcome.HELD, retry_in=max(wait, 1.0))
    deliveries = won[0]
    if deliveries >= settings.SYNC_MAX_DELIVERIES:
        return Begin(BeginOutcome.GAVE_UP, deliveries=deliveries)
    return Begin(BeginOutcome.STARTED, deliveries=deliveries)


def _update_returning(claim: QuerySet[Fabric], values: dict[str, Any]) -> tuple[int, bool] | None:
    """``claim.update(**values)`` in one statement that also returns, for the row it changed,
    its ``lease_deliveries`` and whether the fabric has a run still RUNNING; None if no row.

    Django's UPDATE has no RETURNING, so its own compiled statement gets one appended
    (PostgreSQL, and SQLite since 3.35). ``claim`` selects at most one row (by id).
    """
    query = cast(UpdateQuery, claim.query.chain(UpdateQuery))
    query.add_update_values(values)
    update_sql, params = query.get_compiler(claim.db).as_sql()
    conn = connections[claim.db]
    quote = conn.ops.quote_name
    fabric, run = quote(Fabric._meta.db_table), quote(SyncRun._meta.db_table)
    # Names from the models, quoted; the one value is a parameter.
    running = f"SELECT 1 FROM {run} WHERE {run}.{quote('fabric_id')} = {fabric}.{quote('id')}"  # noqa: S608
    returning = f" RETURNING {fabric}.{quote('lease_deliveries')}, EXISTS ({running} AND {run}.{quote('status')} = %s)"
    with transaction.mark_for_rollback_on_error(using=claim.db), conn.cursor() as cursor:
        cursor.execute(update_sql + returning, (*params, RunStatus.RUNNING))
        row = cursor.fetchone()
    return None if row is None else (int(row[0]), bool(row[1]))


def update_returning_ids(rows: QuerySet[Fabric], values: dict[str, Any]) -> list[int]:
    """``rows.update(**values)`` in one statement that returns the ids of the rows it changed.

    For set-based transitions whose winners matter (``sync.bulk_unchanged``): the row
    count says how many won, this says which. Like ``_update_returning``: Django's own
    compiled UPDATE with a RETURNING appended (PostgreSQL, and SQLite since 3.35).
    ``rows`` must filter on the fabric's own columns (or subqueries), not joins.
    """
    query = cast(UpdateQuery, rows.query.chain(UpdateQuery))
    query.add_update_values(values)
    update_sql, params = query.get_compiler(rows.db).as_sql()
    if not update_sql:
        return []
    conn = connections[rows.db]
    returning = f" RETURNING {conn.ops.quote_name(Fabric._meta.db_table)}.{conn.ops.quote_name('id')}"
    with transaction.mark_for_rollback_on_error(using=rows.db), conn.cursor() as cursor:
        cursor.execute(update_sql + returning, params)
        return [int(row[0]) for row in cursor.fetchall()]


def requeue_for_retry(fabric_id: int, token: str, now: datetime, countdown: float) -> bool:
    """Keep the claim across a retry: back to QUEUED, lease covering the countdown."""
    until = now + timedelta(seconds=countdown + settings.SYNC_QUEUE_LEASE_SECONDS)
    return bool(
        Fabric.objects.filter(id=fabric_id, lease_token=token, sync_status=SyncStatus.SYNCING).update(
            sync_status=SyncStatus.QUEUED, lease_expires_at=until, lease_owner=""
        )
    )


def release_skipped(fabric_id: int, token: str, next_sync_at: datetime, last_error: str) -> bool:
    """Give back a claim whose sync was skipped (its remote's breaker rejected the call).

    Not a failure: the status returns to what it was before the claim, the failure
    count stays as it is, and the fabric is due again at ``next_sync_at``.
    """
    return bool(
        Fabric.objects.filter(id=fabric_id, lease_token=token).update(
            sync_status=_status_without_lease(),
            last_error=last_error,
            next_sync_at=next_sync_at,
            lease_token="",
            lease_expires_at=None,
            lease_owner="",
            lease_deliveries=0,
        )
    )


GIVEN_BACK_MESSAGE = (
    "Interrupted: the worker could not publish its retry ({cause}); the claim was given back "
    "and the next tick dispatches it again."
)


def give_back(fabric_id: int, token: str, worker: str, now: datetime, cause: str) -> bool:
    """Return a claim whose attempt can neither finish nor queue its own retry.

    A worker out of file descriptors still has its open database connection but no
    socket for a broker connection, so Celery drops the retry it cannot publish. Left
    alone, the claim would wait for the lease reaper, which marks the run LOST and
    counts a worker death against the fabric. Instead, in one transaction: the attempt's
    run closes as *Failed, will retry* with ``cause``, and the fabric goes back to the
    status it had before the claim, due at once, with its delivery count unchanged
    (so the poison-message guard is neither reset nor advanced). Only a claim this
    attempt (``worker``) holds, or one still QUEUED under ``token``, is given back.
    """
    mine = Q(sync_status=SyncStatus.SYNCING, lease_owner=worker[:200]) | Q(sync_status=SyncStatus.QUEUED)
    with transaction.atomic():
        released = Fabric.objects.filter(mine, id=fabric_id, lease_token=token).update(
            sync_status=_status_without_lease(),
            next_sync_at=now,
            lease_token="",
            lease_expires_at=None,
            lease_owner="",
        )
        if released:
            SyncRun.objects.filter(fabric_id=fabric_id, status=RunStatus.RUNNING, worker=worker[:200]).update(
                status=RunStatus.RETRYING, finished_at=now, error_class="WorkerResourcesExhausted",
                error_message=GIVEN_BACK_MESSAGE.format(cause=cause)[:2000],
            )  # fmt: skip
    return bool(released)


def reap_expired(now: datetime) -> dict[str, int]:
    """Release every expired lease so nothing stays QUEUED or SYNCING forever.

    1. Runs still RUNNING under an expired SYNCING lease are marked LOST.
    2. Those fabrics count a failure (starting ``failing_since`` if it is the streak's
       first) and a worker death (``lease_deliveries``, which
       claims keep, so the poison-message guard holds whichever path re-dispatches).
       Below ``SYNC_MAX_DELIVERIES`` deaths they become due at once (the sync is redone
       in this very tick), or SUSPENDED once the failure limit is reached. At the
       limit the guard gives up: ERROR "gave up after N deliveries …", the longest
       failure backoff (``SYNC_FAILURE_BACKOFF_MAX``), and the count starts again.
    3. Expired QUEUED claims (the message was never consumed) go back to their
       previous status without counting a failure; the next due tick re-dispatches
       them with a new token, and the stale message is dropped on arrival.
    """
    expired_syncing = Fabric.objects.filter(sync_status=SyncStatus.SYNCING, lease_expires_at__lte=now)
    runs_lost = SyncRun.objects.filter(status=RunStatus.RUNNING, fabric__in=expired_syncing.values("id")).update(
        status=RunStatus.LOST, finished_at=now, error_class="WorkerLost", error_message=LOST_MESSAGE
    )
    limit = settings.SYNC_SUSPEND_AFTER_FAILURES
    reaches_limit = Q(consecutive_failures__gte=limit - 1) if limit > 0 else Q(pk__in=[])
    # This death is the last one the poison-message guard allows (begin's GAVE_UP path
    # when a redelivery wins the race; this one when the reaper does).
    deliveries = settings.SYNC_MAX_DELIVERIES
    gives_up = Q(lease_deliveries__gte=deliveries - 1)
    gave_up = f"gave up after {deliveries} deliveries whose worker died mid-sync (poison message?)"
    syncing = expired_syncing.update(
        sync_status=Case(When(reaches_limit, then=Value(SyncStatus.SUSPENDED)), default=Value(SyncStatus.ERROR)),
        consecutive_failures=F("consecutive_failures") + 1,
        failing_since=streak_start(now),
        # Same wording as sync.runner.record_failure, so a suspension always says why.
        last_error=Case(
            When(
                reaches_limit & gives_up,
                then=Value(f"Suspended after {limit} or more consecutive failures; last: {gave_up}"),
            ),
            When(
                reaches_limit,
                then=Value(f"Suspended after {limit} or more consecutive failures; last: {LOST_MESSAGE}"),
            ),
            When(gives_up, then=Value(gave_up)),
            default=Value(LOST_MESSAGE),
        ),
        # A sync that keeps killing its worker waits the longest failure backoff; any
        # other lost sync is redone in this very tick. (One UPDATE for both keeps the
        # tick's query count constant.)
        next_sync_at=Case(
            When(gives_up, then=Value(now + timedelta(seconds=settings.SYNC_FAILURE_BACKOFF_MAX))),
            default=Value(now),
        ),
        lease_deliveries=Case(When(gives_up, then=Value(0)), default=F("lease_deliveries") + 1),
        lease_token="",
        lease_expires_at=None,
        lease_owner="",
    )
    queued = Fabric.objects.filter(sync_status=SyncStatus.QUEUED, lease_expires_at__lte=now).update(
        sync_status=_status_without_lease(), lease_token="", lease_expires_at=None, lease_owner=""
    )
    return {"leases_reaped": syncing + queued, "runs_lost": runs_lost}
