"""The no-op task the throughput benchmark runs on a worker with the project's settings.

Loaded into that worker with ``--include bench._tasks``. It does nothing but count
itself in Redis (one ``INCR``), and the last one of a batch stamps the time, so the
benchmark learns when the batch was done without storing or polling results.
"""

from __future__ import annotations

import time

from celery import shared_task

from core.clients import redis_client


@shared_task(name="bench.noop")
def noop(total: int, key: str) -> None:
    client = redis_client()
    if client.incr(key) == total:
        client.set(f"{key}:done", repr(time.time()))
