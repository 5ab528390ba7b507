"""One sync through ``run_sync`` against real Git repositories (no Celery involved)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from freezegun import freeze_time

from core.models import Credential
from sync import leases
from sync.errors import PermanentSyncError, TransientSyncError
from sync.models import Fabric, Resource, RunStatus, SyncRun, SyncStatus
from sync.runner import LeaseLost, run_sync
from tests.factories import make_fabric
from tests.gitrepo import manifest

pytestmark = pytest.mark.django_db


def sync_now(fabric: Fabric, may_retry: bool = False):
    now = timezone.now()
    token = leases.claim_one(fabric.id, now)
    assert token is not None
    assert leases.begin(fabric.id, token, now, "test").outcome is leases.BeginOutcome.STARTED
    return run_sync(fabric.id, token, trigger="manual", worker="test", may_retry=may_retry)


def test_a_first_sync_stores_every_resource_and_the_commit(git_repo):
    repo = git_repo()
    commit = repo.with_switches(3)
    fabric = make_fabric(repo.url)
    due_at = fabric.next_sync_at
    result = sync_now(fabric)
    fabric.refresh_from_db()
    assert (result.counts.created, result.counts.total) == (3, 3)
    assert fabric.sync_status == SyncStatus.IN_SYNC
    assert fabric.current_commit == commit
    assert fabric.lease_token == ""
    assert fabric.lease_expires_at is None
    assert fabric.last_sync is not None
    # One interval after it was due, not after it finished: the schedule keeps its period.
    assert fabric.next_sync_at == due_at + timedelta(seconds=300)
    assert sorted(fabric.resources.values_list("name", flat=True)) == ["leaf0", "leaf1", "leaf2"]
    run = SyncRun.objects.get(fabric=fabric)
    assert (run.status, run.commit, run.resources_created) == (RunStatus.SUCCESS, commit, 3)


def test_a_new_commit_upserts_changed_and_deletes_removed_resources(git_repo):
    repo = git_repo()
    repo.write("manifests/a.yaml", manifest("Switch", "keep", asn=1) + "---\n" + manifest("Switch", "change", asn=1))
    repo.write("manifests/b.yml", manifest("VLAN", "gone", id=10))
    repo.commit()
    fabric = make_fabric(repo.url)
    sync_now(fabric)
    untouched_id = Resource.objects.get(name="keep").id

    repo.write("manifests/a.yaml", manifest("Switch", "keep", asn=1) + "---\n" + manifest("Switch", "change", asn=2))
    repo.remove("manifests/b.yml")
    repo.write("manifests/sub/c.yaml", manifest("VLAN", "new", namespace="dc1", id=20))
    second = repo.commit()
    result = sync_now(fabric)

    assert (result.counts.created, result.counts.updated, result.counts.deleted) == (1, 1, 1)
    assert Resource.objects.get(name="change").spec["spec"]["asn"] == 2
    assert Resource.objects.get(name="keep").id == untouched_id
    assert Resource.objects.get(name="new").source_file == "manifests/sub/c.yaml"
    assert not Resource.objects.filter(name="gone").exists()
    fabric.refresh_from_db()
    assert fabric.current_commit == second


def test_the_same_commit_finishes_fast_as_unchanged(git_repo):
    repo = git_repo()
    repo.with_switches(2)
    fabric = make_fabric(repo.url)
    sync_now(fabric)
    result = sync_now(fabric)
    assert result.status == RunStatus.UNCHANGED
    assert result.resources == 2
    assert SyncRun.objects.filter(fabric=fabric, status=RunStatus.UNCHANGED).count() == 1


def test_a_changed_manifest_folder_forces_a_full_sync_on_the_same_commit(git_repo):
    repo = git_repo()
    repo.with_switches(2, folder="a")
    repo.with_switches(5, folder="b")
    fabric = make_fabric(repo.url, git_path="a")
    sync_now(fabric)
    Fabric.objects.filter(id=fabric.id).update(git_path="b")
    result = sync_now(fabric)
    assert result.status == RunStatus.SUCCESS
    assert result.resources == 5


def test_an_empty_git_path_reads_the_whole_repository(git_repo):
    repo = git_repo()
    repo.write("top.yaml", manifest("Switch", "top"))
    repo.write("deep/er/x.yml", manifest("Switch", "deep"))
    repo.write("README.md", "not a manifest")
    repo.commit()
    fabric = make_fabric(repo.url, git_path="")
    assert sync_now(fabric).resources == 2


def test_a_missing_branch_fails_at_once_with_a_clear_reason(git_repo):
    repo = git_repo()
    repo.with_switches(1)
    fabric = make_fabric(repo.url, git_branch="release")
    with pytest.raises(PermanentSyncError, match="branch 'release' not found"):
        sync_now(fabric, may_retry=True)
    fabric.refresh_from_db()
    assert fabric.sync_status == SyncStatus.ERROR
    assert fabric.consecutive_failures == 1
    assert SyncRun.objects.get(fabric=fabric).status == RunStatus.FAILED


def test_a_missing_manifest_folder_is_a_permanent_error(git_repo):
    repo = git_repo()
    repo.with_switches(1, folder="elsewhere")
    fabric = make_fabric(repo.url, git_path="manifests")
    with pytest.raises(PermanentSyncError, match="folder 'manifests' not found at commit"):
        sync_now(fabric)


def test_a_symlinked_manifest_is_refused(git_repo):
    repo = git_repo()
    repo.with_switches(1)
    (repo.path / "manifests" / "passwd.yaml").symlink_to("/etc/passwd")
    repo.commit()
    fabric = make_fabric(repo.url)
    with pytest.raises(PermanentSyncError, match=r"manifests/passwd\.yaml: symbolic links are refused"):
        sync_now(fabric)


def test_a_symlinked_manifest_folder_is_refused(git_repo):
    repo = git_repo()
    repo.with_switches(1, folder="real")
    (repo.path / "manifests").symlink_to("real")
    repo.commit()
    fabric = make_fabric(repo.url, git_path="manifests")
    with pytest.raises(PermanentSyncError, match="is not a folder"):
        sync_now(fabric)


def test_an_oversized_manifest_is_refused_with_its_size_and_the_limit(git_repo, settings):
    settings.SYNC_MAX_MANIFEST_BYTES = 1000
    repo = git_repo()
    repo.write("manifests/big.yaml", manifest("Switch", "big", blob="x" * 2000))
    repo.commit()
    fabric = make_fabric(repo.url)
    with pytest.raises(
        PermanentSyncError, match=r"manifests/big\.yaml: 2,\d{3} bytes is over the manifest size limit of 1,000"
    ):
        sync_now(fabric)


def test_a_failed_sync_keeps_the_previous_resources(git_repo):
    repo = git_repo()
    repo.with_switches(2)
    fabric = make_fabric(repo.url)
    sync_now(fabric)
    repo.write("manifests/broken.yaml", "kind: [\n")
    repo.commit()
    with pytest.raises(PermanentSyncError):
        sync_now(fabric)
    assert fabric.resources.count() == 2


def test_an_unreachable_remote_is_transient_and_its_credentials_never_stored():
    credential = Credential(name="deploy", username="deploy")
    credential.set_secret("s3cr3t-token")
    credential.save()
    fabric = make_fabric("https://127.0.0.1:9/acme/fabric.git", git_credential=credential)
    with pytest.raises(TransientSyncError) as caught:
        sync_now(fabric)
    fabric.refresh_from_db()
    run = SyncRun.objects.get(fabric=fabric)
    for text in (str(caught.value), fabric.last_error, run.error_message):
        assert "s3cr3t-token" not in text
        assert text
    assert "127.0.0.1" in run.error_message  # still says which remote failed


def test_a_transient_failure_that_may_retry_keeps_the_lease_for_the_retry():
    fabric = make_fabric("https://127.0.0.1:9/acme/fabric.git")
    with pytest.raises(TransientSyncError):
        sync_now(fabric, may_retry=True)
    fabric.refresh_from_db()
    assert fabric.sync_status == SyncStatus.SYNCING  # the task moves it to QUEUED for its retry
    assert fabric.lease_token
    assert fabric.consecutive_failures == 0
    assert SyncRun.objects.get(fabric=fabric).status == RunStatus.RETRYING


def test_a_fabric_is_suspended_after_the_configured_number_of_failures(git_repo, settings):
    settings.SYNC_SUSPEND_AFTER_FAILURES = 3
    repo = git_repo()
    repo.write("manifests/x.yaml", "apiVersion: v1\n")
    repo.commit()
    fabric = make_fabric(repo.url)
    for _ in range(3):
        with pytest.raises(PermanentSyncError):
            sync_now(fabric)
    fabric.refresh_from_db()
    assert fabric.sync_status == SyncStatus.SUSPENDED
    assert fabric.last_error.startswith("Suspended after 3 consecutive failures; last: manifests/x.yaml:1")
    assert not leases.due_fabrics(timezone.now() + timedelta(days=30)).filter(id=fabric.id).exists()


def test_a_sync_whose_lease_was_taken_over_records_nothing(git_repo):
    repo = git_repo()
    repo.with_switches(2)
    fabric = make_fabric(repo.url)
    now = timezone.now()
    token = leases.claim_one(fabric.id, now)
    assert token is not None
    leases.begin(fabric.id, token, now, "slow worker")
    Fabric.objects.filter(id=fabric.id).update(lease_token="someone-else")
    with pytest.raises(LeaseLost):
        run_sync(fabric.id, token, trigger="manual", worker="slow worker")
    assert fabric.resources.count() == 0
    assert SyncRun.objects.get(fabric=fabric).status == RunStatus.LOST


def test_time_travel_makes_a_synced_fabric_due_again(git_repo):
    repo = git_repo()
    repo.with_switches(1)
    with freeze_time("2026-11-21 12:00:00"):
        fabric = make_fabric(repo.url)
        sync_now(fabric)
    with freeze_time("2026-11-21 12:04:59"):
        assert not leases.due_fabrics(timezone.now()).filter(id=fabric.id).exists()
    with freeze_time("2026-11-21 12:05:00"):
        assert leases.due_fabrics(timezone.now()).filter(id=fabric.id).exists()


def test_a_local_path_outside_the_allowed_roots_is_refused_at_sync_time_before_git_runs(
    git_repo, settings, tmp_path, monkeypatch
):
    """The admin checked the path when it was saved; the allowed roots changed since."""
    repo = git_repo()
    repo.with_switches(1)
    fabric = make_fabric(repo.url)
    settings.SYNC_ALLOWED_LOCAL_ROOTS = [str(tmp_path / "elsewhere")]
    git_calls: list[object] = []
    monkeypatch.setattr("sync.sources.git.subprocess.run", lambda *args, **kwargs: git_calls.append(args))
    with pytest.raises(PermanentSyncError, match=r"Git source refused: Local Git path .* is outside the allowed roots"):
        sync_now(fabric, may_retry=True)
    assert git_calls == []
    fabric.refresh_from_db()
    assert fabric.sync_status == SyncStatus.ERROR
    assert fabric.consecutive_failures == 1
    assert "SYNC_ALLOWED_LOCAL_ROOTS" in fabric.last_error
    assert SyncRun.objects.get(fabric=fabric).status == RunStatus.FAILED


def test_a_lock_left_by_a_git_killed_at_its_timeout_does_not_block_the_next_fetch(git_repo, settings):
    """git killed mid-fetch (its timeout, a soft time limit) leaves shallow.lock behind."""
    repo = git_repo()
    repo.with_switches(1)
    fabric = make_fabric(repo.url)
    sync_now(fabric)
    (cache,) = settings.SYNC_GIT_CACHE_DIR.glob(f"{fabric.id}-*")
    (cache / "shallow.lock").write_text("")
    (cache / "refs" / "fabric" / "main.lock").write_text("")
    second = repo.with_switches(2)
    result = sync_now(fabric)
    assert (result.status, result.commit) == (RunStatus.SUCCESS, second)
