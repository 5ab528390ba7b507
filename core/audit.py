"""The audit trail of operator actions: Django admin ``LogEntry`` rows (who, what, when, which objects).

Every state-changing admin action calls ``audit`` for the objects it acted on, so the
admin's own history pages and *Recent actions* show it, and nothing new has to be
learned to read it.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.admin.models import CHANGE, LogEntry
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
