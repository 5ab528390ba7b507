"""Redis loses the queued sync messages (restart without persistence): recovery within 2 ticks.

Real: a private PostgreSQL cluster and a private Valkey server that the test SIGKILLs
and restarts empty (no append-only file), real ``manage.py tick`` processes and a
real prefork worker. Before claim markers, the claimed fabrics stayed QUEUED until
their queue lease ran out (``SYNC_QUEUE_LEASE_SECONDS``, 900 s): measured 909 s.

Bound: every fabric is synced after at most 2 ticks following the restart (plus the
time the worker needs to drain them), with no fabric synced twice at once, none stuck,
and no failure counted: losing a message is the broker's fault, not the fabric's.
"""

from __future__ import annotations

import signal
import time

import pytest
from django.utils import timezone

from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from tests.chaos.conftest import make_fabrics
from tests.chaos.invariants import assert_healthy_history, not_synced_since, report
from tests.chaos.scale import ChaosScale
from tests.chaos.stack import ChaosStack
from tests.conftest import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]

DRAIN_SECONDS = 120  # the worker syncing every fabric once, on a loaded 2-core host


@pytest.mark.parametrize("fault", ["restart-empty", "flushall"])
def test_claims_whose_messages_redis_lost_are_dispatched_again_by_the_next_tick(
    chaos_stack: ChaosStack, chaos_scale: ChaosScale, fault: str
) -> None:
    make_fabrics(chaos_stack, chaos_scale.fabrics)
    first = chaos_stack.tick()  # no worker yet: every claim waits in Redis
    assert first["metrics"]["sync"]["fabrics_dispatched"] == chaos_scale.fabrics, first
    with chaos_stack.orm():
        assert Fabric.objects.filter(sync_status=SyncStatus.QUEUED).count() == chaos_scale.fabrics

    if fault == "restart-empty":
        chaos_stack.redis.restart()  # SIGKILL, then an empty server: the messages are gone
    else:
        chaos_stack.redis.client().flushall()  # an operator's mistake, or a failover to an empty replica
    assert chaos_stack.redis.client().dbsize() == 0
    chaos_stack.start_worker(concurrency=2)
    with chaos_stack.orm():
        since = timezone.now()

    ticks = 0
    with chaos_stack.orm():
        while not_synced_since(since) and ticks < 2:
            summary = chaos_stack.tick()
            ticks += 1
            if ticks == 1:
                assert summary["metrics"]["sync"].get("claims_lost_by_broker") == chaos_scale.fabrics, summary
            try:
                wait_for(lambda: not not_synced_since(since), timeout=chaos_scale.drain(DRAIN_SECONDS))
            except AssertionError:
                continue
        assert not not_synced_since(since), f"not synced within 2 ticks: {not_synced_since(since)}"
        report(
            f"broker {fault}, {chaos_scale.fabrics} fabrics re-synced after",
            (timezone.now() - since).total_seconds(),
            ticks,
        )
        assert set(Fabric.objects.values_list("consecutive_failures", flat=True)) == {0}
        assert not SyncRun.objects.filter(status__in=[RunStatus.LOST, RunStatus.FAILED]).exists()
        assert_healthy_history()


@pytest.mark.parametrize("persist", [False, True], ids=["no-persistence", "append-only-file"])
def test_syncs_in_flight_when_redis_dies_finish_and_the_rest_recover_within_two_ticks(
    chaos_stack_factory, chaos_scale: ChaosScale, persist: bool
) -> None:
    """A backlog is draining when Redis is killed: the syncs running then are not cancelled
    (they finish and are recorded), the messages still waiting are lost (no persistence)
    or kept (append-only file), and two ticks later every fabric has synced once more."""
    stack: ChaosStack = chaos_stack_factory(persist_redis=persist)
    count = chaos_scale.n(40, minimum=12)
    make_fabrics(stack, count, files=40)
    worker = stack.start_worker(concurrency=2)
    with stack.orm():
        since = timezone.now()
        stack.tick()
        # Kill Redis while the backlog drains: some synced, some running, the rest queued.
        wait_for(lambda: SyncRun.objects.filter(status__in=[RunStatus.SUCCESS]).count() >= 2, timeout=60)
        stack.redis.kill()
        killed_at = timezone.now()
        time.sleep(2)
        stack.redis.start()

        ticks = 0
        while not_synced_since(since) and ticks < 2:
            stack.tick()
            ticks += 1
            try:
                wait_for(lambda: not not_synced_since(since), timeout=chaos_scale.drain(DRAIN_SECONDS))
            except AssertionError:
                continue
        missing = not_synced_since(since)
        assert not missing, f"{len(missing)} of {count} fabrics not synced within 2 ticks of the restart: {missing}"
        report(
            f"redis killed mid-backlog (aof={persist}), {count} fabrics synced after",
            (timezone.now() - killed_at).total_seconds(),
            ticks,
        )
        # Nothing was cancelled: no run lost, no failure counted, the worker still serves.
        assert not SyncRun.objects.filter(status__in=[RunStatus.LOST, RunStatus.FAILED]).exists()
        assert set(Fabric.objects.values_list("consecutive_failures", flat=True)) == {0}
        assert SyncRun.objects.filter(started_at__lt=killed_at, status=RunStatus.SUCCESS).exists()
        assert_healthy_history()
    assert worker.alive(), worker.log()
    worker.signal(signal.SIGTERM)
