"""Claims whose single message the broker no longer holds are released by the next tick.

Real: the messages are published by the tick's own ``publish`` into this session's
private Redis broker, and a "worker that reserved a message and died" is a real
process that takes the message with Kombu (``basic_get`` without acknowledging, as a
late-acking Celery worker does) and exits without a word. A message "popped into a
connection nobody reads" (a worker host cut off mid-``BRPOP``) is removed from the
queue's list with ``LREM``: Redis hands it to the cut-off client and keeps no copy, so
the end state is the same.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from core.clients import broker_client
from sync import broker_inventory, claim_markers, leases
from sync.dispatch import dispatch_due_fabrics, publish
from sync.models import Fabric, SyncStatus
from tests.conftest import purge_session_queues
from tests.factories import make_fabric

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("private_broker")]

RESERVE_AND_DIE = """
import os, sys
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup()
from project.celery_app import app
conn = app.connection_for_read()
message = conn.default_channel.basic_get(queue=sys.argv[1], no_ack=False)
print("reserved" if message is not None else "empty", flush=True)
os._exit(0)  # no ack, no reject, no restore: a worker killed holding the message
"""


@pytest.fixture(autouse=True)
def _empty_sync_queue() -> None:
    purge_session_queues()


def _claim_and_publish(now: datetime, countdown: float | None = None) -> tuple[Fabric, str]:
    fabric = make_fabric(now=now - timedelta(seconds=1))
    claim = leases.claim_due(now)
    assert claim.fabric_ids == [fabric.id]
    if countdown is None:
        assert publish(claim.fabric_ids, claim.token, "schedule") == 1
    else:
        from sync.tasks import sync_fabric

        sync_fabric.apply_async((fabric.id, claim.token, "schedule"), countdown=countdown)
    return fabric, claim.token


def _vanish(fabric_id: int, token: str) -> None:
    """Remove the claim's message from the sync queue's list, as a pop into a dead connection does."""
    client = broker_client()
    assert client is not None
    raws: list[str] = list(client.lrange(settings.SYNC_QUEUE, 0, -1))  # type: ignore[arg-type]
    for raw in raws:
        if (fabric_id, token) in broker_inventory.claims_in(json.loads(raw)):
            assert client.lrem(settings.SYNC_QUEUE, 1, raw) == 1
            return
    raise AssertionError("the claim's message was not in the queue")


def _reserve_and_die() -> None:
    done = subprocess.run(
        [sys.executable, "-c", RESERVE_AND_DIE, settings.SYNC_QUEUE], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "reserved", done.stdout + done.stderr


def _after_grace(now: datetime) -> datetime:
    """Past the grace for a claim taken at ``now`` and a message reserved right after (the
    reserving process takes a few real seconds to start)."""
    return now + timedelta(seconds=settings.SYNC_STRANDED_AFTER_SECONDS + 30)


def test_a_claim_whose_message_waits_in_the_queue_is_kept_however_long_it_waits():
    now = timezone.now()
    fabric, token = _claim_and_publish(now)

    metrics = dispatch_due_fabrics(_after_grace(now))

    assert metrics["claims_stranded"] == 0
    fabric.refresh_from_db()
    assert (fabric.sync_status, fabric.lease_token) == (SyncStatus.QUEUED, token)


def test_a_claim_whose_message_vanished_is_dispatched_again_by_the_next_tick_without_a_failure():
    now = timezone.now()
    fabric, token = _claim_and_publish(now)
    _vanish(fabric.id, token)

    metrics = dispatch_due_fabrics(_after_grace(now))

    assert metrics["claims_stranded"] == 1
    assert metrics["fabrics_dispatched"] == 1  # the same tick claims it again
    fabric.refresh_from_db()
    assert fabric.sync_status == SyncStatus.QUEUED
    assert fabric.lease_token not in ("", token)
    assert fabric.consecutive_failures == 0
    queued = [broker_inventory.claims_in(json.loads(raw)) for raw in broker_client().lrange("sync", 0, -1)]  # type: ignore[union-attr]
    assert queued == [[(fabric.id, fabric.lease_token)]]


def test_a_young_claim_is_never_suspected():
    now = timezone.now()
    fabric, token = _claim_and_publish(now)
    _vanish(fabric.id, token)

    metrics = dispatch_due_fabrics(now + timedelta(seconds=settings.SYNC_STRANDED_AFTER_SECONDS - 5))

    assert metrics["claims_stranded"] == 0
    fabric.refresh_from_db()
    assert fabric.lease_token == token


def test_a_message_reserved_by_a_worker_that_died_frees_its_claim_once_the_grace_is_over():
    now = timezone.now()
    fabric, token = _claim_and_publish(now)
    _reserve_and_die()

    # Just reserved: a live worker would begin it any moment.
    assert dispatch_due_fabrics(now + timedelta(seconds=1))["claims_stranded"] == 0
    # Past the grace and still QUEUED: whoever holds it will not begin it.
    assert dispatch_due_fabrics(_after_grace(now))["claims_stranded"] == 1
    fabric.refresh_from_db()
    assert fabric.lease_token not in ("", token)


def test_a_message_held_for_a_retry_countdown_keeps_its_claim():
    now = timezone.now()
    fabric, token = _claim_and_publish(now, countdown=600)
    _reserve_and_die()

    assert dispatch_due_fabrics(_after_grace(now))["claims_stranded"] == 0
    fabric.refresh_from_db()
    assert fabric.lease_token == token


def test_a_begun_claim_is_never_released_even_if_its_message_is_gone():
    now = timezone.now()
    fabric, token = _claim_and_publish(now)
    assert leases.begin(fabric.id, token, now, "host:1/abc").outcome is leases.BeginOutcome.STARTED
    _vanish(fabric.id, token)

    assert dispatch_due_fabrics(_after_grace(now))["claims_stranded"] == 0
    fabric.refresh_from_db()
    assert (fabric.sync_status, fabric.lease_token) == (SyncStatus.SYNCING, token)


def test_when_the_broker_cannot_be_read_every_claim_is_kept(settings):
    now = timezone.now()
    fabric, token = _claim_and_publish(now)
    _vanish(fabric.id, token)
    client = broker_client()
    assert client is not None
    client.rpush(settings.SYNC_QUEUE, "not json")  # a message nobody can parse

    try:
        assert broker_inventory.stranded({(fabric.id, token)}, _after_grace(now)) == set()
    finally:
        client.lrem(settings.SYNC_QUEUE, 0, "not json")
    settings.CELERY_BROKER_URL = "memory://"
    assert broker_inventory.stranded({(fabric.id, token)}, _after_grace(now)) == set()
    assert claim_markers.lost([token]) == set()
