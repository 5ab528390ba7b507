"""One pooled Redis client per URL, shared by the scaling modules of a process."""

from __future__ import annotations

from functools import lru_cache

import redis


@lru_cache(maxsize=4)
def redis_client(url: str) -> redis.Redis:
    """Short timeouts: a Redis outage must show up as a missing metric or a skipped
    evaluation within seconds, not stall a worker."""
    return redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
