"""A retry that cannot be published gives its claim back instead of waiting for the reaper.

Out of file descriptors, a pool process keeps its open database connection but cannot
open a socket to the broker, so Celery drops the retry (``Reject(requeue=False)``). The
chaos test (``tests/chaos/test_resources.py``) does that for real with ``prlimit(2)``;
here the claim's bookkeeping is checked on its own.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.exceptions import Reject
from django.utils import timezone

from sync import leases, tasks
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from tests.factories import make_fabric


def begun(now, **fields):
    fabric = make_fabric(now=now, **fields)
    token = leases.claim_due(now).token
    leases.begin(fabric.id, token, now, "host:1/abc")
    run = SyncRun.objects.create(
        fabric=fabric, trigger="schedule", started_at=now, lease_token=token, worker="host:1/abc"
    )
    return fabric, token, run


@pytest.mark.django_db
def test_a_given_back_claim_is_due_at_once_with_no_death_or_failure_counted(settings):
    now = timezone.now()
    fabric, token, run = begun(now, last_sync=now - timedelta(hours=1), sync_status=SyncStatus.IN_SYNC)
    Fabric.objects.filter(id=fabric.id).update(lease_deliveries=1)

    assert leases.give_back(fabric.id, token, "host:1/abc", now, "[Errno 24] Too many open files")

    fabric.refresh_from_db()
    run.refresh_from_db()
    assert (fabric.sync_status, fabric.consecutive_failures, fabric.lease_token) == (SyncStatus.IN_SYNC, 0, "")
    assert fabric.lease_deliveries == 1  # the poison guard is neither reset nor advanced
    assert leases.due_fabrics(now).filter(id=fabric.id).exists()
    assert run.status == RunStatus.RETRYING
    assert "could not publish its retry ([Errno 24] Too many open files)" in run.error_message
    # Nothing is left for the reaper: no LOST run, no failure, however late it looks.
    assert leases.reap_expired(now + timedelta(seconds=settings.SYNC_QUEUE_LEASE_SECONDS + 1))["runs_lost"] == 0


@pytest.mark.django_db
def test_only_the_attempt_holding_the_lease_can_give_it_back():
    now = timezone.now()
    fabric, token, run = begun(now)
    assert not leases.give_back(fabric.id, token, "another:2/def", now, "x")
    assert not leases.give_back(fabric.id, "stale-token", "host:1/abc", now, "x")
    fabric.refresh_from_db()
    run.refresh_from_db()
    assert (fabric.sync_status, fabric.lease_owner, run.status) == (SyncStatus.SYNCING, "host:1/abc", RunStatus.RUNNING)


@pytest.mark.django_db
def test_a_database_outage_whose_retry_cannot_be_published_gives_the_claim_back(monkeypatch):
    """The wiring in ``sync.tasks``: ``Task.retry`` raising what Celery raises when its
    publish fails (a stand-in; the real EMFILE is the chaos test's)."""
    now = timezone.now()
    fabric, token, run = begun(now)

    def unpublishable(**kwargs):
        raise Reject(OSError(24, "Too many open files"), requeue=False)

    monkeypatch.setattr(tasks.sync_fabric, "retry", unpublishable)
    result = tasks._retry_through_outage(tasks.sync_fabric, OSError(24, "Too many open files"), "abc", None, 0,
                                         (fabric.id, token, "host:1/abc"))  # fmt: skip
    assert isinstance(result, Reject)
    assert getattr(result, "requeue", None) is False  # the message is done with: the claim is the database's again
    fabric.refresh_from_db()
    run.refresh_from_db()
    assert (fabric.lease_token, fabric.consecutive_failures) == ("", 0)
    assert run.status == RunStatus.RETRYING
