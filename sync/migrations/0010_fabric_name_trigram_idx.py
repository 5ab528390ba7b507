"""A trigram index for the fabric list's search, on PostgreSQL only.

The admin searches ``name__icontains``, which Django writes as
``UPPER("name"::text) LIKE UPPER('%…%')``: no B-tree helps, and without statistics on
that expression the planner guessed one matching row and joined and sorted every fabric
before taking the page (23 ms at 10,000). A GIN index on the same expression with
``gin_trgm_ops`` answers a narrow search from the index, and ANALYZE keeps statistics on
its expression, so a broad one reads the name index in order and stops after one page.

``pg_trgm`` ships with PostgreSQL and is a trusted extension (13+): the database's owner
may create it. Where it is missing or the role may not create it, the migration says
so and goes on without the index (the search still works, only slower). SQLite (the
embedded mode) has neither: there the migration does nothing.
The index is not in the model's ``Meta`` because it cannot exist on SQLite.
"""

import sys

from django.db import DatabaseError, migrations, transaction

INDEX = "fabric_name_trgm_idx"


def create_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    try:
        with transaction.atomic(using=schema_editor.connection.alias):  # a savepoint: a refusal aborts nothing else
            schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except DatabaseError as exc:
        sys.stderr.write(f"  no trigram index for the fabric search (pg_trgm: {str(exc).strip()})\n")
        return
    schema_editor.execute(
        f'CREATE INDEX IF NOT EXISTS {INDEX} ON "sync_fabric" USING gin ((UPPER("name"::text)) gin_trgm_ops)'
    )


def drop_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")  # the extension stays: others may use it


class Migration(migrations.Migration):
    dependencies = [
        ("sync", "0009_fabric_failing_since"),
    ]

    operations = [
        migrations.RunPython(create_index, drop_index),
    ]
