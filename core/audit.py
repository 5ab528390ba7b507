"""The audit trail of operator actions: Django admin ``LogEntry`` rows (who, what, when, which objects).

Every state-changing admin action calls ``audit`` for the objects it acted on, so the
admin's own history pages and *Recent actions* show it, and nothing new has to be
learned to read it.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db.models import Model
from django.http import HttpRequest


def audit(request: HttpRequest, objects: Iterable[Model], message: str) -> int:
    """Record that ``request.user`` did ``message`` to each of ``objects``; returns how many rows."""
    user_id = getattr(request.user, "pk", None)
    rows = list(objects)
    if user_id is None or not rows:
        return 0
    LogEntry.objects.log_actions(user_id, rows, CHANGE, change_message=message, single_object=False)
    return len(rows)


def audit_as_system(username: str, objects: Iterable[Model], message: str) -> int:
    """Record that the system, acting as ``username`` (e.g. "webhook"), did ``message`` to each of ``objects``.

    ``LogEntry`` needs a user: ``username`` is created on first use, inactive and with
    no usable password, so it can never log in. Returns how many rows.
    """
    rows = list(objects)
    if not rows:
        return 0
    user_model = get_user_model()
    user, _ = user_model._default_manager.get_or_create(
        **{user_model.USERNAME_FIELD: username}, defaults={"is_active": False, "password": make_password(None)}
    )
    LogEntry.objects.log_actions(user.pk, rows, CHANGE, change_message=message, single_object=False)
    return len(rows)
