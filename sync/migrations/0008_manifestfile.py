# Issue 11: a sync re-reads only the manifest files whose Git blob changed.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("sync", "0007_syncrun_retention_idx"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="resource",
            index=models.Index(fields=["fabric", "source_file"], name="resource_source_idx"),
        ),
        migrations.CreateModel(
            name="ManifestFile",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("path", models.CharField(max_length=500)),
                ("blob", models.CharField(max_length=64)),
                ("parser", models.PositiveSmallIntegerField()),
                ("resources", models.PositiveIntegerField()),
                (
                    "fabric",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="manifest_files",
                        to="sync.fabric",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("fabric", "path"), name="manifestfile_unique_per_fabric")
                ],
            },
        ),
    ]
