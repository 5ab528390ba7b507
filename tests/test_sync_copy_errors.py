"""The COPY that stores manifests fails with Django's exceptions, like every other statement.

``sync.resources._insert`` writes through psycopg's own cursor on PostgreSQL. The sync
tells a database outage (retried, not the fabric's failure) from a fabric's fault by
Django's exception classes, so the COPY's errors must arrive as those classes. Real:
the test's own PostgreSQL session is terminated by another session mid-COPY, as the
full chaos profile's ``pg_terminate_backend`` storm did.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import InterfaceError, OperationalError, connection, transaction

from sync.models import ManifestFile
from sync.resources import _insert
from tests.factories import make_fabric

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_session_terminated_mid_copy_raises_djangos_operational_error() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("COPY is PostgreSQL's; SQLite inserts through bulk_create")
    fabric = make_fabric("file:///nowhere")
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    fields = ["fabric_id", "path", "blob", "parser", "resources"]

    def rows() -> Iterator[tuple[Any, ...]]:
        yield (fabric.id, "a.yaml", "0" * 40, 1, 1)
        with psycopg.connect(**connection.get_connection_params(), autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", [pid])
        yield from ((fabric.id, f"{n}.yaml", "0" * 40, 1, 1) for n in range(1000))

    try:
        with pytest.raises((OperationalError, InterfaceError)), transaction.atomic():
            _insert(ManifestFile, fields, rows())
    finally:
        connection.close()  # the session is gone: the next query opens a new one
    assert not ManifestFile.objects.filter(fabric=fabric).exists()
