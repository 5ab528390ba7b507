"""Leases: claims are atomic, expire, and are reaped so nothing stays stuck."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from sync import leases
from sync.leases import BeginOutcome
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from tests.conftest import is_postgres, require
from tests.factories import make_fabric


@pytest.mark.django_db
def test_claiming_takes_every_due_fabric_and_skips_the_rest():
    now = timezone.now()
    due = [make_fabric(now=now - timedelta(seconds=1)) for _ in range(3)]
    make_fabric(now=now + timedelta(seconds=1))  # not yet due
    make_fabric(now=now, sync_enabled=False)
    make_fabric(now=now, sync_status=SyncStatus.SUSPENDED)
    make_fabric(now=now, lease_expires_at=now + timedelta(seconds=30), sync_status=SyncStatus.SYNCING)

    claim = leases.claim_due(now)

    assert sorted(claim.fabric_ids) == sorted(f.id for f in due)
    assert claim.due == 3
    assert set(Fabric.objects.filter(id__in=claim.fabric_ids).values_list("sync_status", flat=True)) == {"queued"}
    assert leases.claim_due(now).fabric_ids == []  # claimed fabrics are no longer due


@pytest.mark.django_db
@pytest.mark.parametrize("fabrics", [5, 200])
def test_a_claim_issues_the_same_number_of_queries_for_5_or_200_fabrics(fabrics, django_assert_num_queries):
    now = timezone.now()
    Fabric.objects.bulk_create(
        Fabric(name=f"bulk-{i}", git_url="/x", next_sync_at=now - timedelta(seconds=5)) for i in range(fabrics)
    )
    with django_assert_num_queries(3):
        claim = leases.claim_due(now)
    assert len(claim.fabric_ids) == fabrics


@pytest.mark.django_db
def test_a_manual_claim_is_refused_while_a_lease_is_held():
    now = timezone.now()
    fabric = make_fabric(now=now + timedelta(hours=1))
    token = leases.claim_one(fabric.id, now)
    assert token
    assert leases.claim_one(fabric.id, now) is None
    assert leases.claim_one(fabric.id, now + timedelta(seconds=901)) is not None  # the queue lease expired


@pytest.mark.django_db
def test_begin_with_a_stale_token_is_superseded():
    now = timezone.now()
    fabric = make_fabric(now=now)
    old = leases.claim_due(now).token
    Fabric.objects.filter(id=fabric.id).update(lease_expires_at=now)
    leases.claim_due(now)
    assert leases.begin(fabric.id, old, now, "w").outcome is BeginOutcome.SUPERSEDED


@pytest.mark.django_db
def test_a_second_delivery_waits_while_the_first_may_still_be_running(settings):
    settings.SYNC_LEASE_SECONDS = 60
    now = timezone.now()
    fabric = make_fabric(now=now)
    token = leases.claim_due(now).token
    assert leases.begin(fabric.id, token, now, "w1").outcome is BeginOutcome.STARTED
    held = leases.begin(fabric.id, token, now + timedelta(seconds=10), "w2")
    assert held.outcome is BeginOutcome.HELD
    assert held.retry_in == pytest.approx(51)


@pytest.mark.django_db
def test_a_delivery_takes_over_an_expired_lease_and_gives_up_after_too_many(settings):
    settings.SYNC_LEASE_SECONDS = 60
    settings.SYNC_MAX_DELIVERIES = 3
    now = timezone.now()
    fabric = make_fabric(now=now)
    token = leases.claim_due(now).token
    outcomes = []
    for attempt in range(4):
        at = now + timedelta(seconds=61 * attempt)
        outcomes.append(leases.begin(fabric.id, token, at, f"w{attempt}").outcome)
    assert outcomes == [BeginOutcome.STARTED, BeginOutcome.STARTED, BeginOutcome.STARTED, BeginOutcome.GAVE_UP]


@pytest.mark.django_db
def test_reaping_marks_dead_syncs_lost_and_makes_the_fabric_due_at_once(settings):
    settings.SYNC_LEASE_SECONDS = 60
    now = timezone.now()
    fabric = make_fabric(now=now)
    token = leases.claim_due(now).token
    leases.begin(fabric.id, token, now, "doomed")
    run = SyncRun.objects.create(fabric=fabric, trigger="schedule", started_at=now, lease_token=token)

    assert leases.reap_expired(now + timedelta(seconds=59)) == {"leases_reaped": 0, "runs_lost": 0}
    later = now + timedelta(seconds=60)
    assert leases.reap_expired(later) == {"leases_reaped": 1, "runs_lost": 1}

    fabric.refresh_from_db()
    run.refresh_from_db()
    assert run.status == RunStatus.LOST
    assert fabric.sync_status == SyncStatus.ERROR
    assert fabric.lease_token == ""
    assert fabric.consecutive_failures == 1
    assert "worker running it died" in fabric.last_error
    assert leases.due_fabrics(later).filter(id=fabric.id).exists()


@pytest.mark.django_db
def test_reaping_an_unconsumed_claim_restores_the_previous_status_without_a_failure(settings):
    now = timezone.now()
    fabric = make_fabric(now=now, last_sync=now - timedelta(hours=1), sync_status=SyncStatus.IN_SYNC)
    leases.claim_due(now)
    leases.reap_expired(now + timedelta(seconds=settings.SYNC_QUEUE_LEASE_SECONDS))
    fabric.refresh_from_db()
    assert (fabric.sync_status, fabric.consecutive_failures, fabric.lease_token) == (SyncStatus.IN_SYNC, 0, "")


@pytest.mark.django_db
def test_releasing_an_undispatched_claim_returns_it_to_never_synced():
    now = timezone.now()
    fabric = make_fabric(now=now)
    claim = leases.claim_due(now)
    assert leases.release(claim.fabric_ids, claim.token) == 1
    fabric.refresh_from_db()
    assert fabric.sync_status == SyncStatus.NEVER_SYNCED
    assert leases.due_fabrics(now).filter(id=fabric.id).exists()


@pytest.mark.django_db(transaction=True)
def test_many_concurrent_claimers_on_postgresql_claim_each_fabric_exactly_once():
    """16 threads, each with its own PostgreSQL connection, claim 400 due fabrics at the same instant."""
    require(is_postgres(), "lease races need PostgreSQL (set DATABASE_URL)")
    now = timezone.now()
    Fabric.objects.bulk_create(
        Fabric(name=f"race-{i}", git_url="/x", next_sync_at=now - timedelta(seconds=1)) for i in range(400)
    )
    start = threading.Barrier(16)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def claimer() -> None:
        try:
            start.wait()
            for _ in range(3):  # several rounds each, to overlap with the others' updates
                results.append(leases.claim_due(now).fabric_ids)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=claimer) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    claimed = [fabric_id for ids in results for fabric_id in ids]
    assert len(claimed) == 400
    assert len(set(claimed)) == 400
    assert Fabric.objects.filter(sync_status=SyncStatus.QUEUED).count() == 400


@pytest.mark.django_db
def test_reaping_the_last_allowed_failure_suspends_the_fabric_and_says_why(settings):
    settings.SYNC_LEASE_SECONDS = 60
    settings.SYNC_SUSPEND_AFTER_FAILURES = 3
    now = timezone.now()
    fabric = make_fabric(now=now, consecutive_failures=2, sync_status=SyncStatus.ERROR)
    token = leases.claim_due(now).token
    leases.begin(fabric.id, token, now, "doomed")
    leases.reap_expired(now + timedelta(seconds=60))
    fabric.refresh_from_db()
    assert fabric.sync_status == SyncStatus.SUSPENDED
    assert fabric.consecutive_failures == 3
    assert fabric.last_error.startswith("Suspended after 3 or more consecutive failures; last: Sync did not finish")


@pytest.mark.django_db
def test_the_poison_guard_gives_up_with_backoff_when_the_reaper_redispatches_a_dying_sync(settings):
    """Issue 10, item 6: the reaper used to win the race against the HELD redelivery, and
    the next claim reset the death count, so a sync that kills its worker was retried
    until suspension (10 failures) instead of giving up after SYNC_MAX_DELIVERIES."""
    settings.SYNC_LEASE_SECONDS = 60
    settings.SYNC_MAX_DELIVERIES = 3
    settings.SYNC_SUSPEND_AFTER_FAILURES = 10
    now = timezone.now()
    fabric = make_fabric(now=now, sync_interval=300)
    for death in range(1, 4):
        claim = leases.claim_due(now)
        assert claim.fabric_ids == [fabric.id], f"death {death}: the fabric should be due again"
        assert leases.begin(fabric.id, claim.token, now, f"w{death}").outcome is BeginOutcome.STARTED
        now += timedelta(seconds=61)  # the worker died: its lease expires
        leases.reap_expired(now)
        fabric.refresh_from_db()
        if death < 3:
            assert fabric.lease_deliveries == death
            assert fabric.next_sync_at <= now  # redone at once
    assert fabric.sync_status == SyncStatus.ERROR
    assert fabric.last_error == "gave up after 3 deliveries whose worker died mid-sync (poison message?)"
    assert fabric.consecutive_failures == 3
    assert fabric.next_sync_at >= now + timedelta(seconds=2400)  # the failure backoff, not "due now"
    assert fabric.lease_deliveries == 0
    assert not leases.claim_due(now).fabric_ids
