"""Active connections to our own database, from PostgreSQL's ``pg_stat_activity``."""

from __future__ import annotations

from datetime import datetime

from django.db import DatabaseError
from django.db.backends.base.base import BaseDatabaseWrapper

from scaling.decisions import MetricReading

# Connections doing work right now, or holding a transaction open between statements
# (they hold a server process and locks just the same). Our own query is not load.
_ACTIVE_CONNECTIONS = """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database()
      AND pid <> pg_backend_pid()
      AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')
"""


def active_connections(connection: BaseDatabaseWrapper, now: datetime) -> MetricReading:
    """The count on PostgreSQL; on any other database the metric is missing, never 0."""
    if connection.vendor != "postgresql":
        return MetricReading.missing(f"{connection.vendor} keeps no connection statistics (PostgreSQL only)")
    try:
        with connection.cursor() as cursor:
            # Inside a transaction PostgreSQL keeps serving the first statistics snapshot.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(_ACTIVE_CONNECTIONS)
            row = cursor.fetchone()
    except DatabaseError as exc:
        return MetricReading.missing(f"pg_stat_activity unreadable: {exc}")
    return MetricReading.present(float(row[0] if row else 0), now)
