"""What a sync leaves behind on a real worker: no result in Redis, one database connection kept."""

from __future__ import annotations

import pytest
import redis
from django.db import connection
from django.utils import timezone

from sync import leases
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from sync.tasks import sync_fabric
from tests.conftest import wait_for
from tests.factories import make_fabric

pytestmark = pytest.mark.worker


def settled(fabric: Fabric) -> bool:
    fabric.refresh_from_db()
    return fabric.sync_status not in (SyncStatus.QUEUED, SyncStatus.SYNCING, SyncStatus.NEVER_SYNCED)


def test_a_sync_through_a_worker_stores_no_result_in_redis(celery_worker, git_repo, settings):
    repo = git_repo()
    repo.with_switches(2)
    fabric = make_fabric(repo.url)
    results = redis.Redis.from_url(settings.CELERY_RESULT_BACKEND)
    task_ids = []
    for expected in (RunStatus.SUCCESS, RunStatus.UNCHANGED):
        token = leases.claim_one(fabric.id, timezone.now())
        assert token is not None
        task_ids.append(sync_fabric.apply_async((fabric.id, token, "manual")).id)
        wait_for(lambda: settled(fabric), message=celery_worker.log())
        assert SyncRun.objects.filter(fabric=fabric).latest("started_at").status == expected

    for task_id in task_ids:
        # Neither the outcome nor the STARTED state (track_started) is stored.
        assert not results.exists(f"celery-task-meta-{task_id}")


@pytest.mark.usefixtures("postgres_only")
def test_a_worker_keeps_its_database_connection_across_syncs(worker_factory, git_repo):
    worker = worker_factory(concurrency=1)
    repo = git_repo()
    repo.with_switches(1)
    fabric = make_fabric(repo.url)
    for _ in range(4):
        token = leases.claim_one(fabric.id, timezone.now())
        assert token is not None
        sync_fabric.apply_async((fabric.id, token, "manual"))
        wait_for(lambda: settled(fabric), message=worker.log())
    first_started = SyncRun.objects.filter(fabric=fabric).earliest("started_at").started_at

    with connection.cursor() as cursor:
        cursor.execute(
            "select count(*) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()"
            " and backend_start < %s",
            [first_started],
        )
        (kept,) = cursor.fetchone()
    # The pool process's connection, opened for the first sync, is still open after the
    # fourth (Celery's own fix-up would have closed it after every task).
    assert kept >= 1
