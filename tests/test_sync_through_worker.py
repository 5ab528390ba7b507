"""The tick, end to end: real Git repositories, real Redis, a real worker process."""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise

import pytest
from django.utils import timezone

from core.tick import TickSummary, run_tick
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from tests.conftest import wait_for
from tests.factories import make_fabric
from tests.test_sync_breakers import fresh_git_breakers  # noqa: F401  (a fixture)

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

    assert summary["metrics"]["sync"]["fabrics_due"] == 4
    assert summary["metrics"]["sync"]["fabrics_dispatched"] == 4
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


def _runs(fabric: Fabric) -> list[SyncRun]:
    return list(SyncRun.objects.filter(fabric=fabric).order_by("started_at", "id"))


def _settled(fabric: Fabric) -> bool:
    fabric.refresh_from_db()
    return fabric.sync_status not in (SyncStatus.QUEUED, SyncStatus.SYNCING, SyncStatus.NEVER_SYNCED)


def test_a_new_commit_is_picked_up_on_the_next_due_sync(celery_worker, git_repo):
    repo = git_repo()
    first = repo.with_switches(2)
    fabric = make_fabric(repo.url)
    run_tick()
    wait_for(lambda: _settled(fabric), message=celery_worker.log())
    assert fabric.current_commit == first

    second = repo.with_switches(5)
    assert run_tick()["metrics"]["sync"]["fabrics_due"] == 0  # not due yet: the commit waits for the interval
    summary = run_tick(timezone.now() + timedelta(seconds=301))
    assert summary["metrics"]["sync"]["fabrics_dispatched"] == 1
    wait_for(lambda: _settled(fabric) and fabric.current_commit == second, message=celery_worker.log())
    assert fabric.resources.count() == 5
    assert [r.status for r in _runs(fabric)] == [RunStatus.SUCCESS, RunStatus.SUCCESS]


def test_two_concurrent_ticks_dispatch_each_fabric_once(celery_worker, git_repo):
    import threading

    from django.db import connection

    fabrics = []
    for i in range(12):
        repo = git_repo(f"c{i}")
        repo.with_switches(1)
        fabrics.append(make_fabric(repo.url, name=f"conc-{i}"))
    summaries: list[TickSummary] = []
    barrier = threading.Barrier(2)

    def tick() -> None:
        barrier.wait()
        summaries.append(run_tick())
        connection.close()

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(s["metrics"]["sync"]["fabrics_dispatched"] for s in summaries) == 12
    wait_for(lambda: all(_settled(f) for f in fabrics), message=celery_worker.log())
    for fabric in fabrics:
        assert [r.status for r in _runs(fabric)] == [RunStatus.SUCCESS]


def big_repo(git_repo, files: int = 20, per_file: int = 250):
    """A repository whose sync takes a noticeable time (files x per_file resources)."""
    from tests.gitrepo import manifest

    repo = git_repo("big")
    for f in range(files):
        docs = "---\n".join(
            manifest("Port", f"port-{f}-{i}", asn=i, description=f"'uplink {i} of file {f}'") for i in range(per_file)
        )
        repo.write(f"manifests/ports-{f:02}.yaml", docs)
    repo.commit("big fabric")
    return repo


def test_a_tick_while_a_sync_is_running_does_not_dispatch_it_again(celery_worker, git_repo):
    fabric = make_fabric(big_repo(git_repo).url, name="big")
    assert run_tick()["metrics"]["sync"]["fabrics_dispatched"] == 1
    wait_for(lambda: Fabric.objects.filter(id=fabric.id, sync_status=SyncStatus.SYNCING).exists(), interval=0.01)

    # Even a tick that believes the interval has passed must not touch a leased fabric.
    later = run_tick(timezone.now() + timedelta(seconds=10))
    assert later["metrics"]["sync"]["fabrics_dispatched"] == 0

    wait_for(lambda: _settled(fabric), timeout=60, message=celery_worker.log())
    assert fabric.sync_status == SyncStatus.IN_SYNC
    assert [r.status for r in _runs(fabric)] == [RunStatus.SUCCESS]
    assert fabric.resources.count() == 5000


