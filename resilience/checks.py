"""Django system checks for resilience settings that would quietly break a guarantee."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register


@register()
def check_resilience_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    if settings.HEALTH_CHECK_TIMEOUT >= settings.HEALTH_TASK_SOFT_TIME_LIMIT:
        messages.append(
            Error(
                "HEALTH_CHECK_TIMEOUT must be below HEALTH_TASK_SOFT_TIME_LIMIT, or a hanging check "
                "kills its sweep task before the check's own timeout can report it.",
                id="resilience.E001",
            )
        )
    if settings.HEAL_LOCK_SECONDS <= 20:
        messages.append(
            Error("HEAL_LOCK_SECONDS must exceed 20 s: the heal task's limits sit below it.", id="resilience.E002")
        )
    if not 0 < settings.HEAL_BACKOFF_INITIAL_SECONDS <= settings.HEAL_BACKOFF_MAX_SECONDS:
        messages.append(
            Error("Need 0 < HEAL_BACKOFF_INITIAL_SECONDS <= HEAL_BACKOFF_MAX_SECONDS.", id="resilience.E003")
        )
    return messages
