"""Database faults short of an outage: every connection reset, a row lock held by someone else,
slow queries.

Real: a private PostgreSQL cluster whose backends the test terminates with
``pg_terminate_backend`` (what a proxy restart, a failover or an idle-connection
killer does), whose fabric row it locks from another session, or whose every write to
the fabric and run tables it makes wait (a trigger calling ``pg_sleep``: what a
saturated disk, a checkpoint storm or a replica waiting on synchronous commit does to
each statement), real workers, real ticks. Bound: every fabric synced within 2 ticks; nothing blamed on a fabric (no run
LOST or FAILED, no failure counted); nothing synced twice at once or left stuck.
"""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connections
from django.utils import timezone

from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from tests.chaos.conftest import make_fabrics
from tests.chaos.invariants import assert_healthy_history, not_synced_since
from tests.chaos.scale import ChaosScale
from tests.chaos.stack import ChaosStack
from tests.conftest import wait_for
from tests.gitrepo import GitRepo, manifest

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]

DRAIN_SECONDS = 120


def _sync_within_two_ticks(stack: ChaosStack, since, drain: float) -> None:
    ticks = 0
    while not_synced_since(since) and ticks < 2:
        stack.tick()
        ticks += 1
        try:
            wait_for(lambda: not not_synced_since(since), timeout=drain)
        except AssertionError:
            continue
    missing = not_synced_since(since)
    assert not missing, f"not synced within 2 ticks: {missing}"


def _nothing_blamed() -> None:
    blamed = SyncRun.objects.filter(status__in=[RunStatus.LOST, RunStatus.FAILED])
    assert not blamed.exists(), list(blamed.values_list("fabric__name", "status", "error_message"))
    assert set(Fabric.objects.values_list("consecutive_failures", flat=True)) == {0}


def test_every_connection_reset_mid_backlog_blames_no_fabric(chaos_stack: ChaosStack, chaos_scale: ChaosScale) -> None:
    count = chaos_scale.n(40, minimum=12)
    make_fabrics(chaos_stack, count, files=40)
    chaos_stack.start_worker(concurrency=2)
    with chaos_stack.orm():
        since = timezone.now()
        chaos_stack.tick()
        wait_for(lambda: SyncRun.objects.filter(status=RunStatus.SUCCESS).count() >= 2, timeout=60)
        connections.close_all()
    resets = 0
    with chaos_stack.pg.connect() as admin:
        for _ in range(chaos_scale.rounds):
            row = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [chaos_stack.dbname],
            ).fetchone()
            resets += int(row[0]) if row else 0
            time.sleep(0.3)
    assert resets > 0, "no worker connection was open to reset: the test proves nothing"
    with chaos_stack.orm():
        _sync_within_two_ticks(chaos_stack, since, chaos_scale.drain(DRAIN_SECONDS))
        _nothing_blamed()
        assert_healthy_history()


def test_a_fabric_row_locked_by_another_session_delays_only_that_fabric(chaos_stack: ChaosStack) -> None:
    """Before SKIP LOCKED, the tick's claim UPDATE waited on the locked row and every
    fabric waited with it, for as long as the other session held its lock."""
    ids = make_fabrics(chaos_stack, 6)
    chaos_stack.start_worker(concurrency=2)
    holding, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with chaos_stack.pg.connect(chaos_stack.dbname) as other, other.transaction():
            other.execute("SELECT id FROM sync_fabric WHERE id = %s FOR UPDATE", [ids[0]])
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert holding.wait(10)
        with chaos_stack.orm():
            since = timezone.now()
            tick = chaos_stack.tick()
            assert tick["metrics"]["sync"]["fabrics_dispatched"] == 5, tick
            wait_for(lambda: not_synced_since(since) == ["chaos-00000"], timeout=DRAIN_SECONDS)
            connections.close_all()
    finally:
        release.set()
        holder.join()
    with chaos_stack.orm():
        _sync_within_two_ticks(chaos_stack, since, DRAIN_SECONDS)
        _nothing_blamed()
        assert Fabric.objects.get(id=ids[0]).sync_status == SyncStatus.IN_SYNC
        assert_healthy_history()


