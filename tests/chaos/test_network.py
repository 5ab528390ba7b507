"""A bad link between a worker host and its services: latency, then connections reset.

Real: the worker reaches the stack's private PostgreSQL and Valkey only through
``FaultProxy`` (``tests/chaos/faultproxy.py``: real TCP both sides, latency per chunk,
resets as TCP RSTs; user space because this kernel has no ``netem``). Ticks run beside
the services, as beat's host would. Every fabric syncs from a real Git repository.

Invariants and bounds:
- 50 ms added on every chunk in each direction (a slow WAN link, a few hundred ms per
  sync): every fabric of a tick synced within ``SYNC_SECONDS``, no failure counted.
- Every connection of the worker reset three times, ``RESET_GAP`` s apart, while a
  backlog syncs over that slow link: every fabric synced within lease + 2 ticks + the time
  the same backlog took over the slow link without resets, counted from the last reset;
  no fabric synced twice at once, none stuck, no failure counted for the link's fault
  (consecutive failures stay 0), and the worker process survives.
"""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from django.utils import timezone

from sync.models import Fabric
from tests.chaos.conftest import make_fabrics
from tests.chaos.faultproxy import FaultProxy
from tests.chaos.invariants import assert_healthy_history, describe, not_synced_since
from tests.chaos.scale import ChaosScale
from tests.chaos.stack import CHAOS_ENV, ChaosStack, Worker

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]

LATENCY = 0.05
SYNC_SECONDS = 180
RESETS = 3
RESET_GAP = 3.0
TICK_SECONDS = 15
LEASE_SECONDS = int(CHAOS_ENV["SYNC_LEASE_SECONDS"])


def _worker_through(stack: ChaosStack, pg: FaultProxy, redis: FaultProxy) -> dict[str, str]:
    broker = redis.url_for(stack.redis.url(0))
    return {
        "DATABASE_URL": pg.url_for(stack.database_url()),
        "CELERY_BROKER_URL": broker,
        "CELERY_RESULT_BACKEND": broker,
        "REDIS_URL": broker,
    }


def _tick_until_synced(stack: ChaosStack, since: object, timeout: float) -> int:
    """Tick every ``TICK_SECONDS`` (as beat would) until every fabric synced since ``since``."""
    ticks, last = 0, 0.0
    deadline = time.monotonic() + timeout
    while not_synced_since(since):  # type: ignore[arg-type]
        missing = not_synced_since(since)  # type: ignore[arg-type]
        assert time.monotonic() < deadline, f"not synced within {timeout} s: {describe(missing)}\n" + "\n".join(
            p.log(4000) for p in stack.procs
        )
        if time.monotonic() - last >= TICK_SECONDS:
            stack.tick()
            ticks, last = ticks + 1, time.monotonic()
        time.sleep(0.5)
    return ticks


def _backlog_in_flight(stack: ChaosStack) -> datetime:
    """Every fabric due at once and one tick: returns when the worker has begun the backlog."""
    with stack.orm():
        since = timezone.now()
        Fabric.objects.update(next_sync_at=since)
    stack.tick()
    time.sleep(2)  # the worker has begun syncing
    return since


def _assert_nothing_blamed(worker: Worker) -> None:
    """No overlap, nothing stuck, no failure counted for the link's fault, the worker alive."""
    assert_healthy_history()
    assert set(Fabric.objects.values_list("consecutive_failures", flat=True)) == {0}
    assert worker.alive(), worker.log()


