"""Commits of a sync's progress markers that do not wait for PostgreSQL's WAL flush.

On the development machine a committed write costs about 3.7 ms, nearly all of it the
``fdatasync`` of the WAL, against 0.15 ms for a round trip; an unchanged sync commits
three times. Two of those commits only say that a sync is under way: ``leases.begin``
(QUEUED -> SYNCING) and the RUNNING ``SyncRun``. ``progress_transaction`` commits them
with ``synchronous_commit = off`` for that transaction alone. What that changes, and
only if the PostgreSQL server crashes (a clean stop, even ``-m fast``, flushes first):

1. Such a commit is visible to every session at once, and on disk within three
   ``wal_writer_delay`` (0.6 s by default). A crash inside that window loses it, as if
   the sync had not begun: the fabric is QUEUED under its claim, with no RUNNING run
   (and a dead earlier delivery's run, which ``begin`` closes in the same transaction,
   is closed again by the next ``begin`` or the reaper).
   The delivery meets the outage like any other query and retries (``sync.tasks``);
   its resumed ``begin`` then starts from QUEUED.
2. Every outcome (success, failure, skip, a lost lease) keeps waiting for the flush,
   and a flush covers all the WAL before it: once an outcome is acknowledged, the
   progress markers before it are on disk too.

``SYNC_ASYNC_PROGRESS_COMMIT = False`` makes these commits wait like all others. SQLite:
no effect.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connections, transaction


@contextmanager
def progress_transaction(using: str = "default") -> Iterator[None]:
    """A transaction for a progress marker: committed without waiting for the WAL flush."""
    with transaction.atomic(using=using):
        connection = connections[using]
        if settings.SYNC_ASYNC_PROGRESS_COMMIT and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        yield
