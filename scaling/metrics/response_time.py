"""Average request duration over a rolling window, kept in the cache so every process shares it.

Requests are counted into fixed time buckets (``SCALING_RESPONSE_TIME_BUCKET`` seconds):
two atomic counters per bucket, the number of requests and the summed microseconds,
each expiring shortly after the window has passed it. Reading sums the buckets of the
last ``SCALING_RESPONSE_TIME_WINDOW`` seconds. ``incr`` is atomic on Redis, so any
number of web processes can record into the same window without a lock.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.conf import settings
from django.core.cache import cache

from scaling.decisions import MetricReading

_KEY = "scaling:rt:{service}:{bucket}:{field}"


def _bucket(timestamp: float, size: int) -> int:
    return int(timestamp // size)


def _add(key: str, amount: int, ttl: int) -> None:
    # add() creates the counter only when absent, so concurrent first writers do not
    # overwrite each other; incr() is then atomic.
    cache.add(key, 0, timeout=ttl)
    try:
        cache.incr(key, amount)
    except ValueError:  # expired between add() and incr(): start the bucket again
        cache.set(key, amount, timeout=ttl)


def record(service: str, duration_seconds: float, at: float) -> None:
    """Count one request of ``duration_seconds`` that finished at epoch time ``at``."""
    size = settings.SCALING_RESPONSE_TIME_BUCKET
    bucket = _bucket(at, size)
    ttl = settings.SCALING_RESPONSE_TIME_WINDOW + 2 * size
    _add(_KEY.format(service=service, bucket=bucket, field="n"), 1, ttl)
    _add(_KEY.format(service=service, bucket=bucket, field="us"), max(0, round(duration_seconds * 1e6)), ttl)


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
