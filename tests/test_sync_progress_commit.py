"""A sync's progress markers commit without waiting for the WAL flush; its outcome waits."""

from __future__ import annotations

import pytest
from django.db import connection

from sync.progress_commit import progress_transaction

pytestmark = pytest.mark.django_db(transaction=True)


def synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return str(cursor.fetchone()[0])


@pytest.mark.usefixtures("postgres_only")
def test_only_the_progress_transaction_skips_the_flush_wait():
    assert synchronous_commit() == "on"
    with progress_transaction():
        assert synchronous_commit() == "off"
    assert synchronous_commit() == "on"  # SET LOCAL: the next transaction (an outcome) waits again


@pytest.mark.usefixtures("postgres_only")
def test_the_setting_turns_it_off(settings):
    settings.SYNC_ASYNC_PROGRESS_COMMIT = False
    with progress_transaction():
        assert synchronous_commit() == "on"
