"""The master tick starts on time while hundreds of syncs wait (issue 10, item 5).

Real: a private stack, one single-process worker for syncs (so a backlog builds), the
tick's own worker on the ``tick`` queue (as ``make run`` and deploy/compose.yaml run
it), and the tick published exactly as beat publishes it. Before the tick had a queue
of its own it waited behind every sync already queued (start delay up to 27 s).

Bound: the tick has finished while most of the backlog still waits in Redis. A claim
waits either as its own sync message or, above ``SYNC_DISPATCH_CHUNK`` fabrics, inside
a ``sync.fan_out`` chunk not yet expanded: both count (``sync.broker_inventory``).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from core.clients import priority_lists
from sync.broker_inventory import claims_in
from tests.chaos.conftest import make_fabrics
from tests.chaos.scale import ChaosScale
from tests.chaos.stack import ChaosStack
from tests.conftest import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]


def waiting_claims(redis: Any) -> int:
    """Claims whose message still waits in the sync queue (one per sync, or a chunk's)."""
    raws = [raw for key in priority_lists("sync") for raw in redis.lrange(key, 0, -1)]
    return sum(len(claims_in(json.loads(raw))) for raw in raws)


PUBLISH_TICK = "from project.tasks import master_scheduler; print(master_scheduler.apply_async().id)"


def test_a_tick_published_behind_a_sync_backlog_runs_before_the_backlog_drains(
    chaos_stack: ChaosStack, chaos_scale: ChaosScale
) -> None:
    backlog = chaos_scale.n(200, minimum=150)
    make_fabrics(chaos_stack, backlog)
    chaos_stack.tick()  # every fabric claimed: `backlog` sync messages wait
    redis = chaos_stack.redis.client()
    assert waiting_claims(redis) == backlog
    chaos_stack.start_worker("syncs", concurrency=1, queues="celery,sync,scaling")
    tick_worker = chaos_stack.start_worker("tick", concurrency=1, queues="tick")

    task_id = chaos_stack.manage("shell", "-c", PUBLISH_TICK).stdout.split()[-1]
    published = time.monotonic()
    wait_for(
        lambda: f"project.master_scheduler[{task_id}] succeeded" in tick_worker.log(tail=200_000),
        timeout=60,
        message="the tick did not run",
    )
    waited = time.monotonic() - published
    still_queued = waiting_claims(redis)
    assert still_queued > backlog // 2, (
        f"the tick ran only after the backlog drained ({still_queued} of {backlog} left, {waited:.1f} s)"
    )
