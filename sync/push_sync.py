"""What a Git push does to fabrics: make them due now, and claim and dispatch them like a tick.

A push (``sync.webhooks.Push``, verified by ``sync.webhook_views``) never starts a
sync by a path of its own: it makes the fabrics due and then claims them with the
tick's own predicate and conditional UPDATE (``sync.leases.claim_ids``), publishing
through the tick's ``sync.dispatch.publish``. So a tick and a push that coincide sync
a fabric once, whichever claims first, and every rule of a scheduled sync (leases,
retries, the poison-message guard, failure counting) holds for a pushed one.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.core.cache import cache
from django.db.models import Q
from django.utils import timezone

from core.audit import audit_as_system
from core.clients import redis_client
from sync import leases
from sync.dispatch import publish
from sync.models import Fabric, SyncStatus
from sync.webhooks import Push, normalise_git_url

logger = logging.getLogger(__name__)

TRIGGER = "webhook"
# The inactive user that webhook-triggered syncs are audited as (core.audit.audit_as_system).
AUDIT_USER = "webhook"
# Another delivery of the same push (two hooks on one repository, a forge's retry) at
# the same instant makes the same fabrics due in its own UPDATE: while that statement
# holds their rows, this claim skips them (SKIP LOCKED), and once it has committed
# they are due a few milliseconds after this claim's ``now``. Either way nobody claims
# them and they wait for the next tick. Seen in the chaos suite: 40 fabrics of one
# repository left so. A second look after each pause claims what is still claimable.
CLAIM_RETRY_PAUSES = (0.02, 0.1, 0.3)


@dataclass
class PushOutcome:
    matched: list[int] = field(default_factory=list)
    claimed: list[int] = field(default_factory=list)
    already_claimed: list[int] = field(default_factory=list)
    debounced: bool = False


def matching_fabric_ids(push: Push) -> list[int]:
    """Enabled, unsuspended fabrics on the pushed branch whose Git URL is one the push names.

    The database narrows by branch and by the repository's name (a substring of any
    spelling of its URL); the URLs are then compared normalised, in Python.
    """
    names = {key.rsplit("/", 1)[-1] for key in push.repository_keys}
    by_name = Q(pk__in=[])
    for name in names:
        by_name |= Q(git_url__icontains=name)
    candidates = (
        Fabric.objects.filter(by_name, sync_enabled=True, git_branch=push.branch)
        .exclude(sync_status=SyncStatus.SUSPENDED)
        .order_by("id")
        .values_list("id", "git_url")
    )
    return [fabric_id for fabric_id, url in candidates if normalise_git_url(url) in push.repository_keys]


def first_in_window(push: Push) -> bool:
    """True for the first push of (repository, branch) within ``SYNC_WEBHOOK_DEBOUNCE_SECONDS``.

    One atomic ``SET NX EX`` in ``REDIS_URL``. When Redis cannot answer, every push
    dispatches: the lease still keeps a fabric from syncing twice at once.
    """
    seconds = settings.SYNC_WEBHOOK_DEBOUNCE_SECONDS
    if seconds <= 0:
        return True
    digest = hashlib.sha256(f"{push.repository}\n{push.branch}".encode()).hexdigest()
    try:
        return bool(redis_client().set(cache.make_key(f"sync:webhook:{digest}"), 1, nx=True, ex=seconds))
    except redis.RedisError as exc:
        logger.warning("webhook debounce unavailable (%s): dispatching this push", type(exc).__name__)
        return True


def sync_on_push(push: Push, now: datetime, clock: Callable[[], datetime] = timezone.now) -> PushOutcome:
    """Make the fabrics a push concerns due, and dispatch the first push of a burst.

    1. Match (``matching_fabric_ids``); nothing matched: done.
    2. Make them due now, one UPDATE, leases untouched. A fabric whose claim is held
       (a sync is queued or running) therefore syncs again after it: the tick takes
       it, since a sync that ends keeps a due time moved under it (``sync.runner``).
       A fabric in failure backoff has its backoff cut short (the push is a new
       commit); its failure count stays.
    3. Debounce (``first_in_window``): a later push of the same branch within the
       window stops here; its fabrics are due, so the tick syncs them.
    4. Claim with the tick's predicate (``leases.claim_ids``): ids this claim won are
       ``claimed``; the others were held, or a tick claimed them first. Fabrics still
       due and unclaimed afterwards (another delivery's UPDATE had their rows, see
       ``CLAIM_RETRY_PAUSES``) are claimed again after a short pause, up to 3 times.
    5. Publish with trigger ``webhook`` (unpublished claims are released and the error
       raised; the fabrics stay due) and audit each claimed fabric.
    """
    outcome = PushOutcome(matched=matching_fabric_ids(push))
    if not outcome.matched:
        return outcome
    Fabric.objects.filter(id__in=outcome.matched).update(next_sync_at=now)
    if not first_in_window(push):
        outcome.debounced = True
        return outcome
    outcome.claimed = _claim_and_publish(push, outcome.matched, now)
    for pause in CLAIM_RETRY_PAUSES:
        # Claimable once the pause is over: the other delivery's due time may lie just ahead.
        unclaimed = [fabric_id for fabric_id in outcome.matched if fabric_id not in outcome.claimed]
        after_pause = clock() + timedelta(seconds=pause)
        left = list(leases.claimable_ids(unclaimed, after_pause).values_list("id", flat=True))
        if not left:
            break
        time.sleep(pause)
        outcome.claimed += _claim_and_publish(push, left, clock())
    won = set(outcome.claimed)
    outcome.already_claimed = [fabric_id for fabric_id in outcome.matched if fabric_id not in won]
    return outcome


def _claim_and_publish(push: Push, fabric_ids: list[int], now: datetime) -> list[int]:
    """Claim those of ``fabric_ids`` that are due and unleased, publish them, audit them."""
    claim = leases.claim_ids(fabric_ids, now)
    if claim.fabric_ids:
        publish(claim.fabric_ids, claim.token, TRIGGER)
        commit = f" @ {push.commit[:12]}" if push.commit else ""
        by = f" by {push.pusher}" if push.pusher else ""
        audit_as_system(
            AUDIT_USER,
            Fabric.objects.filter(id__in=claim.fabric_ids),
            f"Sync on push: {push.forge} push to {push.branch}{commit}{by}",
        )
    return list(claim.fabric_ids)
