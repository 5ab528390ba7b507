"""``Fabric.failing_since``: set by the first failure of a streak, kept by later ones,
cleared by a success or a reset; what the admin sorts and the overview lists by."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta

import pytest
from django.apps import apps
from django.utils import timezone
from freezegun import freeze_time

from sync import leases, operations
from sync.errors import PermanentSyncError, TransientSyncError
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from tests.factories import make_fabric
from tests.test_sync_runner import sync_now

pytestmark = pytest.mark.django_db

NOON = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def failing_since(fabric: Fabric) -> datetime | None:
    fabric.refresh_from_db()
    return fabric.failing_since


def test_the_first_failure_sets_failing_since_later_ones_keep_it_and_a_success_clears_it(git_repo):
    repo = git_repo()
    repo.write("manifests/broken.yaml", "kind: [\n")
    repo.commit()
    fabric = make_fabric(repo.url)

    with freeze_time(NOON), pytest.raises(PermanentSyncError):
        sync_now(fabric)
    assert failing_since(fabric) == NOON  # the start of the failed attempt

    with freeze_time(NOON + timedelta(minutes=10)), pytest.raises(PermanentSyncError):
        sync_now(fabric)
    assert failing_since(fabric) == NOON
    assert fabric.consecutive_failures == 2

    repo.remove("manifests/broken.yaml")
    repo.with_switches(1)
    with freeze_time(NOON + timedelta(minutes=20)):
        sync_now(fabric)
    assert failing_since(fabric) is None
    assert fabric.sync_status == SyncStatus.IN_SYNC


def test_a_failure_that_will_be_retried_does_not_start_a_streak():
    fabric = make_fabric("https://127.0.0.1:9/acme/fabric.git")
    with pytest.raises(TransientSyncError):
        sync_now(fabric, may_retry=True)
    assert failing_since(fabric) is None


def test_the_reaper_starts_a_streak_with_the_dead_attempt_and_keeps_an_earlier_one(settings):
    settings.SYNC_LEASE_SECONDS = 60
    dies, already = make_fabric(now=NOON), make_fabric(now=NOON, consecutive_failures=1, failing_since=NOON)
    token = leases.claim_due(NOON).token
    started = NOON + timedelta(minutes=5)
    for fabric in (dies, already):
        leases.begin(fabric.id, token, started, "doomed")

    assert leases.reap_expired(started + timedelta(seconds=60))["leases_reaped"] == 2

    assert failing_since(dies) == started
    assert failing_since(already) == NOON
    assert (dies.consecutive_failures, already.consecutive_failures) == (1, 2)


def test_resetting_failures_ends_the_streak():
    fabric = make_fabric(sync_status=SyncStatus.ERROR, consecutive_failures=3, failing_since=NOON, last_error="x")
    assert operations.reset_failures(Fabric.objects.filter(id=fabric.id), NOON + timedelta(hours=1)) == 1
    assert failing_since(fabric) is None


def test_the_migration_dates_each_streak_by_its_first_failed_run_since_the_last_success():
    backfill = importlib.import_module("sync.migrations.0009_fabric_failing_since").backfill_failing_since
    now = timezone.now()
    failing = make_fabric(sync_status=SyncStatus.ERROR, consecutive_failures=2, last_sync=now - timedelta(hours=3))
    runs = [(RunStatus.FAILED, 200), (RunStatus.SUCCESS, 181), (RunStatus.FAILED, 42), (RunStatus.LOST, 5)]
    for status, minutes in runs:
        SyncRun.objects.create(
            fabric=failing, trigger="schedule", status=status, started_at=now - timedelta(minutes=minutes)
        )
    an_hour_ago = now - timedelta(hours=1)
    pruned = make_fabric(sync_status=SyncStatus.SUSPENDED, consecutive_failures=5, last_attempt_at=an_hour_ago)
    healthy = make_fabric(sync_status=SyncStatus.IN_SYNC, last_sync=now)

    backfill(apps, None)

    assert failing_since(failing) == now - timedelta(minutes=42)
    assert failing_since(pruned) == an_hour_ago  # its runs are gone: the last attempt
    assert failing_since(healthy) is None
