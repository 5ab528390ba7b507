"""Database connections in Celery workers: kept across tasks by Django's own rule.

Celery's Django fix-up (``celery.fixups.django.DjangoWorkerFixup``) closes every
database connection before and after every task, whatever ``CONN_MAX_AGE`` says
(unless ``CELERY_DB_REUSE_MAX``, which counts tasks and never checks the connection).
So each task opened a new PostgreSQL session: a fork on the server, authentication,
session set-up, about a tenth of an unchanged sync's time.

``install`` makes a worker treat a task the way Django treats a request: at its start
and end, ``django.db.close_old_connections()`` closes a connection only if it is past
``CONN_MAX_AGE``, was left outside autocommit, or had an error and no longer answers;
with ``CONN_HEALTH_CHECKS`` the first query of the next task checks it first. So:

1. A pool process opens one connection and keeps it for ``CONN_MAX_AGE`` seconds.
2. A connection the database dropped (restart, outage, a reset) is found dead by the
   task that uses it next (the health check, or the error the sync turns into a
   ``DatabaseUnavailable`` retry) and closed; the retry opens a new one.
3. SQLite keeps ``CONN_MAX_AGE = 0``, so there nothing changes.

What the fix-up does at process start stays as it is: a pool child still drops the
connections it inherited from the parent (``on_worker_process_init``).
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals
from celery.fixups.django import DjangoFixup


def install(app: Celery) -> None:
    """Honour ``CONN_MAX_AGE`` and ``CONN_HEALTH_CHECKS`` in ``app``'s workers."""

    def keep_connections(sender: Any = None, **kwargs: Any) -> None:
        for fixup in getattr(app, "_fixups", []):
            if isinstance(fixup, DjangoFixup):
                # The fix-up's task_prerun/task_postrun handlers call this attribute.
                fixup.worker_fixup.close_database = close_old_connections

    # Connected after the fix-up's own worker_init receiver (made when the app was
    # created), so this replaces what it installed, in the worker process only.
    signals.worker_init.connect(keep_connections, weak=False)


def close_old_connections(**kwargs: Any) -> None:
    """Django's end-of-request rule (``django.db.close_old_connections``), for tasks."""
    from django.db import close_old_connections as django_close_old_connections

    django_close_old_connections()
