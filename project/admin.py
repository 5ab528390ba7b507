"""django-celery-beat's *Periodic tasks* admin, with its actions audited and permission-checked.

Disabling the beat entry ``project.master_scheduler`` stops every tick, so every way to
switch an entry leaves an audit entry (``core.audit``): the change form and delete
already do (Django logs them); the list actions (enable, disable, toggle, run) write
with ``update()`` and did not, and were offered to view-only users. Here they need the
change permission and log one entry per task they changed. The overview's own button
is ``project.overview.scheduler.set_scheduler_enabled``.
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django_celery_beat.admin import PeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from core.audit import audit
from project.tasks import MASTER_TASK_NAME


def _what(task: PeriodicTask, done: str) -> str:
    if task.name == MASTER_TASK_NAME:
        return f"{done} the master scheduler (Periodic tasks action)"
    return f"{done} the periodic task (Periodic tasks action)"


def _audit_each(request: HttpRequest, tasks: list[PeriodicTask], done: str) -> None:
    for task in tasks:
        audit(request, [task], _what(task, done))


admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class AuditedPeriodicTaskAdmin(PeriodicTaskAdmin):
    @admin.action(description=PeriodicTaskAdmin.enable_tasks.short_description, permissions=["change"])
    def enable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        changing = list(queryset.filter(enabled=False))
        super().enable_tasks(request, queryset)
        _audit_each(request, changing, "Enabled")

    @admin.action(description=PeriodicTaskAdmin.disable_tasks.short_description, permissions=["change"])
    def disable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        changing = list(queryset.filter(enabled=True))
        super().disable_tasks(request, queryset)
        _audit_each(request, changing, "Disabled")

    @admin.action(description=PeriodicTaskAdmin.toggle_tasks.short_description, permissions=["change"])
    def toggle_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        tasks = list(queryset)
        super().toggle_tasks(request, queryset)
        _audit_each(request, [t for t in tasks if t.enabled], "Disabled (toggled)")
        _audit_each(request, [t for t in tasks if not t.enabled], "Enabled (toggled)")

    @admin.action(description=PeriodicTaskAdmin.run_tasks.short_description, permissions=["change"])
    def run_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        tasks = list(queryset)
        super().run_tasks(request, queryset)
        _audit_each(request, tasks, "Ran now")