def test_latency_then_resets_between_a_worker_and_its_services_lose_and_double_nothing(
    chaos_stack: ChaosStack, chaos_scale: ChaosScale
) -> None:
    count = chaos_scale.n(20, minimum=10)
    make_fabrics(chaos_stack, count, files=20)
    host, pg_port = "127.0.0.1", chaos_stack.pg.port
    with FaultProxy(host, pg_port) as pg, FaultProxy(host, chaos_stack.redis.port) as redis:
        through = _worker_through(chaos_stack, pg, redis)
        worker = chaos_stack.start_worker(
            "far",
            DATABASE_URL=through["DATABASE_URL"],
            CELERY_BROKER_URL=through["CELERY_BROKER_URL"],
            CELERY_RESULT_BACKEND=through["CELERY_RESULT_BACKEND"],
            REDIS_URL=through["REDIS_URL"],
        )

        # A slow link: everything still syncs, nothing fails.
        pg.latency = redis.latency = LATENCY
        with chaos_stack.orm():
            since = timezone.now()
            started = time.monotonic()
            ticks = _tick_until_synced(chaos_stack, since, chaos_scale.drain(SYNC_SECONDS))
            slow_seconds = time.monotonic() - started
            print(f"\nnetwork: {count} fabrics over the slow link synced in {slow_seconds:.1f} s, {ticks} tick(s)")
            assert set(Fabric.objects.values_list("consecutive_failures", flat=True)) == {0}
            assert_healthy_history()

        # Resets while a backlog syncs over the slow link (so connections are busy when cut).
        since = _backlog_in_flight(chaos_stack)
        cut = 0
        for _ in range(RESETS):
            cut += pg.reset() + redis.reset()
            time.sleep(RESET_GAP)
        assert cut, "no connection was open to cut"
        last_reset = time.monotonic()
        with chaos_stack.orm():
            # The backlog itself takes as long as it took over the same slow link without
            # resets (measured above, so a loaded host stretches both alike).
            bound = LEASE_SECONDS + 2 * TICK_SECONDS + slow_seconds
            reset_ticks = _tick_until_synced(chaos_stack, since, bound)
            recovered = time.monotonic() - last_reset
            _assert_nothing_blamed(worker)
    print(
        f"\nnetwork: {count} fabrics; {LATENCY * 1000:.0f} ms per chunk: synced in {slow_seconds:.1f} s, "
        f"{ticks} tick(s); {RESETS} resets ({cut} connections cut): all synced {recovered:.1f} s after the last, "
        f"{reset_ticks} more tick(s)"
    )


# kombu's check of a consumer's BRPOP connection: a reply overdue by brpop_timeout (1 s)
# + health_check_interval (25 s) drops it, checked every health_check_interval.
BRPOP_DETECTION_SECONDS = 1 + 2 * 25
STRANDED_SECONDS = int(CHAOS_ENV["SYNC_STRANDED_AFTER_SECONDS"])


def test_a_silently_dead_broker_link_stalls_no_worker_and_loses_nothing(
    chaos_stack: ChaosStack, chaos_scale: ChaosScale
) -> None:
    """Every broker connection of a busy worker goes silent (no RST, no FIN): the worker
    notices within its socket timeout and kombu's BRPOP check, reconnects, and every
    fabric of the backlog is synced within detection + stranded-claim release + lease
    + 2 ticks + the backlog's own time; nothing doubled, no failure counted.

    Before ``BROKER_SOCKET_TIMEOUT`` the worker blocked forever in a synchronous
    command on the dead connection (acknowledging, or restoring unacked messages while
    it reconnected) and never consumed again."""
    count = chaos_scale.n(20, minimum=10)
    make_fabrics(chaos_stack, count, files=20)
    with FaultProxy("127.0.0.1", chaos_stack.redis.port) as redis:
        broker = redis.url_for(chaos_stack.redis.url(0))
        worker = chaos_stack.start_worker(
            "far", CELERY_BROKER_URL=broker, CELERY_RESULT_BACKEND=broker, REDIS_URL=broker
        )
        # A slow link, so syncs are in flight (their messages unacknowledged) when it dies.
        redis.latency = LATENCY
        with chaos_stack.orm():
            since = timezone.now()
            started = time.monotonic()
            _tick_until_synced(chaos_stack, since, chaos_scale.drain(SYNC_SECONDS))
            slow_seconds = time.monotonic() - started
        since = _backlog_in_flight(chaos_stack)
        stalled = redis.stall()
        assert stalled, "no connection was open to stall"
        dead = time.monotonic()
        with chaos_stack.orm():
            bound = BRPOP_DETECTION_SECONDS + STRANDED_SECONDS + LEASE_SECONDS + 2 * TICK_SECONDS + slow_seconds
            ticks = _tick_until_synced(chaos_stack, since, bound)
            recovered = time.monotonic() - dead
            _assert_nothing_blamed(worker)
    print(
        f"\nnetwork: {count} fabrics; {stalled} broker connections went silent mid-backlog: "
        f"all synced {recovered:.1f} s later (bound {bound:.0f} s), {ticks} tick(s)"
    )
