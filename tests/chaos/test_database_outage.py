"""PostgreSQL stops for 20 s while a backlog of syncs drains: nothing is lost or blamed on a fabric.

Real: a private PostgreSQL cluster stopped with ``pg_ctl stop -m fast`` (open sessions
are terminated, like a failover or an operator's restart) and started again 20 s
later, a private Valkey, a real prefork worker and real ticks. Before the fix,
``leases.begin`` failed on the dead connection and the task was acknowledged, and
in-flight syncs died in ``record_failure``: the fabrics waited out the queue lease
(900 s), runs were marked LOST ("worker died") and failures were counted.

Bound: every fabric synced within 2 ticks after the database is back; no run marked
LOST or FAILED, no consecutive failure counted, none synced twice at once, none stuck.
"""

from __future__ import annotations

import time

import pytest
from django.db import connections
from django.utils import timezone

from sync.models import Fabric, RunStatus, SyncRun
from tests.chaos.conftest import make_fabrics
from tests.chaos.invariants import assert_healthy_history, not_synced_since, report
from tests.chaos.scale import ChaosScale
from tests.chaos.stack import ChaosStack
from tests.conftest import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]

OUTAGE_SECONDS = 20
DRAIN_SECONDS = 120


def test_a_20_second_database_outage_is_retried_through_and_counted_against_no_fabric(
    chaos_stack: ChaosStack, chaos_scale: ChaosScale
) -> None:
    count = chaos_scale.n(40, minimum=12)
    make_fabrics(chaos_stack, count, files=40)
    worker = chaos_stack.start_worker(concurrency=2)
    with chaos_stack.orm():
        since = timezone.now()
        chaos_stack.tick()
        wait_for(lambda: SyncRun.objects.filter(status=RunStatus.SUCCESS).count() >= 2, timeout=60)
        connections.close_all()
    chaos_stack.pg.stop(mode="fast")  # mid-backlog: some synced, some running, the rest queued
    time.sleep(OUTAGE_SECONDS)
    chaos_stack.pg.start()
    back = time.monotonic()

    with chaos_stack.orm():
        ticks = 0
        while not_synced_since(since) and ticks < 2:
            chaos_stack.tick()
            ticks += 1
            try:
                wait_for(lambda: not not_synced_since(since), timeout=chaos_scale.drain(DRAIN_SECONDS))
            except AssertionError:
                continue
        missing = not_synced_since(since)
        assert not missing, f"{len(missing)} of {count} fabrics not synced within 2 ticks of the database's return"
        report(f"database back, {count} fabrics synced after", time.monotonic() - back, ticks)
        blamed = SyncRun.objects.filter(status__in=[RunStatus.LOST, RunStatus.FAILED])
        assert not blamed.exists(), list(blamed.values_list("fabric__name", "status", "error_message"))
        assert set(Fabric.objects.values_list("consecutive_failures", flat=True)) == {0}
        assert_healthy_history()
    assert worker.alive(), worker.log()
    assert "database unavailable" in worker.log(tail=2_000_000), "the outage never reached a sync: test proves nothing"