SLOW_WRITE_SECONDS = 0.5
SLOW_WRITES = """
CREATE FUNCTION chaos_slow_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(%s); RETURN NULL; END $$;
CREATE TRIGGER chaos_slow_fabric BEFORE INSERT OR UPDATE ON sync_fabric
    FOR EACH STATEMENT EXECUTE FUNCTION chaos_slow_write();
CREATE TRIGGER chaos_slow_run BEFORE INSERT OR UPDATE ON sync_syncrun
    FOR EACH STATEMENT EXECUTE FUNCTION chaos_slow_write();
"""
FAST_WRITES = "DROP TRIGGER chaos_slow_fabric ON sync_fabric; DROP TRIGGER chaos_slow_run ON sync_syncrun"


def test_slow_queries_slow_every_sync_but_declare_no_live_worker_dead(
    chaos_stack: ChaosStack, chaos_scale: ChaosScale
) -> None:
    """Every statement writing a fabric or a run waits SLOW_WRITE_SECONDS, the tick's
    claim included. Syncs slow down several times over; none may be taken for a dead
    worker (LOST), fail, count a failure, or be synced twice because its lease ran out
    while it waited on the database. Bound: the same backlog's time measured without
    the fault in this test, plus every sync's slow writes spread over the worker's
    processes, plus 2 ticks."""
    count = chaos_scale.n(20, minimum=8)
    concurrency = 2
    make_fabrics(chaos_stack, count, files=20)
    chaos_stack.start_worker(concurrency=concurrency)
    with chaos_stack.orm():
        since = timezone.now()
        started = time.monotonic()
        chaos_stack.tick()
        wait_for(lambda: not not_synced_since(since), timeout=chaos_scale.drain(DRAIN_SECONDS))
        fast_seconds = time.monotonic() - started
        connections.close_all()

    for index in range(2):  # a new commit: every sync fetches, parses and writes, not just "unchanged"
        repo = GitRepo(chaos_stack.repos / f"fabric-repo-{index}")
        repo.write("fabric/switch-0.yaml", manifest("Switch", f"leaf-{index}-0", role="spine"))
        repo.commit("re-role a switch")
    with chaos_stack.pg.connect(chaos_stack.dbname) as admin:
        admin.execute(SLOW_WRITES % SLOW_WRITE_SECONDS)
        admin.commit()
    try:
        with chaos_stack.orm():
            since = timezone.now()
            Fabric.objects.update(next_sync_at=since)  # itself slow: the trigger is on
            started = time.monotonic()
            chaos_stack.tick()
            wait_for(lambda: not not_synced_since(since), timeout=chaos_scale.drain(DRAIN_SECONDS) * 3)
            slow_seconds = time.monotonic() - started
            runs = SyncRun.objects.filter(started_at__gte=since)
            durations = sorted(ms or 0 for ms in runs.values_list("duration_ms", flat=True))
            median_ms = durations[len(durations) // 2]
            assert median_ms >= 2 * SLOW_WRITE_SECONDS * 1000, f"syncs were not slowed, no fault: {durations}"
            # Each sync writes a fabric or a run about 6 times (claim, begin, run, commit, finish).
            bound = fast_seconds + count * 6 * SLOW_WRITE_SECONDS / concurrency + 2 * 60
            assert slow_seconds <= bound, f"{count} syncs took {slow_seconds:.0f} s (bound {bound:.0f} s)"
            _nothing_blamed()
            assert_healthy_history()
            assert runs.count() == count, f"{runs.count()} runs for {count} due fabrics"
            print(
                f"\nMEASURED slow writes ({SLOW_WRITE_SECONDS} s per statement): {count} fabrics synced in "
                f"{slow_seconds:.1f} s (without: {fast_seconds:.1f} s; bound {bound:.0f} s), median sync "
                f"{median_ms / 1000:.1f} s, none LOST or failed"
            )
            connections.close_all()
    finally:
        with chaos_stack.pg.connect(chaos_stack.dbname) as admin:
            admin.execute(FAST_WRITES)
            admin.commit()
