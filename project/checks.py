"""Django system checks for settings that would break the control plane's guarantees."""

from __future__ import annotations

import os
from itertools import pairwise
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register


@register()
def check_time_limits(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """soft time limit < hard time limit < lease < visibility timeout, or syncs can run twice."""
    chain = [
        ("SYNC_SOFT_TIME_LIMIT", settings.SYNC_SOFT_TIME_LIMIT),
        ("SYNC_HARD_TIME_LIMIT", settings.SYNC_HARD_TIME_LIMIT),
        ("SYNC_LEASE_SECONDS", settings.SYNC_LEASE_SECONDS),
        ("BROKER_VISIBILITY_TIMEOUT", settings.BROKER_VISIBILITY_TIMEOUT),
    ]
    errors: list[CheckMessage] = []
    for (low_name, low), (high_name, high) in pairwise(chain):
        if not low < high:
            errors.append(Error(f"{low_name} ({low}) must be less than {high_name} ({high}).", id="project.E001"))
    longest_wait = settings.SYNC_RETRY_BACKOFF_MAX + settings.SYNC_LEASE_SECONDS
    if longest_wait >= settings.BROKER_VISIBILITY_TIMEOUT:
        errors.append(
            Error(
                "BROKER_VISIBILITY_TIMEOUT must exceed SYNC_RETRY_BACKOFF_MAX + SYNC_LEASE_SECONDS, "
                "or Redis redelivers retried messages in a loop.",
                id="project.E002",
            )
        )
    return errors


@register()
def check_celery_reliability(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    if settings.CELERY_TASK_ACKS_LATE and settings.CELERY_WORKER_PREFETCH_MULTIPLIER != 1:
        messages.append(
            Warning(
                "CELERY_WORKER_PREFETCH_MULTIPLIER above 1 with late acks holds long syncs behind each other.",
                id="project.W001",
            )
        )
    # kombu's BRPOP waits 1 s on the server; a read timeout at or below it would drop
    # healthy consumer connections. One above the soft time limit lets a sync's retry
    # publish on a dead connection outlast the limit.
    if not 1 < settings.BROKER_SOCKET_TIMEOUT < settings.SYNC_SOFT_TIME_LIMIT:
        messages.append(
            Warning(
                f"BROKER_SOCKET_TIMEOUT ({settings.BROKER_SOCKET_TIMEOUT:g}) should be above 1 s (kombu's BRPOP "
                f"timeout) and below SYNC_SOFT_TIME_LIMIT ({settings.SYNC_SOFT_TIME_LIMIT}).",
                id="project.W006",
            )
        )
    if settings.TIME_ZONE != "UTC" or not settings.USE_TZ:
        messages.append(Warning("TIME_ZONE must be UTC with USE_TZ=True for leases and schedules.", id="project.W002"))
    return messages


@register(deploy=True)
def check_production_services(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    if "CELERY_BROKER_URL" not in os.environ:
        messages.append(Warning("CELERY_BROKER_URL is not set: using the embedded broker address.", id="project.W003"))
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        messages.append(Warning("Running on SQLite: set DATABASE_URL to PostgreSQL for production.", id="project.W004"))
    if str(settings.SECRET_KEY).startswith("ephemeral-"):
        messages.append(
            Warning(
                "No DJANGO_SECRET_KEY and no var/secret_key: this process made up a key of its own, so "
                "sessions break across processes and restarts. Set DJANGO_SECRET_KEY.",
                id="project.W005",
            )
        )
    return messages
