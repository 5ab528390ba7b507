"""Benchmark: one master tick over 10,000 due fabrics vs bare Celery ``group()``.

Run with ``make bench`` (or ``bash scripts/bench.sh``). In one process, against the
same broker and database:

1. Create N due fabrics (default 10,000; ``BENCH_FABRICS``).
2. Time one sync step of a tick (reap + select + claim + dispatch) and count its SQL
   queries.
3. Time the fan-out expansion the workers do afterwards (run here in-process), so
   the total publishing work is visible, not just the part the tick does.
4. Time bare ``group(noop.s() for _ in range(N)).apply_async()`` to the same broker:
   the baseline.
5. Time a plain ``apply_async`` loop of N no-op tasks on one producer: the cheapest way
   to publish N messages, the baseline for the total publishing work (tick + fan-out).
6. Print the numbers and the ratios tick / group (target: at most 0.25) and
   (tick + fan-out) / loop.

The broker is a private Valkey this benchmark starts (``bench._private``) and stops:
every message goes to a queue of the benchmark's own on a server nobody else uses, so
emptying it between phases can never drop someone else's messages.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from bench._private import PrivateValkey

VALKEY = PrivateValkey()
atexit.register(VALKEY.stop)  # however the run ends
for _name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL"):
    os.environ[_name] = VALKEY.url(0)
os.environ.pop("CACHE_URL", None)

import django  # noqa: E402

django.setup()

from celery import group  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from project.celery_app import app  # noqa: E402
from sync.dispatch import dispatch_due_fabrics  # noqa: E402
from sync.models import Fabric  # noqa: E402
from sync.tasks import fan_out  # noqa: E402

N = int(os.environ.get("BENCH_FABRICS", "10000"))
BENCH_QUEUE = f"bench-tick-{os.getpid()}"
# Before anything is published: every task without a route of its own lands in BENCH_QUEUE.
app.conf.task_default_queue = BENCH_QUEUE


@app.task(name="bench.noop")
def noop() -> None:
    """The baseline task: does nothing, so only dispatch is measured."""


def create_due_fabrics(now: datetime) -> None:
    Fabric.objects.all().delete()
    Fabric.objects.bulk_create(
        (
            Fabric(name=f"bench-{i:05}", git_url="/srv/repos/bench", next_sync_at=now - timedelta(seconds=1))
            for i in range(N)
        ),
        batch_size=2000,
    )


def empty_bench_queue() -> None:
    """Drop the messages of BENCH_QUEUE, on the private broker (only this run publishes there)."""
    with app.connection_for_write() as conn:
        app.amqp.queues[BENCH_QUEUE].bind(conn.default_channel).purge()


def main() -> None:
    now = timezone.now()
    create_due_fabrics(now)

    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        metrics = dispatch_due_fabrics(now)
        tick_seconds = time.perf_counter() - started
    assert metrics["fabrics_dispatched"] == N, metrics

    # What the workers do next: expand each chunk into one message per fabric.
    token = Fabric.objects.values_list("lease_token", flat=True).first() or ""
    ids = list(Fabric.objects.order_by("id").values_list("id", flat=True))
    chunk = 250
    started = time.perf_counter()
    for start in range(0, len(ids), chunk):
        fan_out(ids[start : start + chunk], token)
    fan_out_seconds = time.perf_counter() - started
    empty_bench_queue()

    started = time.perf_counter()
    group(noop.s() for _ in range(N)).apply_async()
    group_seconds = time.perf_counter() - started
    empty_bench_queue()

    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for _ in range(N):
            noop.apply_async(producer=producer)
    loop_seconds = time.perf_counter() - started
    empty_bench_queue()
    Fabric.objects.all().delete()

    ratio = tick_seconds / group_seconds
    result: dict[str, object] = {
        "fabrics": N,
        "database": connection.vendor,
        "tick_seconds": round(tick_seconds, 3),
        "tick_sql_queries": len(queries),
        "fan_out_expansion_seconds": round(fan_out_seconds, 3),
        "bare_group_seconds": round(group_seconds, 3),
        "bare_group_tasks_per_second": round(N / group_seconds),
        "ratio_tick_to_group": round(ratio, 3),
        "ratio_tick_plus_fan_out_to_group": round((tick_seconds + fan_out_seconds) / group_seconds, 3),
        "apply_async_loop_seconds": round(loop_seconds, 3),
        "apply_async_loop_tasks_per_second": round(N / loop_seconds),
        "ratio_tick_plus_fan_out_to_apply_async_loop": round((tick_seconds + fan_out_seconds) / loop_seconds, 3),
    }
    print(json.dumps(result, indent=2))
    if ratio > 0.25:
        print("FAILED target: tick should take at most 0.25x the bare group() time", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    finally:
        VALKEY.stop()  # the whole private broker goes, with whatever a failed phase left in it
