"""The system check that keeps the broker's read timeout between BRPOP's wait and a sync's soft limit."""

from __future__ import annotations

import pytest
from django.test import override_settings

from project.checks import check_celery_reliability


def _ids() -> set[str]:
    return {message.id for message in check_celery_reliability() if message.id}


def test_the_default_broker_socket_timeout_passes() -> None:
    assert "project.W006" not in _ids()


@pytest.mark.parametrize("timeout", [0.5, 1.0])
def test_a_timeout_at_or_below_brpops_wait_is_flagged(timeout: float) -> None:
    with override_settings(BROKER_SOCKET_TIMEOUT=timeout):
        assert "project.W006" in _ids()


def test_a_timeout_beyond_the_soft_time_limit_is_flagged() -> None:
    with override_settings(BROKER_SOCKET_TIMEOUT=300.0, SYNC_SOFT_TIME_LIMIT=300):
        assert "project.W006" in _ids()
