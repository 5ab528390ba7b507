"""``Fabric.failing_since``: when the current failure streak began, stored on the fabric.

The admin used to compute it from the runs (the first failed run since the last success)
for every fabric it sorted; now the code that counts a failure sets it and a success
clears it (``sync.runner``, ``sync.leases``). The backfill gives each fabric in a streak
(failures counted, or status error or suspended) what the admin showed: the start of its
first failed run since the last success (or creation), else its last attempt, else its
creation. One UPDATE, on SQLite and PostgreSQL.
"""

from django.db import migrations, models
from django.db.models import OuterRef, Q, Subquery
from django.db.models.functions import Coalesce

FAILED_RUNS = ["failed", "retrying", "lost"]
FAILING_STATUSES = ["error", "suspended"]


def backfill_failing_since(apps, schema_editor):
    Fabric = apps.get_model("sync", "Fabric")
    SyncRun = apps.get_model("sync", "SyncRun")
    first_failure = Subquery(
        SyncRun.objects.filter(
            fabric=OuterRef("pk"),
            status__in=FAILED_RUNS,
            started_at__gte=Coalesce(OuterRef("last_sync"), OuterRef("created_at")),
        )
        .order_by("started_at")
        .values("started_at")[:1]
    )
    in_streak = Q(consecutive_failures__gt=0) | Q(sync_status__in=FAILING_STATUSES)
    Fabric.objects.filter(in_streak, failing_since__isnull=True).update(
        failing_since=Coalesce(first_failure, "last_attempt_at", "created_at")
    )


class Migration(migrations.Migration):
    dependencies = [
        ("sync", "0008_manifestfile"),
    ]

    operations = [
        migrations.AddField(
            model_name="fabric",
            name="failing_since",
            field=models.DateTimeField(
                blank=True,
                db_index=True,
                help_text="Start of the failed attempt that began the failure streak.",
                null=True,
            ),
        ),
        migrations.RunPython(backfill_failing_since, migrations.RunPython.noop, elidable=True),
    ]
