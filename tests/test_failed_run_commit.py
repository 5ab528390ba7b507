"""A failed run records the commit it failed on, so an operator can tell which commit broke a fabric (issue 12).

Real Git repositories, ``run_sync`` called directly (no Celery). Each failure here
happens after ``git ls-remote`` named the branch's commit: the run says which one,
and the admin shows it where it shows every run's commit.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError
from django.urls import reverse
from django.utils import timezone
from freezegun import freeze_time

from sync import leases, runner
from sync.errors import PermanentSyncError, TransientSyncError
from sync.models import Fabric, FabricCluster, RunStatus, SyncRun, SyncStatus
from sync.runner import run_sync
from tests.factories import make_fabric
from tests.gitrepo import GitRepo, manifest
from tests.livefabric import make_credential

pytestmark = pytest.mark.django_db


def sync_now(fabric: Fabric):
    now = timezone.now()
    token = leases.claim_one(fabric.id, now)
    assert token is not None
    assert leases.begin(fabric.id, token, now, "test").outcome is leases.BeginOutcome.STARTED
    return run_sync(fabric.id, token, trigger="manual", worker="test")


def last_run(fabric: Fabric) -> SyncRun:
    return SyncRun.objects.filter(fabric=fabric).order_by("-started_at", "-id").first()  # type: ignore[return-value]


@pytest.fixture
def synced(git_repo):
    """A fabric in sync with its repository's first (good) commit."""
    repo: GitRepo = git_repo()
    good = repo.with_switches(2)
    fabric = make_fabric(repo.url)
    sync_now(fabric)
    fabric.refresh_from_db()
    assert fabric.current_commit == good
    return fabric, repo, good


def test_a_parse_error_records_the_commit_that_broke_the_fabric(synced):
    fabric, repo, good = synced
    repo.write("manifests/broken.yaml", "kind: [unclosed\n")
    bad = repo.commit("a broken manifest")
    with pytest.raises(PermanentSyncError, match=r"broken\.yaml"):
        sync_now(fabric)
    run = last_run(fabric)
    assert (run.status, run.commit) == (RunStatus.FAILED, bad)
    fabric.refresh_from_db()
    # The fabric still runs the good commit; only the failed run names the bad one.
    assert (fabric.sync_status, fabric.current_commit) == (SyncStatus.ERROR, good)


def test_a_validation_error_records_the_commit(synced):
    fabric, repo, _good = synced
    repo.write("manifests/bad-name.yaml", manifest("Switch", "Not_A_DNS_Name"))
    bad = repo.commit("a name Kubernetes refuses")
    with pytest.raises(PermanentSyncError, match="is not valid"):
        sync_now(fabric)
    assert (last_run(fabric).status, last_run(fabric).commit) == (RunStatus.FAILED, bad)


def test_a_commit_without_the_manifest_folder_is_recorded_on_its_failed_run(synced):
    fabric, repo, _good = synced
    repo.git("rm", "-r", "--quiet", "manifests")
    bad = repo.commit("manifests moved away")
    with pytest.raises(PermanentSyncError, match="folder 'manifests' not found"):
        sync_now(fabric)
    assert (last_run(fabric).status, last_run(fabric).commit) == (RunStatus.FAILED, bad)


def test_the_soft_time_limit_after_the_fetch_records_the_commit(synced, monkeypatch):
    fabric, repo, _good = synced
    new = repo.with_switches(3)

    def slow_parse(blobs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(runner, "parse_manifests", slow_parse)
    with pytest.raises(TransientSyncError, match="soft time limit"):
        sync_now(fabric)
    run = last_run(fabric)
    assert (run.status, run.commit, run.error_class) == (RunStatus.FAILED, new, "TransientSyncError")


def test_a_cluster_step_failure_records_the_commit(synced, monkeypatch):
    fabric, repo, _good = synced
    FabricCluster.objects.create(fabric=fabric, server_url="https://127.0.0.1:1", token=make_credential("t"))
    new = repo.with_switches(4)

    def live_step_fails(*args, **kwargs):
        raise DatabaseError("could not store the drift")  # the live step lets database errors through

    monkeypatch.setattr(runner, "run_live_step", live_step_fails)
    with pytest.raises(TransientSyncError, match="could not store the drift"):
        sync_now(fabric)
    assert (last_run(fabric).status, last_run(fabric).commit) == (RunStatus.FAILED, new)


def test_a_worker_killed_after_the_fetch_leaves_a_lost_run_naming_the_commit(synced, monkeypatch):
    fabric, repo, _good = synced
    new = repo.with_switches(5)
    seen_in_database: list[str] = []

    def killed(blobs):
        # What another process (the reaper, the admin) can read while the sync runs.
        seen_in_database.append(SyncRun.objects.get(fabric=fabric, status=RunStatus.RUNNING).commit)
        raise SystemExit("SIGKILL")  # nothing in the runner handles it, as nothing survives a kill

    monkeypatch.setattr(runner, "parse_manifests", killed)
    with pytest.raises(SystemExit):
        sync_now(fabric)
    assert seen_in_database == [new]
    with freeze_time(timezone.now() + timedelta(seconds=settings.SYNC_LEASE_SECONDS + 1)):
        assert leases.reap_expired(timezone.now())["runs_lost"] == 1
    assert (last_run(fabric).status, last_run(fabric).commit) == (RunStatus.LOST, new)


def test_a_failure_before_the_commit_is_known_records_none(git_repo):
    repo = git_repo()
    repo.with_switches(1)
    fabric = make_fabric(repo.url, git_branch="release")
    with pytest.raises(PermanentSyncError, match="branch 'release' not found"):
        sync_now(fabric)
    assert (last_run(fabric).status, last_run(fabric).commit) == (RunStatus.FAILED, "")


def test_the_admin_shows_the_commit_of_a_failed_run(synced, admin_client):
    fabric, repo, good = synced
    repo.write("manifests/broken.yaml", "kind: [unclosed\n")
    bad = repo.commit("a broken manifest")
    with pytest.raises(PermanentSyncError):
        sync_now(fabric)
    changelist = admin_client.get(reverse("admin:sync_syncrun_changelist"), {"status": RunStatus.FAILED})
    assert changelist.status_code == 200
    assert f"<code>{bad[:10]}</code>" in changelist.content.decode()
    assert good[:10] not in changelist.content.decode()  # filtered to failures: only the bad commit
    fabric_page = admin_client.get(reverse("admin:sync_fabric_change", args=[fabric.id]))
    assert f"<code>{bad[:10]}</code>" in fabric_page.content.decode()  # the inline of recent runs
