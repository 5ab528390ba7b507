"""System checks for scaling settings that would break its guarantees."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register


@register()
def check_scaling_time_limits(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """drain < task soft limit < hard limit < lock TTL, or two evaluations could act at once."""
    chain = [
        ("SCALING_WORKER_SOFT_TIME_LIMIT", settings.SCALING_WORKER_SOFT_TIME_LIMIT),
        ("SCALING_TASK_SOFT_TIME_LIMIT", settings.SCALING_TASK_SOFT_TIME_LIMIT),
        ("SCALING_TASK_TIME_LIMIT", settings.SCALING_TASK_TIME_LIMIT),
        ("SCALING_LOCK_SECONDS", settings.SCALING_LOCK_SECONDS),
    ]
    errors: list[CheckMessage] = []
    for (low_name, low), (high_name, high) in pairwise(chain):
        if not low < high:
            errors.append(Error(f"{low_name} ({low}) must be less than {high_name} ({high}).", id="scaling.E001"))
    if settings.SCALING_METRIC_STALE_SECONDS < settings.TICK_SECONDS:
        errors.append(
            Error(
                "SCALING_METRIC_STALE_SECONDS must be at least one tick, or every metric reads as stale.",
                id="scaling.E002",
            )
        )
    return errors


@register()
def check_scaling_allowed_bind_roots(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Bind roots are host paths: a relative one means nothing, and / allows every host file."""
    messages: list[CheckMessage] = []
    for root in settings.SCALING_ALLOWED_BIND_ROOTS:
        if not str(root).startswith("/"):
            messages.append(
                Error(
                    f"SCALING_ALLOWED_BIND_ROOTS entry {root!r} is not an absolute path; it allows nothing.",
                    id="scaling.E003",
                )
            )
        elif str(root).rstrip("/") == "":
            messages.append(
                Warning(
                    "SCALING_ALLOWED_BIND_ROOTS contains /: policies may bind-mount any host path, "
                    "/etc included. List the directories they need instead.",
                    id="scaling.W001",
                )
            )
    return messages
