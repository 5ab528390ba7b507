"""The single beat entry, defined here and upserted into django-celery-beat's tables.

Created idempotently after every ``migrate`` (and when beat starts): a missing
entry is created, an existing one keeps the operator's choices (enabled or not),
so disabling it in the admin under *Periodic tasks* stops the ticks for good.
"""

from __future__ import annotations

from typing import Any

from celery.signals import beat_init
from django.db.models.signals import post_migrate
from django.dispatch import receiver

from project.tasks import MASTER_TASK_NAME

TICK_SECONDS = 60
# A tick that waited in the queue longer than this is dropped: the next one is due.
TICK_EXPIRES_SECONDS = 55


def ensure_master_schedule() -> bool:
    """Create the 60 s master entry if missing. Returns True when it was created."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every_minute, _ = IntervalSchedule.objects.get_or_create(every=TICK_SECONDS, period=IntervalSchedule.SECONDS)
    _, created = PeriodicTask.objects.get_or_create(
        name=MASTER_TASK_NAME,
        defaults={
            "task": MASTER_TASK_NAME,
            "interval": every_minute,
            "expire_seconds": TICK_EXPIRES_SECONDS,
            "description": "Master tick: sync due fabrics, scaling and health (see docs/architecture.md).",
        },
    )
    return created


@receiver(post_migrate)
def _after_migrate(sender: Any, app_config: Any = None, **kwargs: Any) -> None:
    if app_config is not None and app_config.label == "django_celery_beat":
        ensure_master_schedule()


@beat_init.connect
def _on_beat_start(**kwargs: Any) -> None:
    ensure_master_schedule()
