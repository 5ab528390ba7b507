"""The Redis broker transport, with one guard against a kombu bug that killed workers.

When Redis goes away, the worker's consumer closes its channels. Closing a Redis
channel deletes its auto-delete fanout queues (the worker's pidbox), which builds a
new client from ``self.connection.client``; by then kombu has set that to ``None``,
and the ``AttributeError`` ("'NoneType' object has no attribute 'hostname'",
``Channel._connparams``) escapes as an *unrecoverable* error: the worker exits
instead of reconnecting (seen in 4 of 4 Redis kills on the threads pool; the same
trace is kombu issue #582, still in kombu 5.7.0).

The guard turns that one case into what it is, a lost connection: a
``redis.ConnectionError``, which kombu's close path ignores and Celery's consumer
answers by reconnecting. Everything else is kombu's own transport, unchanged.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if getattr(self.connection, "client", None) is None:
            raise redis.ConnectionError("the broker connection of this channel is closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]


class Transport(kombu_redis.Transport):
    Channel = Channel