def test_a_worker_killed_mid_sync_is_recovered_within_the_lease_and_never_overlaps(worker_factory, git_repo):
    """SIGKILL the pool process running a sync. Celery requeues the message
    (acks_late + reject_on_worker_lost); the redelivery waits for the dead
    delivery's lease, takes over, and finishes. Runs never overlap in time."""
    import os
    import signal
    import time

    lease = 12
    worker = worker_factory(
        concurrency=1,
        SYNC_SOFT_TIME_LIMIT=str(lease - 4),
        SYNC_HARD_TIME_LIMIT=str(lease - 2),
        SYNC_LEASE_SECONDS=str(lease),
    )
    fabric = make_fabric(big_repo(git_repo).url, name="victim")
    run_tick()
    wait_for(lambda: SyncRun.objects.filter(fabric=fabric, status=RunStatus.RUNNING).exists(), interval=0.01)
    (child,) = worker.child_pids()
    os.kill(child, signal.SIGKILL)
    killed_at = time.monotonic()

    wait_for(lambda: _settled(fabric), timeout=lease + 30, message=worker.log())
    recovered_after = time.monotonic() - killed_at

    assert fabric.sync_status == SyncStatus.IN_SYNC, fabric.last_error
    assert fabric.resources.count() == 5000
    assert recovered_after < lease + 15, f"recovered after {recovered_after:.1f} s"
    runs = _runs(fabric)
    assert [r.status for r in runs] == [RunStatus.LOST, RunStatus.SUCCESS]
    for earlier, later_run in pairwise(runs):
        assert earlier.finished_at is not None
        assert earlier.finished_at <= later_run.started_at, "two syncs of one fabric overlapped"


@pytest.mark.usefixtures("fresh_git_breakers")  # its 4 failures must not add up with earlier tests' on 127.0.0.1
def test_a_transient_failure_retries_with_backoff_then_fails_truthfully(worker_factory, settings):
    """An unreachable remote: the worker retries (SYNC_MAX_RETRIES=3, backoff capped at 2 s
    for the test worker), keeps the lease meanwhile, then fails once and raises, so
    Celery's own task state is FAILURE."""
    from cryptography.fernet import Fernet

    from core.models import Credential
    from sync import leases
    from sync.tasks import sync_fabric

    key = Fernet.generate_key().decode()  # the worker must open the credential this process stores
    settings.CREDENTIALS_KEYS = [key]
    worker_factory(CREDENTIALS_KEYS=key)
    credential = Credential(name="deploy", username="deploy")
    credential.set_secret("hunter2")
    credential.save()
    fabric = make_fabric("https://127.0.0.1:9/acme/fabric.git", git_credential=credential)
    token = leases.claim_one(fabric.id, timezone.now())
    assert token is not None
    # A sync's result is not stored (ignore_result), but its failure is: read it by id.
    result = sync_fabric.AsyncResult(sync_fabric.apply_async((fabric.id, token, "manual")).id)
    with pytest.raises(Exception, match="git ls-remote failed") as caught:
        result.get(timeout=60)
    assert result.state == "FAILURE"
    assert type(caught.value).__name__ == "TransientSyncError"

    fabric.refresh_from_db()
    runs = _runs(fabric)
    assert [r.status for r in runs] == [RunStatus.RETRYING] * 3 + [RunStatus.FAILED]
    assert [r.attempt for r in runs] == [1, 2, 3, 4]
    assert fabric.sync_status == SyncStatus.ERROR
    assert fabric.consecutive_failures == 1  # one due sync failed, however many attempts it took
    assert fabric.lease_token == ""
    for text in [fabric.last_error, *(r.error_message for r in runs)]:
        assert "hunter2" not in text
