"""The tick, end to end: real Git repositories, real Redis, a real worker process."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from project.tick import run_tick
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from tests.conftest import wait_for
from tests.factories import make_fabric

pytestmark = pytest.mark.worker


def _all_settled(*names: str) -> bool:
    statuses = dict(Fabric.objects.filter(name__in=names).values_list("name", "sync_status"))
    return all(statuses[n] not in (SyncStatus.QUEUED, SyncStatus.SYNCING, SyncStatus.NEVER_SYNCED) for n in names)


def test_a_tick_syncs_every_due_fabric_and_isolates_the_broken_one(celery_worker, git_repo):
    good = []
    for i in range(3):
        repo = git_repo(f"good{i}")
        repo.with_switches(2 + i)
        good.append(make_fabric(repo.url, name=f"good-{i}"))
    broken_repo = git_repo("broken")
    broken_repo.write("manifests/bad.yaml", "apiVersion: v1\nkind: Switch\nmetadata:\n  name: leaf1\n  bad: a: b\n")
    broken_repo.commit()
    broken = make_fabric(broken_repo.url, name="broken")

    summary = run_tick()

    assert summary["metrics"]["fabrics_due"] == 4
    assert summary["metrics"]["fabrics_dispatched"] == 4
    names = [f.name for f in good] + ["broken"]
    wait_for(lambda: _all_settled(*names), timeout=60, message=celery_worker.log())
    for i, fabric in enumerate(good):
        fabric.refresh_from_db()
        assert fabric.sync_status == SyncStatus.IN_SYNC
        assert fabric.resources.count() == 2 + i
        assert fabric.last_sync is not None
    broken.refresh_from_db()
    assert broken.sync_status == SyncStatus.ERROR
    assert broken.last_error.startswith("manifests/bad.yaml:5:")
    assert broken.consecutive_failures == 1
    assert broken.next_sync_at > timezone.now() + timedelta(seconds=300)
    run = SyncRun.objects.get(fabric=broken)
    assert run.status == RunStatus.FAILED
    assert run.error_class == "ManifestError"
