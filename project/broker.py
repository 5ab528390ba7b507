"""The Redis broker transport, with one guard against a kombu bug that killed workers.

When Redis dies, Celery's consumer (``on_connection_error_after_connected``) first
calls ``connection.collect()``, which tries to close the channels and then sets the
kombu transport's ``client`` to ``None``; since celery/celery#9705 it then also calls
``connection.close()``, which closes the default channel a second time. If that
channel still holds delivered, unacknowledged messages (a task running with
``acks_late``), ``Channel.close`` restores them: ``QoS.restore_unacked`` ->
``conn_or_acquire`` -> ``_create_client`` -> ``pool`` (just disconnected, so rebuilt)
-> ``_connparams``, which reads ``self.connection.client.hostname`` and raises
``AttributeError``. kombu's ``ignore_errors`` only swallows connection errors, so the
worker logs "Unrecoverable error" and exits instead of reconnecting. An idle worker
has nothing to restore and survives, which is why only busy workers died. Same
symptom as kombu#582 (there on the fanout queue delete), unguarded in kombu 5.7.0,
the newest release, and on kombu's main branch.

The guard makes a channel whose connection is gone fail the way it really failed,
with ``redis.ConnectionError``, before it builds a pool: kombu's close path and
``Message.ack`` both treat that as an expected broker error, and Celery reconnects.
Redis is down at that moment, so nothing could be restored anyway; the messages stay
in kombu's ``unacked`` hash (with persistence) until the visibility timeout restores
them. Everything else is kombu's own transport, unchanged.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        # ``connection`` is the kombu transport (None once the channel is closed) and its
        # ``client`` the kombu Connection (None once that connection was collected).
        if getattr(self.connection, "client", None) is None:
            raise redis.ConnectionError("the broker connection of this channel is closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]


class Transport(kombu_redis.Transport):
    Channel = Channel
