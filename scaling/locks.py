"""A per-service lock in Redis, so overlapping ticks never act on the same service twice.

``SET key token NX PX ttl`` takes the lock only if nobody holds it; the release is a
Lua compare-and-delete, so a holder whose lock expired can never delete the lock a
newer holder took. The TTL (``SCALING_LOCK_SECONDS``) outlives the evaluation task's
hard time limit: a lock only expires once its holder has certainly been killed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from django.conf import settings

from core.clients import redis_client as _client

logger = logging.getLogger(__name__)

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


def lock_key(service: str) -> str:
    return f"fcp:scaling:lock:{service}"


def acquire(service: str, ttl_seconds: float | None = None) -> str | None:
    """Take the lock and return its token, or None when another holder has it."""
    token = uuid.uuid4().hex
    ttl_ms = int((ttl_seconds if ttl_seconds is not None else settings.SCALING_LOCK_SECONDS) * 1000)
    won = _client(settings.REDIS_URL).set(lock_key(service), token, nx=True, px=max(1, ttl_ms))
    return token if won else None


def release(service: str, token: str) -> bool:
    """Release the lock if ``token`` still holds it. False if it expired or was taken over."""
    client = _client(settings.REDIS_URL)
    return bool(client.eval(_RELEASE, 1, lock_key(service), token))


@contextmanager
def service_lock(service: str, ttl_seconds: float | None = None) -> Iterator[str | None]:
    """``with service_lock("worker") as token:`` -- token is None when someone else holds it."""
    token = acquire(service, ttl_seconds)
    try:
        yield token
    finally:
        if token is not None:
            try:
                if not release(service, token):
                    logger.warning("scaling lock for %s expired before it was released", service)
            except redis.RedisError:
                # It expires on its own; the next tick simply waits for the TTL.
                logger.warning("could not release the scaling lock for %s", service, exc_info=True)
