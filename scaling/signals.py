"""Stamp every published task with its publish time, for the queue latency metric."""

from __future__ import annotations

import time
from typing import Any

from celery.signals import before_task_publish

from scaling.metrics.celery_queues import PUBLISHED_AT_HEADER


@before_task_publish.connect
def stamp_published_at(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    # setdefault: a retried or re-sent message keeps the time it first entered a queue.
    if headers is not None:
        headers.setdefault(PUBLISHED_AT_HEADER, time.time())
