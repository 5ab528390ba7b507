"""Unchanged fabrics of a claimed chunk recorded in bulk (``sync.bulk_unchanged``), the rest per fabric."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.models import Credential
from sync import bulk_unchanged, leases
from sync.models import Fabric, FabricCluster, RunStatus, SyncRun, SyncStatus
from sync.runner import run_sync
from sync.sources.git import GitSource, source_fingerprint
from tests.conftest import wait_for
from tests.factories import make_fabric

# Real transactions, as on a worker (the bulk step's atomic block must really commit).
pytestmark = pytest.mark.django_db(transaction=True)

WORKER = "host:1/bulk-test"


def no_marker(token: str, seconds: float) -> None:
    return None


def first_sync(fabrics: list[Fabric]) -> None:
    """Each fabric synced once, one by one, as the per-fabric path does."""
    for fabric in fabrics:
        token = leases.claim_one(fabric.id, timezone.now(), before_claim=no_marker)
        assert token is not None
        assert leases.begin(fabric.id, token, timezone.now(), "first").outcome is leases.BeginOutcome.STARTED
        run_sync(fabric.id, token, trigger="schedule", worker="first")


def claim_all_due(now: datetime) -> leases.Claim:
    Fabric.objects.update(next_sync_at=now)
    return leases.claim_due(now, before_claim=no_marker)


class Dispatched(list[int]):
    def __call__(self, ids: list[int]) -> None:
        self.extend(ids)


def process(claim: leases.Claim, **kwargs: Any) -> tuple[bulk_unchanged.ChunkOutcome, Dispatched]:
    dispatched = Dispatched()
    outcome = bulk_unchanged.process_chunk(claim.fabric_ids, claim.token, "schedule", WORKER, dispatched, **kwargs)
    assert sorted([*outcome.recorded, *dispatched]) == sorted(claim.fabric_ids)  # every claim, exactly once
    return outcome, dispatched


def test_unchanged_fabrics_are_recorded_in_bulk_with_truthful_runs_and_their_next_due_time(git_repo):
    repos = [git_repo(f"bulk{i}") for i in range(2)]
    heads = [repo.with_switches(2 + i) for i, repo in enumerate(repos)]
    fabrics = [make_fabric(repos[i % 2].url, name=f"bulk-{i}") for i in range(4)]
    first_sync(fabrics)
    due = timezone.now()
    claim = claim_all_due(due)

    outcome, dispatched = process(claim)

    assert (sorted(outcome.recorded), dispatched, outcome.remotes_asked) == (sorted(f.id for f in fabrics), [], 2)
    for i, fabric in enumerate(fabrics):
        fabric.refresh_from_db()
        assert fabric.sync_status == SyncStatus.IN_SYNC
        assert (fabric.lease_token, fabric.lease_expires_at, fabric.lease_owner) == ("", None, "")
        assert fabric.next_sync_at == due + timedelta(seconds=300)  # one interval after it was due
        assert fabric.last_sync is not None
        assert fabric.last_sync >= due
        assert (fabric.consecutive_failures, fabric.failing_since, fabric.last_error) == (0, None, "")
        run = SyncRun.objects.filter(fabric=fabric).latest("started_at", "id")
        assert (run.status, run.trigger, run.commit, run.resources_total) == (
            RunStatus.UNCHANGED, "schedule", heads[i % 2], 2 + i % 2,
        )  # fmt: skip
        assert (run.lease_token, run.worker, run.attempt) == (claim.token, WORKER, 1)
        assert run.finished_at is not None
        assert run.started_at <= run.finished_at == fabric.last_sync
        assert run.duration_ms == int((run.finished_at - run.started_at).total_seconds() * 1000)
    assert not SyncRun.objects.filter(status=RunStatus.RUNNING).exists()


def test_a_changed_a_clustered_a_failing_a_moved_and_a_new_fabric_go_to_their_own_tasks(git_repo):
    still, moved = git_repo("still"), git_repo("moved")
    still.with_switches(1)
    moved.with_switches(1)
    unchanged = make_fabric(still.url, name="unchanged")
    changed = make_fabric(moved.url, name="changed")
    clustered = make_fabric(still.url, name="clustered")
    failing = make_fabric(still.url, name="failing")
    edited = make_fabric(still.url, name="edited")
    first_sync([unchanged, changed, clustered, failing, edited])
    never = make_fabric(still.url, name="never")
    moved.with_switches(2)
    token = Credential(name="k8s", kind=Credential.Kind.BEARER_TOKEN)
    token.set_secret("t")
    token.save()
    FabricCluster.objects.create(fabric=clustered, server_url="https://k8s.example.com", token=token)
    Fabric.objects.filter(id=failing.id).update(sync_status=SyncStatus.ERROR, consecutive_failures=1)
    Fabric.objects.filter(id=edited.id).update(git_path="elsewhere")  # a changed source: a full sync
    claim = claim_all_due(timezone.now())

    outcome, dispatched = process(claim)

    assert outcome.recorded == [unchanged.id]
    assert sorted(dispatched) == sorted(f.id for f in (changed, clustered, failing, edited, never))
    for fabric in (changed, clustered, failing, edited, never):
        fabric.refresh_from_db()
        assert (fabric.sync_status, fabric.lease_token) == (SyncStatus.QUEUED, claim.token)  # left for its task
    assert SyncRun.objects.filter(lease_token=claim.token).count() == 1


def test_a_claim_superseded_meanwhile_is_not_touched(git_repo):
    repo = git_repo()
    repo.with_switches(1)
    kept, superseded = make_fabric(repo.url, name="kept"), make_fabric(repo.url, name="superseded")
    first_sync([kept, superseded])
    claim = claim_all_due(timezone.now())

    def answer_after_a_newer_claim(source: GitSource, token: str) -> str:
        Fabric.objects.filter(id=superseded.id).update(lease_token="newer")
        return source.remote_commit()

    outcome, dispatched = process(claim, branch_commit=answer_after_a_newer_claim)

    assert (outcome.recorded, dispatched) == ([kept.id], [superseded.id])  # its task drops it: the token is gone
    superseded.refresh_from_db()
    assert (superseded.sync_status, superseded.lease_token) == (SyncStatus.QUEUED, "newer")
    assert not SyncRun.objects.filter(fabric=superseded, lease_token=claim.token).exists()


def test_a_due_time_moved_meanwhile_is_kept_so_the_next_tick_syncs_it_again(git_repo):
    repo = git_repo()
    repo.with_switches(1)
    fabric = make_fabric(repo.url)
    first_sync([fabric])
    claim = claim_all_due(timezone.now())
    pushed_at = timezone.now() + timedelta(seconds=1)

    def answer_then_a_push(source: GitSource, token: str) -> str:
        Fabric.objects.filter(id=fabric.id).update(next_sync_at=pushed_at)  # sync.push_sync
        return source.remote_commit()

    outcome, _ = process(claim, branch_commit=answer_then_a_push)

    assert outcome.recorded == [fabric.id]
    fabric.refresh_from_db()
    assert fabric.next_sync_at == pushed_at


def test_a_remote_that_fails_sends_only_its_own_fabrics_to_their_tasks(git_repo):
    good, bad = git_repo("good"), git_repo("bad")
    good.with_switches(1)
    bad.with_switches(1)
    fine, failing = make_fabric(good.url, name="fine"), make_fabric(bad.url, name="failing")
    first_sync([fine, failing])
    claim = claim_all_due(timezone.now())

    def refuse_one(source: GitSource, token: str) -> str:
        if source.url == bad.url:
            raise RuntimeError("the remote hung up")
        return source.remote_commit()

    outcome, dispatched = process(claim, branch_commit=refuse_one)

    assert (outcome.recorded, dispatched) == ([fine.id], [failing.id])


def test_a_failure_in_the_recording_step_falls_back_to_per_fabric_without_losing_or_doubling(git_repo, monkeypatch):
    repo = git_repo()
    repo.with_switches(2)
    fabrics = [make_fabric(repo.url, name=f"fallback-{i}") for i in range(3)]
    first_sync(fabrics)
    claim = claim_all_due(timezone.now())

    def broken_insert(*args: Any, **kwargs: Any) -> None:
        raise DatabaseError("disk full")

    with monkeypatch.context() as patched:
        patched.setattr(SyncRun.objects, "bulk_create", broken_insert)
        outcome, dispatched = process(claim)

    assert (outcome.recorded, sorted(dispatched)) == ([], sorted(f.id for f in fabrics))
    # The UPDATE before the failed INSERT was rolled back with it: every claim still waits for its task.
    assert Fabric.objects.filter(lease_token=claim.token, sync_status=SyncStatus.QUEUED).count() == 3
    assert not SyncRun.objects.filter(lease_token=claim.token).exists()
    for fabric_id in dispatched:  # the per-fabric tasks then record each exactly once
        assert leases.begin(fabric_id, claim.token, timezone.now(), "w").outcome is leases.BeginOutcome.STARTED
        assert run_sync(fabric_id, claim.token, trigger="schedule", worker="w").status == RunStatus.UNCHANGED
    assert SyncRun.objects.filter(lease_token=claim.token, status=RunStatus.UNCHANGED).count() == 3


def test_a_failure_while_selecting_sends_the_whole_chunk_to_per_fabric_tasks(git_repo, monkeypatch):
    repo = git_repo()
    repo.with_switches(1)
    fabrics = [make_fabric(repo.url, name=f"select-{i}") for i in range(2)]
    first_sync(fabrics)
    claim = claim_all_due(timezone.now())

    def broken_select(*args: Any) -> None:
        raise DatabaseError("connection reset")

    monkeypatch.setattr(bulk_unchanged, "select_candidates", broken_select)
    outcome, dispatched = process(claim)

    assert (outcome.recorded, dispatched) == ([], claim.fabric_ids)


def test_a_task_for_a_fabric_already_recorded_in_bulk_is_dropped(git_repo):
    """A redelivered chunk, or a fallback after a commit whose acknowledgement was lost,
    never records a fabric twice: its claim token is gone."""
    repo = git_repo()
    repo.with_switches(1)
    fabric = make_fabric(repo.url)
    first_sync([fabric])
    claim = claim_all_due(timezone.now())
    process(claim)

    assert leases.begin(fabric.id, claim.token, timezone.now(), "late").outcome is leases.BeginOutcome.SUPERSEDED
    again, dispatched = process(claim)  # the same chunk delivered again
    assert (again.recorded, dispatched) == ([], [fabric.id])
    assert SyncRun.objects.filter(lease_token=claim.token).count() == 1


@pytest.mark.parametrize("trigger", ["manual", "webhook", "compare"])
def test_other_triggers_send_every_fabric_to_its_task(git_repo, trigger):
    repo = git_repo()
    repo.with_switches(1)
    fabric = make_fabric(repo.url)
    first_sync([fabric])
    claim = claim_all_due(timezone.now())
    dispatched = Dispatched()

    outcome = bulk_unchanged.process_chunk(claim.fabric_ids, claim.token, trigger, WORKER, dispatched)

    assert (outcome.recorded, dispatched) == ([], [fabric.id])


def test_with_the_setting_off_every_fabric_goes_to_its_task(git_repo, settings):
    settings.SYNC_BULK_UNCHANGED = False
    repo = git_repo()
    repo.with_switches(1)
    fabric = make_fabric(repo.url)
    first_sync([fabric])
    claim = claim_all_due(timezone.now())

    outcome, dispatched = process(claim)

    assert (outcome.recorded, dispatched) == ([], [fabric.id])


def synced_rows(count: int, now: datetime) -> None:
    """``count`` fabrics as their last success left them (no git needed: the remote is stubbed)."""
    url = "/srv/repos/fabric"
    Fabric.objects.bulk_create(
        Fabric(
            name=f"rows-{count}-{i}",
            git_url=url,
            git_path="manifests",
            sync_status=SyncStatus.IN_SYNC,
            last_sync=now - timedelta(seconds=300),
            next_sync_at=now,
            current_commit="c" * 40,
            source_fingerprint=source_fingerprint(url, "main", "manifests"),
        )
        for i in range(count)
    )


def bulk_statements(count: int) -> list[str]:
    Fabric.objects.all().delete()
    now = timezone.now()
    synced_rows(count, now)
    claim = claim_all_due(now)
    with CaptureQueriesContext(connection) as queries:
        outcome, dispatched = process(claim, branch_commit=lambda source, token: "c" * 40)
    assert (len(outcome.recorded), dispatched) == (count, [])
    return [q["sql"].split()[0].upper() for q in queries.captured_queries]


def test_the_bulk_step_issues_the_same_statements_for_5_or_200_fabrics(postgres_only):
    five = bulk_statements(5)
    # The candidates with their resource count; then, in one transaction, the UPDATE ...
    # RETURNING and the runs' INSERT.
    assert [s for s in five if s not in ("SAVEPOINT", "RELEASE")] == ["SELECT", "BEGIN", "UPDATE", "INSERT", "COMMIT"]
    assert bulk_statements(200) == five


@pytest.mark.worker
def test_a_tick_records_unchanged_fabrics_in_bulk_on_a_real_worker(celery_worker, git_repo):
    repo = git_repo()
    head = repo.with_switches(2)
    fabrics = [make_fabric(repo.url, name=f"worker-bulk-{i}") for i in range(3)]
    from core.tick import run_tick

    run_tick()  # the first syncs: never synced, so each gets its own task
    wait_for(lambda: SyncRun.objects.filter(status=RunStatus.SUCCESS).count() == 3, message=celery_worker.log())
    wait_for(lambda: Fabric.objects.filter(sync_status=SyncStatus.IN_SYNC).count() == 3, message=celery_worker.log())

    # A tick publishes a fan-out only for more than SYNC_DISPATCH_CHUNK fabrics: publish one as it would.
    from sync.tasks import fan_out

    claim = claim_all_due(timezone.now())
    assert sorted(claim.fabric_ids) == sorted(f.id for f in fabrics)
    fan_out.apply_async((claim.fabric_ids, claim.token, "schedule"))

    unchanged = SyncRun.objects.filter(status=RunStatus.UNCHANGED)
    wait_for(lambda: unchanged.count() == 3, message=celery_worker.log())
    assert {run.commit for run in unchanged} == {head}
    assert all("/bulk-" in run.worker for run in unchanged)
    for fabric in fabrics:
        fabric.refresh_from_db()
        assert (fabric.sync_status, fabric.lease_token) == (SyncStatus.IN_SYNC, "")
