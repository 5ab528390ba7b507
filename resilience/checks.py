"""Django system checks for resilience settings that would quietly break a guarantee."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register


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
    if settings.HEALTH_SWEEP_EXPIRES_SECONDS >= 60:
        messages.append(
            Warning(
                "HEALTH_SWEEP_EXPIRES_SECONDS of 60 s or more lets stale sweeps pile up behind the next tick's.",
                id="resilience.W001",
            )
        )
    if settings.BREAKER_CLOSED_TTL > 1.0:
        messages.append(
            Warning(
                "BREAKER_CLOSED_TTL above 1 s lets a process keep calling that long after another one "
                "tripped the breaker.",
                id="resilience.W002",
            )
        )
    return messages
