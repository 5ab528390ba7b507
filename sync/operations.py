"""What operators do to fabrics: sync now, compare or reconcile now, confirm a prune,
enable or disable, reset failures, edit settings.

The admin (and anything else acting for an operator) calls these plain functions
instead of saving whole ``Fabric`` rows. A whole-row ``save()`` would write back
the state fields it loaded, silently undoing a lease or a sync result that a worker
wrote in between; every function here writes only the columns it means to change,
and leaves fabrics whose lease is held to the sync that holds it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Q, QuerySet, Value, When

from core.redaction import redact
from sync import leases
from sync.models import ClusterMode, DriftedObject, Fabric, FabricCluster, SyncStatus, SyncTrigger
from sync.scheduling import next_sync_after_failure, next_sync_after_success

logger = logging.getLogger(__name__)

# Editing any of these changes what a sync reads (or whether it can read it at all:
# a fixed credential), so the fabric should sync at the next tick.
SOURCE_FIELDS = frozenset({"git_url", "git_branch", "git_path", "git_credential"})
# Editing any of these changes when the fabric is next due.
SCHEDULE_FIELDS = SOURCE_FIELDS | {"sync_interval"}
# A fabric in one of these states holds a lease: its sync owns the state fields.
LEASED_STATUSES = (SyncStatus.QUEUED, SyncStatus.SYNCING)
FAILING_STATUSES = (SyncStatus.ERROR, SyncStatus.SUSPENDED)
# What an operator sets on a fabric's cluster; the other columns are the sync's.
CLUSTER_SETTINGS = frozenset({
    "server_url", "ca_bundle", "token", "namespaces", "kinds", "ignore_rules",
    "mode", "prune_enabled", "prune_max_share",
})  # fmt: skip


@dataclass
class ManualSyncOutcome:
    """What "Sync now" did: fabrics enqueued, skipped as busy, or not published."""

    enqueued: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    error: str = ""
    # Compare / Reconcile now: fabrics without a cluster (or, to reconcile, in observe mode).
    not_applicable: list[str] = field(default_factory=list)
    # The claim token of each enqueued fabric, by id: the run it starts carries it (the API returns it).
    tokens: dict[int, str] = field(default_factory=dict)


def enqueue_manual_syncs(
    fabrics: Iterable[Fabric], now: datetime, trigger: SyncTrigger = SyncTrigger.MANUAL
) -> ManualSyncOutcome:
    """Claim each fabric and publish one ``sync.sync_fabric`` task for it (with ``trigger``).

    1. ``claim_one`` takes the lease whether or not the fabric is due; a fabric whose
       lease is held (a sync is queued or running) is reported busy, never doubled.
    2. The task is published with the claim's token, exactly like a tick's dispatch.
    3. If the broker refuses the publish, the claim is released at once so the
       fabric does not sit in QUEUED until its queue lease expires, and the fabrics
       after it are not even claimed: each would wait out the same broker timeout.
    """
    from sync.tasks import sync_fabric

    outcome = ManualSyncOutcome()
    for fabric in fabrics:
        if outcome.failed:
            outcome.failed.append(fabric.name)
            continue
        try:
            token = leases.claim_one(fabric.id, now)
        except Exception as exc:  # the broker is down: it cannot take the message either
            outcome.error = redact(f"{type(exc).__name__}: {exc}")
            outcome.failed.append(fabric.name)
            logger.exception("could not mark a manual sync of fabric %s in the broker", fabric.name)
            continue
        if token is None:
            outcome.busy.append(fabric.name)
            continue
        try:
            sync_fabric.apply_async((fabric.id, token, trigger.value))
        except Exception as exc:
            leases.release([fabric.id], token)
            # Broker errors may echo the broker URL, password included.
            outcome.error = redact(f"{type(exc).__name__}: {exc}")
            outcome.failed.append(fabric.name)
            logger.exception("could not enqueue a manual sync of fabric %s", fabric.name)
            continue
        outcome.enqueued.append(fabric.name)
        outcome.tokens[fabric.id] = token
    return outcome


def compare_now(fabrics: Iterable[Fabric], now: datetime) -> ManualSyncOutcome:
    """ "Compare now": a manual sync of each fabric with a cluster that re-reads the whole
    cluster (a full LIST, not the watch) and recomputes its drift. It takes the same
    lease as any sync, so it never runs beside another. Pass fabrics from
    ``Fabric.objects.with_cluster()``; those without a cluster are ``not_applicable``."""
    fabrics = list(fabrics)
    outcome = enqueue_manual_syncs([f for f in fabrics if _cluster(f) is not None], now, SyncTrigger.COMPARE)
    outcome.not_applicable = [f.name for f in fabrics if _cluster(f) is None]
    return outcome


def reconcile_now(fabrics: Iterable[Fabric], now: datetime) -> ManualSyncOutcome:
    """ "Reconcile now": a compare that also applies Git's objects (and prunes, when
    enabled and allowed), for fabrics whose cluster is in reconcile mode; the others
    are ``not_applicable`` (observe mode never writes, whatever asks it to)."""
    fabrics = list(fabrics)
    chosen = [f for f in fabrics if (c := _cluster(f)) is not None and c.mode == ClusterMode.RECONCILE]
    outcome = enqueue_manual_syncs(chosen, now, SyncTrigger.RECONCILE)
    outcome.not_applicable = [f.name for f in fabrics if f not in chosen]
    return outcome


def _cluster(fabric: Fabric) -> FabricCluster | None:
    try:
        return fabric.cluster
    except FabricCluster.DoesNotExist:
        return None


def confirm_prune(cluster: FabricCluster, user: str, now: datetime) -> bool:
    """Confirm the prune the guard refused (``prune_pending``), once; False when none waits.

    The next sync in reconcile mode deletes those objects, and only those: should it
    find others to delete too, it refuses again and waits for a new confirmation
    (``sync.live.prune``). Call ``reconcile_now`` to have it happen at once.
    """
    return bool(
        FabricCluster.objects.filter(id=cluster.id, prune_refused_at__isnull=False, prune_refused_at__lte=now).update(
            prune_confirmed_at=now, prune_confirmed_by=user[:150], updated_at=now
        )
    )


def save_cluster_settings(cluster: FabricCluster, changed: Iterable[str], now: datetime) -> None:
    """Save an operator's edit of an existing cluster row: the edited settings only.

    The live state, the drift and the prune bookkeeping the sync writes meanwhile are
    left alone. Settings that change what is read or compared make the fabric due now
    (its next sync compares with them; the stored drift was computed for the old ones).
    """
    fields = set(changed) & CLUSTER_SETTINGS
    if not fields:
        return
    cluster.save(update_fields=sorted(fields | {"updated_at"}))
    Fabric.objects.filter(id=cluster.fabric_id).update(next_sync_at=now, updated_at=now)


def disconnect_cluster(fabric: Fabric) -> bool:
    """Remove a fabric's cluster connection and the drift found through it, together;
    the fabric goes on Git-only. The token's credential stays (others may use it).
    False when the fabric had no cluster."""
    with transaction.atomic():
        DriftedObject.objects.filter(fabric=fabric).delete()
        deleted, _ = FabricCluster.objects.filter(fabric=fabric).delete()
    return bool(deleted)


def set_sync_enabled(fabrics: QuerySet[Fabric], enabled: bool, now: datetime) -> int:
    """Enable or disable scheduled syncs; returns how many fabrics changed.

    A disabled fabric's running sync still finishes; it is simply not dispatched again.
    """
    return fabrics.exclude(sync_enabled=enabled).update(sync_enabled=enabled, updated_at=now)


def reset_failures(fabrics: QuerySet[Fabric], now: datetime) -> int:
    """Forget the failure streak of every selected fabric that has one and holds no lease.

    Clears ``consecutive_failures``, ``failing_since`` and ``last_error``, lifts a
    suspension, and makes the fabric due at once so the next tick retries it instead
    of waiting out the failure backoff. The status returns to what the last success says: ``in_sync``
    if the fabric ever synced, else ``never_synced``. Fabrics with a sync queued or
    running are skipped: that sync owns their state and will record its own outcome.
    Healthy fabrics are skipped too, so a reset never triggers a needless sync.
    Returns how many fabrics were reset.
    """
    failing = Q(consecutive_failures__gt=0) | Q(sync_status__in=FAILING_STATUSES) | ~Q(last_error="")
    return (
        fabrics.filter(failing)
        .exclude(sync_status__in=LEASED_STATUSES)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now))
        .update(
            consecutive_failures=0,
            failing_since=None,
            last_error="",
            sync_status=Case(
                When(last_sync__isnull=True, then=Value(SyncStatus.NEVER_SYNCED)),
                default=Value(SyncStatus.IN_SYNC),
            ),
            next_sync_at=now,
            updated_at=now,
        )
    )


def rescheduled_next_sync(fabric: Fabric, changed: Iterable[str], now: datetime) -> datetime | None:
    """When a fabric whose settings an operator just changed should next sync.

    1. Nothing that affects scheduling changed: None (keep ``next_sync_at``).
    2. The source (URL, branch, path or credential) changed: now, so the new desired state is
       read at the next tick rather than up to an interval later.
    3. Only the interval changed: recompute from the last outcome with the new
       interval: after a failure streak, the failure backoff from the last attempt;
       after a success, the last success plus the interval; never synced, now.
       A moment already past becomes now.
    """
    changed = set(changed)
    if not changed & SCHEDULE_FIELDS:
        return None
    if changed & SOURCE_FIELDS:
        return now
    if fabric.consecutive_failures > 0:
        failed_at = fabric.last_attempt_at or now
        candidate = next_sync_after_failure(
            failed_at, fabric.consecutive_failures, fabric.sync_interval, settings.SYNC_FAILURE_BACKOFF_MAX
        )
    elif fabric.last_sync is not None:
        candidate = next_sync_after_success(fabric.last_sync, fabric.sync_interval)
    else:
        candidate = now
    return max(candidate, now)


def save_settings(fabric: Fabric, changed: Iterable[str], now: datetime) -> None:
    """Save an operator's edit of an existing fabric: the edited columns only.

    ``fabric`` carries the new values (from a validated form); state written by the
    system in the meantime is left untouched. ``next_sync_at`` is recomputed with
    ``rescheduled_next_sync`` when scheduling-relevant fields changed.
    """
    fields = set(changed) - {"id"}
    next_sync = rescheduled_next_sync(fabric, fields, now)
    if next_sync is not None:
        fabric.next_sync_at = next_sync
        fields.add("next_sync_at")
    if fields:
        fabric.save(update_fields=sorted(fields | {"updated_at"}))
