"""Which claimed syncs the broker still holds, to find claims whose message vanished.

A claim waits QUEUED until a worker begins its message. Claim markers
(``sync.claim_markers``) catch a broker that lost everything; this module catches the
single message lost while the broker kept the rest:

- a worker host cut off by a partition while its connection had a ``BRPOP``
  outstanding: Redis pops the next message into a connection nobody reads, and the
  message is gone (Kombu records it in ``unacked`` only after the client received it);
- a worker that reserved a message and lost it without acknowledging or rejecting it
  (its connection dropped, Redis restarted from its append-only file): the message
  sits in Kombu's ``unacked`` hash until the visibility timeout (2 hours) restores it.

In both cases only the queue lease (15 minutes) would free the fabric. So each tick
looks at the claims that have been QUEUED for longer than ``SYNC_STRANDED_AFTER_SECONDS``
and asks the broker for its inventory of sync messages: those waiting in the sync
queue's lists, and those delivered to a worker (``unacked``) that are either recent or
held for a retry countdown. A claim found nowhere is stranded and released; the tick
dispatches it again at once.

Releasing a claim wrongly is safe: the lease token changes, so if the old message ever
reaches a worker it finds its token gone and is dropped (never a second sync at once);
it only costs a redundant message. The inventory is read only when some claim is old
enough to be suspect, and only from a Redis broker; any doubt (the broker cannot be
asked, a message cannot be parsed) keeps the claim.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import redis
from django.conf import settings
from kombu.transport.redis import Channel

from core.clients import broker_client, priority_lists

logger = logging.getLogger(__name__)

SYNC_TASKS = frozenset({"sync.sync_fabric", "sync.fan_out"})
Claim = tuple[int, str]  # (fabric id, lease token)


def claims_in(message: dict[str, Any]) -> list[Claim]:
    """The (fabric, token) claims a raw Kombu message of a sync task carries; [] for others."""
    headers = message.get("headers") or {}
    if headers.get("task") not in SYNC_TASKS:
        return []
    body = message.get("body", "")
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, kwargs, _embed = json.loads(body)
    fabric = kwargs.get("fabric_id", kwargs.get("fabric_ids", args[0] if args else None))
    token = kwargs.get("token", args[1] if len(args) > 1 else None)
    fabrics = fabric if isinstance(fabric, list) else [fabric]
    return [(int(fabric_id), str(token)) for fabric_id in fabrics]


def _eta(message: dict[str, Any]) -> float | None:
    eta = (message.get("headers") or {}).get("eta")
    return datetime.fromisoformat(eta).timestamp() if eta else None


def held_claims(now: datetime, stranded_after: float) -> set[Claim] | None:
    """Claims the broker still holds for a worker to begin; None if it cannot be asked.

    Lists are read before ``unacked``: a message a worker pops in between appears in
    ``unacked`` as a fresh delivery. Only the instant between Redis handing it over and
    Kombu recording it is missed, and a claim released for that costs one extra message.
    """
    client = broker_client()
    if client is None:
        return None
    cutoff = now.timestamp() - stranded_after
    held: set[Claim] = set()
    try:
        pipe = client.pipeline(transaction=False)
        for key in priority_lists(settings.SYNC_QUEUE):
            pipe.lrange(key, 0, -1)
        waiting = [raw for batch in pipe.execute() for raw in batch]
        delivered: list[tuple[bytes, float]] = list(
            client.zrangebyscore(Channel.unacked_index_key, "-inf", "+inf", withscores=True)  # type: ignore[arg-type]
        )
        tags = [tag for tag, _ in delivered]
        bodies = list(client.hmget(Channel.unacked_key, tags)) if tags else []
    except redis.RedisError as exc:
        logger.warning("could not read the broker's sync messages: %s", type(exc).__name__)
        return None
    try:
        for raw in waiting:
            held.update(claims_in(json.loads(raw)))
        for (_tag, delivered_at), raw in zip(delivered, bodies, strict=True):
            if raw is None:
                continue  # acknowledged between the two reads
            message = json.loads(raw)[0]
            eta = _eta(message)
            # A worker that took it recently is about to begin it; one holding it for a
            # retry countdown begins it when the countdown ends.
            if delivered_at > cutoff or (eta is not None and eta > cutoff):
                held.update(claims_in(message))
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        logger.warning("could not parse the broker's sync messages, keeping every claim: %s", type(exc).__name__)
        return None
    return held


def stranded(candidates: Iterable[Claim], now: datetime) -> set[Claim]:
    """The candidate claims no message in the broker will ever begin. Empty when unsure."""
    candidates = set(candidates)
    if not candidates:
        return set()
    held = held_claims(now, settings.SYNC_STRANDED_AFTER_SECONDS)
    if held is None:
        return set()
    return candidates - held
