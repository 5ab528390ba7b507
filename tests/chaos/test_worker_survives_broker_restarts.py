"""Workers of both pools survive 10 Redis restarts in a row and work afterwards (issue 10, item 2).

Real: a private Valkey SIGKILLed and started again on the same port 10 times, a
prefork worker (syncs) and a threads-pool worker (the health queue, as ``make run``
and deploy/compose.yaml run it), a private PostgreSQL. Before the fix, kombu's Redis
transport raised ``AttributeError: 'NoneType' object has no attribute 'hostname'``
while the consumer closed its dead connection, and the worker exited ("Unrecoverable
error"): the threads worker in 4 of 4 kills, the prefork one in 1 of 7.

Bound: after the 10th restart both processes are alive, a tick syncs every fabric, and
the health sweep's checks run on the threads worker.
"""

from __future__ import annotations

import time

import pytest
from django.utils import timezone

from sync.models import Fabric, SyncStatus
from tests.chaos.conftest import make_fabrics
from tests.chaos.invariants import assert_healthy_history, not_synced_since
from tests.chaos.scale import ChaosScale
from tests.chaos.stack import ChaosStack
from tests.conftest import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]

RESTARTS = 10  # the requirement; a floor the scale never lowers


# Known gap (docs/reliability.md): with an append-only file, a sync message a worker had
# reserved when Redis died survives in kombu's `unacked` hash, its claim marker too,
# so the claim waits for the visibility timeout instead of the next tick. The workers
# themselves survive (asserted before the liveness check that fails).
AOF_GAP = pytest.mark.xfail(
    reason="a reserved message orphaned in `unacked` by a Redis restart with AOF waits for the visibility timeout",
    strict=False,
)


@pytest.mark.parametrize(
    "persist", [False, pytest.param(True, marks=AOF_GAP)], ids=["no-persistence", "append-only-file"]
)
def test_prefork_and_threads_workers_survive_ten_redis_restarts_and_still_work(
    chaos_stack_factory, chaos_scale: ChaosScale, persist: bool
) -> None:
    stack: ChaosStack = chaos_stack_factory(persist_redis=persist, HEALTH_QUEUE="health")
    make_fabrics(stack, chaos_scale.fabrics)
    prefork = stack.start_worker("prefork", concurrency=2, queues="celery,sync,scaling,tick", as_deployed=True)
    threads = stack.start_worker("threads", pool="threads", concurrency=8, queues="health", as_deployed=True)

    for restart in range(max(RESTARTS, chaos_scale.n(RESTARTS))):
        with stack.orm():
            Fabric.objects.update(next_sync_at=timezone.now())
        stack.tick()  # both workers busy (syncs, the health sweep) when Redis dies
        stack.redis.kill()
        time.sleep(1)
        stack.redis.start()
        # Let both consumers notice and reconnect before the next kill.
        time.sleep(3)
        for worker in (prefork, threads):
            assert worker.alive(), f"{worker.name} exited after restart {restart + 1}:\n{worker.log()}"

    with stack.orm():
        # Syncs that were running at the last kill finish first (they are not cancelled);
        # then every fabric is due, and one tick must get each synced again.
        wait_for(lambda: not Fabric.objects.filter(sync_status=SyncStatus.SYNCING).exists(), timeout=60)
        since = timezone.now()
        Fabric.objects.update(next_sync_at=since)
        stack.tick()
        wait_for(lambda: not not_synced_since(since), timeout=120, message="the prefork worker no longer syncs")
        # (not_synced_since names the fabrics in the failure above if any are left)
        assert_healthy_history()
    # The same tick sent the health sweep to the threads worker's queue.
    wait_for(
        lambda: (
            "resilience.run_check" in threads.log(tail=20_000).split("ready.")[-1]
            and "succeeded" in threads.log(tail=20_000).split("ready.")[-1]
        ),
        timeout=60,
        message="the threads worker no longer runs health checks",
    )
    for worker in (prefork, threads):
        assert worker.alive(), worker.log()
        assert "Unrecoverable error" not in worker.log(tail=5_000_000)
