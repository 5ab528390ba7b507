"""Celery queue depth and latency, read straight from the Redis broker.

Depth is everything the service still has to do: the waiting messages of every
priority sub-list (Celery on Redis stores ``queue``, ``queue\\x06\\x163``, ... ) plus the
messages workers have taken but not acknowledged (reserved, and running under late
acks). A bare ``LLEN queue`` misses both and reads zero on a saturated fleet, which
scales workers away mid-task (KEDA #356).

Latency is the age of the oldest waiting message. Celery's messages carry no publish
time, so ``scaling.signals`` stamps a ``published_at`` header on every task we publish.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import redis
from kombu.transport.redis import Channel

from core.clients import broker_client, priority_lists
from scaling.decisions import MetricReading

PUBLISHED_AT_HEADER = "published_at"
UNACKED_KEY = Channel.unacked_key


def _not_redis() -> MetricReading:
    return MetricReading.missing("the broker is not Redis: queue metrics are only read from Redis")


def queue_depth(queues: Sequence[str], now: datetime) -> MetricReading:
    """Waiting (all priority lists) plus reserved/unacknowledged messages of ``queues``."""
    client = broker_client()
    if client is None:
        return _not_redis()
    if not queues:
        return MetricReading.missing("the policy names no queues")
    try:
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            for key in priority_lists(queue):
                pipe.llen(key)
        waiting = sum(int(n) for n in pipe.execute())
        reserved = _unacked_for(client, set(queues))
    except redis.RedisError as exc:
        return MetricReading.missing(f"broker unreachable: {type(exc).__name__}: {exc}")
    return MetricReading.present(waiting + reserved, now)


def _unacked_for(client: redis.Redis, queues: set[str]) -> int:
    """Messages delivered to a worker and not yet acknowledged, by routing key."""
    count = 0
    for raw in client.hvals(UNACKED_KEY):
        try:
            _message, _exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        if routing_key in queues:
            count += 1
    return count


def queue_latency(queues: Sequence[str], now: datetime) -> MetricReading:
    """Seconds the oldest waiting message has waited; 0 when nothing waits."""
    client = broker_client()
    if client is None:
        return _not_redis()
    if not queues:
        return MetricReading.missing("the policy names no queues")
    try:
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            for key in priority_lists(queue):
                # LPUSH in, BRPOP out: the oldest message of each list is the last one.
                pipe.lindex(key, -1)
        oldest = [raw for raw in pipe.execute() if raw is not None]
    except redis.RedisError as exc:
        return MetricReading.missing(f"broker unreachable: {type(exc).__name__}: {exc}")
    if not oldest:
        return MetricReading.present(0.0, now)
    stamps = [_published_at(raw) for raw in oldest]
    known = [stamp for stamp in stamps if stamp is not None]
    if not known:
        return MetricReading.missing(
            f"the oldest waiting message carries no {PUBLISHED_AT_HEADER!r} header "
            "(published by a process without the scaling app)"
        )
    return MetricReading.present(max(0.0, now.timestamp() - min(known)), now)


def _published_at(raw: bytes) -> float | None:
    try:
        headers = json.loads(raw).get("headers") or {}
        return float(headers[PUBLISHED_AT_HEADER])
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
