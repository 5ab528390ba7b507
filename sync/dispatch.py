"""The sync step of the master tick: reap, select, claim and dispatch due fabrics.

Dispatch is chunked: the tick publishes one ``sync.fan_out`` message per
``SYNC_DISPATCH_CHUNK`` fabrics and a worker expands each into one ``sync.sync_fabric``
task per fabric. The tick itself therefore publishes N/250 messages instead of N
(10,000 fabrics in well under a second), while every fabric still gets its own task,
retries and failure isolation. With ``SYNC_BULK_UNCHANGED`` a scheduled fan-out first
records its provably unchanged fabrics in bulk (``sync.bulk_unchanged``) and expands
only the rest. A redelivered chunk is harmless: each task, and the bulk step, checks
the lease token before doing anything.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings

from core.tick import tick_step
from project.celery_app import app
from sync import broker_inventory, claim_markers, leases

logger = logging.getLogger(__name__)


def publish(fabric_ids: list[int], token: str, trigger: str) -> int:
    """Publish sync work for claimed fabrics; release whatever could not be published."""
    from sync.tasks import fan_out, sync_fabric

    chunk = max(1, settings.SYNC_DISPATCH_CHUNK)
    published = 0
    try:
        with app.producer_or_acquire() as producer:
            if len(fabric_ids) <= chunk:
                for fabric_id in fabric_ids:
                    sync_fabric.apply_async((fabric_id, token, trigger), producer=producer)
                    published += 1
            else:
                for start in range(0, len(fabric_ids), chunk):
                    batch = fabric_ids[start : start + chunk]
                    fan_out.apply_async((batch, token, trigger), producer=producer)
                    published += len(batch)
    except Exception:
        released = leases.release(fabric_ids[published:], token)
        logger.exception("dispatch failed after %d fabrics; released %d claims", published, released)
        raise
    return published


@tick_step("sync", order=10)
def dispatch_due_fabrics(now: datetime) -> dict[str, int]:
    """Steps 1-4 of a tick for fabrics (see ``sync.leases`` for the queries)."""
    reaped = leases.reap_expired(now)
    # Claims whose messages the broker lost (restart without persistence, flush) are
    # released here, so this very claim re-dispatches them (sync.claim_markers) ...
    queued = leases.queued_claims(now)
    lost_tokens = claim_markers.lost({token for _, token, _ in queued})
    lost = leases.release_lost(lost_tokens)
    # ... and so are claims waiting too long whose single message vanished or was
    # reserved by a worker that lost it (sync.broker_inventory).
    suspects = leases.claimed_before(
        [claim for claim in queued if claim[1] not in lost_tokens],
        now - timedelta(seconds=settings.SYNC_STRANDED_AFTER_SECONDS),
    )
    stranded = leases.release_stranded(broker_inventory.stranded(suspects, now))
    claim = leases.claim_due(now)
    dispatched = publish(claim.fabric_ids, claim.token, "schedule") if claim.fabric_ids else 0
    return {
        "fabrics_due": claim.due,
        "fabrics_dispatched": dispatched,
        "claims_lost_by_broker": lost,
        "claims_stranded": stranded,
        **reaped,
    }
