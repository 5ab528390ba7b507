"""Average request duration over a rolling window, kept in the cache so every process shares it.

Requests are counted into fixed time buckets (``SCALING_RESPONSE_TIME_BUCKET`` seconds):
two atomic counters per bucket, the number of requests and the summed microseconds,
each expiring shortly after the window has passed it. Reading sums the buckets of the
last ``SCALING_RESPONSE_TIME_WINDOW`` seconds. ``INCRBY`` is atomic on Redis, so any
number of web processes can record into the same window without a lock.

Recording runs on every request, so it is one pipelined round trip to the cache's
Redis (``INCRBY`` and ``EXPIRE`` for both counters), written under the cache's own key
names: Django's Redis serializer reads the plain integers back in ``get_many``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.conf import settings
from django.core.cache import cache

from core.clients import redis_client
from scaling.decisions import MetricReading

_KEY = "scaling:rt:{service}:{bucket}:{field}"


def _bucket(timestamp: float, size: int) -> int:
    return int(timestamp // size)


def record(service: str, duration_seconds: float, at: float) -> None:
    """Count one request of ``duration_seconds`` that finished at epoch time ``at``."""
    size = settings.SCALING_RESPONSE_TIME_BUCKET
    bucket = _bucket(at, size)
    ttl = settings.SCALING_RESPONSE_TIME_WINDOW + 2 * size
    location = str(settings.CACHES["default"]["LOCATION"])  # one URL in this project's settings
    pipe = redis_client(location).pipeline(transaction=False)
    for field, amount in (("n", 1), ("us", max(0, round(duration_seconds * 1e6)))):
        key = cache.make_key(_KEY.format(service=service, bucket=bucket, field=field))
        pipe.incrby(key, amount)
        pipe.expire(key, ttl)
    pipe.execute()


def read_average(service: str, now: datetime) -> MetricReading:
    """The window's average in milliseconds, timestamped at the newest bucket with requests.

    No request in the window means the metric is missing: an idle service has no
    response time, and reading it as 0 ms would scale it down for the wrong reason.
    """
    size = settings.SCALING_RESPONSE_TIME_BUCKET
    window = settings.SCALING_RESPONSE_TIME_WINDOW
    newest = _bucket(now.timestamp(), size)
    buckets = list(range(newest - max(1, window // size) + 1, newest + 1))
    keys = [_KEY.format(service=service, bucket=b, field=f) for b in buckets for f in ("n", "us")]
    try:
        values = cache.get_many(keys)
    except Exception as exc:
        return MetricReading.missing(f"cache unreachable: {type(exc).__name__}: {exc}")
    count = total_us = 0
    newest_seen: int | None = None
    for b in buckets:
        n = int(values.get(_KEY.format(service=service, bucket=b, field="n"), 0) or 0)
        if n:
            count += n
            total_us += int(values.get(_KEY.format(service=service, bucket=b, field="us"), 0) or 0)
            newest_seen = b
    if not count or newest_seen is None:
        return MetricReading.missing(f"no requests recorded for {service!r} in the last {window} s")
    observed = datetime.fromtimestamp(min((newest_seen + 1) * size, now.timestamp()), tz=UTC)
    return MetricReading.present(total_us / count / 1000.0, observed)
