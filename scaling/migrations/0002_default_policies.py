"""Create the policies for backend, frontend and worker, disabled until an operator enables them."""

from django.db import migrations

IMAGE = "fabric-control-plane:latest"

DEFAULT_POLICIES = [
    {
        "service": "backend",
        "min_instances": 1,
        "max_instances": 4,
        "target_cpu_percent": 70.0,
        "target_response_time_ms": 500.0,
        "image": IMAGE,
        "command": ["gunicorn", "project.wsgi", "--bind", "0.0.0.0:8000"],
    },
    {
        "service": "frontend",
        "min_instances": 1,
        "max_instances": 4,
        "target_cpu_percent": 70.0,
        "target_memory_percent": 80.0,
        "image": IMAGE,
        "command": ["gunicorn", "project.wsgi", "--bind", "0.0.0.0:8080"],
    },
    {
        "service": "worker",
        "min_instances": 1,
        "max_instances": 8,
        "target_queue_depth_per_instance": 10.0,
        "target_queue_latency_seconds": 30.0,
        "queues": ["celery"],
        "celery_worker": True,
        "image": IMAGE,
        "command": ["celery", "-A", "project", "worker", "--loglevel", "INFO"],
        # At least the task soft time limit, so a stopping worker can finish its task.
        "stop_timeout": 300,
    },
]


def create_policies(apps, schema_editor):
    ScalingPolicy = apps.get_model("scaling", "ScalingPolicy")
    for fields in DEFAULT_POLICIES:
        values = dict(fields)
        service = values.pop("service")
        ScalingPolicy.objects.get_or_create(service=service, defaults={**values, "enabled": False})


def remove_untouched_policies(apps, schema_editor):
    ScalingPolicy = apps.get_model("scaling", "ScalingPolicy")
    ScalingPolicy.objects.filter(service__in=[p["service"] for p in DEFAULT_POLICIES], enabled=False).delete()


class Migration(migrations.Migration):
    dependencies = [("scaling", "0001_initial")]

    operations = [migrations.RunPython(create_policies, remove_untouched_policies)]
