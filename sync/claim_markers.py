"""Claim markers: each claim's token, kept in the broker beside the claim's messages.

A claimed fabric waits QUEUED until a worker begins its message. If the broker loses
that message (Redis restarted without persistence, flushed, failed over to an empty
replica), nothing will ever begin it, and only the queue lease
(``SYNC_QUEUE_LEASE_SECONDS``, 15 minutes) would free the fabric. So before a claim is
taken, a marker key for its token is written to the broker's own Redis database:
whatever loses the messages loses the marker with them. Each tick asks which tokens
of QUEUED claims lost their marker (one pipelined ``EXISTS`` per distinct token, and a
tick's claim is one token however many fabrics it holds) and releases those claims,
so the same tick dispatches them again. A marker lost on its own (an eviction) only
costs a redundant dispatch: the old message finds its token gone and is dropped.

Only a Redis broker has markers; with any other broker this module does nothing and
the queue lease alone frees lost claims.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis

from core.clients import broker_client

logger = logging.getLogger(__name__)

KEY_PREFIX = "fcp:claim:"
# A marker outlives the lease it vouches for, so an unexpired QUEUED lease never
# finds its marker expired.
MARGIN_SECONDS = 300


def mark(token: str, lease_seconds: float) -> None:
    """Write ``token``'s marker for a lease of ``lease_seconds``; raises if the broker is down.

    Called before the claim: a broker that cannot take the marker cannot take the
    messages either, and nothing is claimed.
    """
    client = broker_client()
    if client is not None:
        client.set(KEY_PREFIX + token, 1, ex=int(lease_seconds) + MARGIN_SECONDS)


def refresh(token: str, lease_seconds: float) -> None:
    """Extend a marker for a retry's longer lease; a broker error only costs a redundant dispatch."""
    try:
        mark(token, lease_seconds)
    except redis.RedisError as exc:
        logger.warning("could not refresh the claim marker of a retried sync: %s", type(exc).__name__)


def lost(tokens: Iterable[str]) -> set[str]:
    """The tokens whose marker is gone. Empty when the broker cannot be asked: never guess."""
    tokens = sorted(set(tokens))
    client = broker_client()
    if client is None or not tokens:
        return set()
    try:
        pipe = client.pipeline(transaction=False)
        for token in tokens:
            pipe.exists(KEY_PREFIX + token)
        present = pipe.execute()
    except redis.RedisError as exc:
        logger.warning("could not check claim markers: %s", type(exc).__name__)
        return set()
    return {token for token, exists in zip(tokens, present, strict=True) if not exists}
