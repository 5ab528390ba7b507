"""A Celery app with Celery's defaults and nothing of the project: the plainest baseline.

``celery -A bench._plain_app worker`` with ``BENCH_PLAIN_BROKER_URL``; no Django (the
worker is started without ``DJANGO_SETTINGS_MODULE``, so Celery's Django fix-up stays
out), no result backend, default prefetch, early acknowledgement, no events. The task
is the same no-op as ``bench._tasks.noop``: one ``INCR``, and a time stamp at the end.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

app = Celery("plain", broker=os.environ["BENCH_PLAIN_BROKER_URL"])
_client = redis.Redis.from_url(os.environ["BENCH_PLAIN_BROKER_URL"])


@app.task(name="bench.plain_noop")
def noop(total: int, key: str) -> None:
    if _client.incr(key) == total:
        _client.set(f"{key}:done", repr(time.time()))
