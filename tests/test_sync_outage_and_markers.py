"""Claims the broker lost, and attempts a database outage interrupted (fast, no worker).

The markers live in this session's real Redis (the broker); "losing" one deletes the
key, exactly what a broker restart without persistence does to it.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.clients import broker_client
from sync import claim_markers, leases
from sync.dispatch import dispatch_due_fabrics
from sync.leases import BeginOutcome
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from tests.factories import make_fabric

pytestmark = pytest.mark.django_db


def _lose_marker(token: str) -> None:
    broker_client().delete(claim_markers.KEY_PREFIX + token)  # type: ignore[union-attr]


def test_a_claim_is_marked_in_the_broker_for_longer_than_its_queue_lease(settings):
    now = timezone.now()
    make_fabric(now=now - timedelta(seconds=1))
    token = leases.claim_due(now).token
    ttl = broker_client().ttl(claim_markers.KEY_PREFIX + token)  # type: ignore[union-attr]
    assert settings.SYNC_QUEUE_LEASE_SECONDS < ttl <= settings.SYNC_QUEUE_LEASE_SECONDS + claim_markers.MARGIN_SECONDS
    assert claim_markers.lost([token]) == set()


def test_the_next_tick_redispatches_claims_whose_marker_the_broker_lost_and_keeps_the_others():
    now = timezone.now()
    lost_fabric = make_fabric(now=now - timedelta(seconds=1))
    lost_token = leases.claim_due(now).token
    kept_fabric = make_fabric(now=now - timedelta(seconds=1))
    kept_token = leases.claim_due(now).token
    _lose_marker(lost_token)

    metrics = dispatch_due_fabrics(now + timedelta(seconds=1))

    assert metrics["claims_lost_by_broker"] == 1
    assert metrics["fabrics_dispatched"] == 1  # the lost one, claimed again under a new token
    lost_fabric.refresh_from_db()
    kept_fabric.refresh_from_db()
    assert lost_fabric.lease_token not in ("", lost_token)
    assert lost_fabric.consecutive_failures == 0
    assert kept_fabric.lease_token == kept_token


def test_a_claim_a_worker_began_is_never_released_as_lost():
    now = timezone.now()
    fabric = make_fabric(now=now - timedelta(seconds=1))
    token = leases.claim_due(now).token
    assert leases.begin(fabric.id, token, now, "host:1/abc").outcome is BeginOutcome.STARTED
    _lose_marker(token)
    assert leases.release_lost(claim_markers.lost([token])) == 0
    assert Fabric.objects.get(id=fabric.id).sync_status == SyncStatus.SYNCING


def test_a_retry_through_a_database_outage_resumes_its_own_held_lease_without_counting_a_death(settings):
    settings.SYNC_LEASE_SECONDS = 60
    now = timezone.now()
    fabric = make_fabric(now=now)
    token = leases.claim_due(now).token
    assert leases.begin(fabric.id, token, now, "host:1/chain1").outcome is BeginOutcome.STARTED
    SyncRun.objects.create(fabric=fabric, trigger="schedule", lease_token=token, worker="host:1/chain1", started_at=now)

    later = now + timedelta(seconds=20)  # the lease is still held
    assert leases.begin(fabric.id, token, later, "host:2/other").outcome is BeginOutcome.HELD
    resumed = leases.begin(fabric.id, token, later, "host:2/chain1", resume="chain1")

    assert resumed.outcome is BeginOutcome.STARTED
    fabric.refresh_from_db()
    assert (fabric.lease_deliveries, fabric.lease_owner) == (0, "host:2/chain1")
    run = SyncRun.objects.get(fabric=fabric)
    assert (run.status, run.error_class) == (RunStatus.RETRYING, "DatabaseUnavailable")


def test_resuming_needs_the_chain_that_holds_the_lease():
    now = timezone.now()
    fabric = make_fabric(now=now)
    token = leases.claim_due(now).token
    assert leases.begin(fabric.id, token, now, "host:1/chain1").outcome is BeginOutcome.STARTED
    other = leases.begin(fabric.id, token, now + timedelta(seconds=5), "host:2/chain2", resume="chain2")
    assert other.outcome is BeginOutcome.HELD
