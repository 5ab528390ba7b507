"""One ``git ls-remote`` per repository and branch per claim, shared by its fabrics.

Many fabrics often follow one repository (2,000 fabrics on 20 repositories): asking
the remote once per fabric costs a git process each and sends the remote a storm of
identical questions (the Argo CD complaint, argo-cd #9017). So the answer is kept in
Redis for ``SYNC_REMOTE_CHECK_SECONDS`` and serves every fabric of the same claim:

1. The key is a digest of the claim token (one per tick, or per push, or per manual
   sync) and ``GitSource.remote_identity`` (URL, branch and the credential git sends,
   keyed-hashed: no credential or URL appears in Redis). A push or a "Sync now" makes
   a claim of its own, so it always asks the remote afresh; fabrics with different
   credentials never share an answer (one may be refused where another is not).
2. The URL rules are checked before the cache is read, exactly as before a git call.
3. Only a commit is kept: every failure (refused, missing branch, unreachable, breaker
   open) is the fabric's own and is asked for again by the next fabric.
4. Redis unavailable: each fabric asks the remote itself, as it did before.

A fabric may thus record the commit its repository had up to
``SYNC_REMOTE_CHECK_SECONDS`` before its own sync started; a push after that answer
makes its fabrics due again and gets an answer of its own.
"""

from __future__ import annotations

import logging

import redis
from django.conf import settings
from django.core.cache import cache
from django.utils.crypto import salted_hmac

from core.clients import redis_client
from sync.sources.git import GitSource

logger = logging.getLogger(__name__)
REDIS_TIMEOUT = 1.0


def _key(claim_token: str, source: GitSource) -> str:
    digest = salted_hmac("sync.remote_check", f"{claim_token}\n{source.remote_identity()}", algorithm="sha256")
    return cache.make_key(f"sync:remote-commit:{digest.hexdigest()}")


def branch_commit(source: GitSource, claim_token: str) -> str:
    """``source.remote_commit()``, asked once per claim and remote identity (see the module)."""
    seconds = settings.SYNC_REMOTE_CHECK_SECONDS
    if seconds <= 0 or not claim_token:
        return source.remote_commit()
    source.check_source()
    key = _key(claim_token, source)
    client = redis_client(timeout=REDIS_TIMEOUT)
    try:
        cached = client.get(key)
    except redis.RedisError as exc:
        logger.debug("remote check cache unavailable (%s): asking the remote", type(exc).__name__)
        return source.remote_commit()
    if cached:
        return cached.decode() if isinstance(cached, bytes) else str(cached)
    commit = source.remote_commit()
    try:
        client.set(key, commit, ex=seconds)
    except redis.RedisError as exc:
        logger.debug("remote check cache unavailable (%s): answer not shared", type(exc).__name__)
    return commit
