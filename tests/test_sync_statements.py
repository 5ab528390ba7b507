"""What one sync costs the database: statements counted with ``CaptureQueriesContext``."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from sync import leases
from sync.models import Fabric, RunStatus, SyncRun
from sync.runner import run_sync
from tests.factories import make_fabric

# Real transactions, as on a worker (inside a test transaction an atomic block would be a SAVEPOINT).
pytestmark = pytest.mark.django_db(transaction=True)


def claim(fabric: Fabric) -> str:
    token = leases.claim_one(fabric.id, timezone.now(), before_claim=lambda token, seconds: None)
    assert token is not None
    return token


def data_statements(queries: CaptureQueriesContext) -> list[str]:
    """The statements that read or write rows (not BEGIN, COMMIT or SET LOCAL)."""
    return [q["sql"] for q in queries.captured_queries if q["sql"].split()[0].upper() not in ("BEGIN", "COMMIT", "SET")]


def synced_fabric(git_repo) -> Fabric:
    repo = git_repo()
    repo.with_switches(2)
    fabric = make_fabric(repo.url)
    token = claim(fabric)
    leases.begin(fabric.id, token, timezone.now(), "first")
    run_sync(fabric.id, token, trigger="manual", worker="first")
    return fabric


def test_an_unchanged_sync_takes_five_statements_from_begin_to_outcome(git_repo):
    fabric = synced_fabric(git_repo)
    token = claim(fabric)

    with CaptureQueriesContext(connection) as queries:
        begun = leases.begin(fabric.id, token, timezone.now(), "second")
        result = run_sync(fabric.id, token, trigger="manual", worker="second")

    assert begun.outcome is leases.BeginOutcome.STARTED
    assert (result.status, result.resources) == (RunStatus.UNCHANGED, 2)
    logged = [q["sql"].split()[0].upper() for q in queries.captured_queries]
    # Django logs atomic()'s BEGIN and COMMIT; SET LOCAL makes a progress marker's commit
    # skip the WAL flush wait (sync.progress_commit).
    statements = [s for s in logged if s not in ("BEGIN", "COMMIT", "SET")]
    # begin: one UPDATE ... RETURNING; the fabric (with its resource count); the RUNNING
    # run; the fabric's outcome and the run's, in one transaction.
    assert statements == ["UPDATE", "SELECT", "INSERT", "UPDATE", "UPDATE"], [
        q["sql"][:100] for q in queries.captured_queries
    ]
    assert logged.count("COMMIT") <= 3  # begin's, the RUNNING run's and the outcome's transactions
    if connection.vendor == "postgresql":
        assert logged.count("SET") == 2  # only the two progress markers skip the flush wait
    run = SyncRun.objects.filter(fabric=fabric).latest("started_at")
    assert (run.status, run.resources_total, run.worker, run.finished_at is not None) == (
        RunStatus.UNCHANGED, 2, "second", True,
    )  # fmt: skip


def test_begin_is_one_statement_and_closes_a_dead_deliverys_run_only_when_there_is_one(git_repo):
    fabric = synced_fabric(git_repo)
    token = claim(fabric)
    with CaptureQueriesContext(connection) as clean:
        leases.begin(fabric.id, token, timezone.now(), "w1")
    assert len(data_statements(clean)) == 1

    # A delivery that died mid-sync left its run RUNNING under an expired lease.
    SyncRun.objects.create(fabric=fabric, trigger="manual", lease_token=token, worker="w1", started_at=timezone.now())
    Fabric.objects.filter(id=fabric.id).update(lease_expires_at=timezone.now())
    with CaptureQueriesContext(connection) as takeover:
        begun = leases.begin(fabric.id, token, timezone.now(), "w2")
    assert (begun.outcome, begun.deliveries) == (leases.BeginOutcome.STARTED, 1)
    assert len(data_statements(takeover)) == 2
    assert SyncRun.objects.get(fabric=fabric, worker="w1", status=RunStatus.LOST).error_class == "WorkerLost"


def test_a_begin_that_loses_still_tells_a_newer_claim_from_a_held_lease(git_repo):
    fabric = synced_fabric(git_repo)
    token = claim(fabric)
    assert leases.begin(fabric.id, token, timezone.now(), "w1").outcome is leases.BeginOutcome.STARTED
    held = leases.begin(fabric.id, token, timezone.now(), "w2")
    assert held.outcome is leases.BeginOutcome.HELD
    assert held.retry_in > 300
    assert leases.begin(fabric.id, "not-the-token", timezone.now(), "w3").outcome is leases.BeginOutcome.SUPERSEDED
