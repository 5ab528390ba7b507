"""The per-service scaling lock on the real Redis: one holder, token-checked release, expiry."""

from __future__ import annotations

import time
import uuid

import pytest

from core.clients import redis_client
from scaling import locks


def lock_holder(service: str) -> str | None:
    """The token holding ``service``'s lock, read straight from Redis."""
    raw = redis_client().get(locks.lock_key(service))
    return raw.decode() if isinstance(raw, bytes) else raw


@pytest.fixture
def service():
    name = f"svc-{uuid.uuid4().hex[:8]}"
    yield name
    redis_client().delete(locks.lock_key(name))


def test_only_one_holder_gets_the_lock(service):
    first = locks.acquire(service, ttl_seconds=30)

    assert first is not None
    assert locks.acquire(service, ttl_seconds=30) is None
    assert lock_holder(service) == first


def test_a_wrong_token_cannot_release_the_lock(service):
    token = locks.acquire(service, ttl_seconds=30)
    assert token is not None

    assert locks.release(service, "not-the-token") is False
    assert lock_holder(service) == token
    assert locks.release(service, token) is True
    assert lock_holder(service) is None


def test_an_expired_holder_cannot_release_the_next_holders_lock(service):
    old = locks.acquire(service, ttl_seconds=0.2)
    assert old is not None
    time.sleep(0.3)  # Redis expires the key on its own clock
    new = locks.acquire(service, ttl_seconds=30)

    assert new is not None
    assert locks.release(service, old) is False
    assert lock_holder(service) == new


def test_the_context_manager_releases_and_reports_a_held_lock(service):
    with locks.service_lock(service) as token:
        assert token is not None
        with locks.service_lock(service) as second:
            assert second is None
        assert lock_holder(service) == token  # the refused attempt released nothing
    assert lock_holder(service) is None


def test_different_services_do_not_block_each_other(service):
    other = f"{service}-other"
    try:
        assert locks.acquire(service, ttl_seconds=30) is not None
        assert locks.acquire(other, ttl_seconds=30) is not None
    finally:
        redis_client().delete(locks.lock_key(other))
