"""The one place that builds Redis and Docker clients.

Every feature takes its clients from here, so every part of the system talks to the
same Redis (``REDIS_URL``, the cache's by default) and the same Docker engine
(``DOCKER_URL``) with timeouts short enough that an outage shows up within seconds
instead of stalling a worker. Clients are pooled per process; no state lives here.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import redis
from django.conf import settings


@lru_cache(maxsize=8)
def redis_pool(url: str, timeout: float = 3.0, decode_responses: bool = False) -> redis.ConnectionPool:
    """One connection pool per (URL, timeout) and process."""
    return redis.ConnectionPool.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=decode_responses
    )


def redis_client(url: str | None = None, timeout: float = 3.0) -> redis.Redis:
    """A client on the shared pool for ``url`` (default: ``REDIS_URL``)."""
    return redis.Redis(connection_pool=redis_pool(url or settings.REDIS_URL, timeout))


def broker_client() -> redis.Redis | None:
    """The Celery broker's Redis, or None when the broker is not Redis."""
    url = settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    return redis_client(url)


def priority_lists(queue: str) -> list[str]:
    """The Redis lists that hold one Celery queue, one per priority step (Kombu's naming)."""
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    return [queue if step == 0 else f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS]


def docker_client(timeout: float | None = None, max_pool_size: int = 10) -> Any:
    """A Docker Engine API client for ``DOCKER_URL``; the caller closes it.

    Raises ``docker.errors.DockerException`` when the URL is unusable. Wrap calls in
    ``core.guards.docker_engine()`` so a dead engine costs one fast rejection.
    """
    import docker  # imported here: the web process never needs it at start-up

    return docker.DockerClient(
        base_url=settings.DOCKER_URL,
        timeout=int(timeout or settings.DOCKER_TIMEOUT),
        max_pool_size=max_pool_size,
        version="auto",
    )
