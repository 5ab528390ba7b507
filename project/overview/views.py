"""The admin index with the overview on top, and the overview's stop/start scheduler button.

Both are wrapped by ``admin.site.admin_view``: staff login required (others go to the
admin login), never cached, CSRF-protected. Before anything is read, a scheduler whose
last tick is older than ``HEALTH_BEAT_MAX_AGE`` is recorded as one health transition
(``resilience.verdict.notice_stale_scheduler``: idempotent, one conditional UPDATE), so
the components section already shows it.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from project.overview import charts, sections
from project.overview.scheduler import read_scheduler, set_scheduler_enabled, stale_after
from project.overview.workers import queue_workers
from resilience import verdict

CHANGE_SCHEDULER = "django_celery_beat.change_periodictask"


def overview_context(request: HttpRequest) -> dict[str, Any]:
    """Everything the overview shows, computed now."""
    now = timezone.now()
    verdict.notice_stale_scheduler(now)
    scheduler = read_scheduler(now)
    components = sections.component_summary(now)
    sweep_age = components.sweep_age(now)
    sweeps_stale = sweep_age is not None and sweep_age > stale_after().total_seconds()
    return {
        "now": now,
        "scheduler": scheduler,
        "may_toggle_scheduler": request.user.has_perm(CHANGE_SCHEDULER),
        "stale_after_seconds": int(stale_after().total_seconds()),
        "workers": queue_workers(now),
        "fabrics": sections.fabric_summary(),
        "components": components,
        "sweep_age": sweep_age,
        "sweeps_stale": sweeps_stale,
        "breakers": sections.breaker_summary(),
        "scaling": sections.scaling_summary(),
        "charts": charts.all_charts(now),
    }


def _index(request: HttpRequest) -> HttpResponse:
    site = admin.site
    context = {
        **site.each_context(request),
        "title": site.index_title,
        "subtitle": None,
        "app_list": site.get_app_list(request),
        "overview": overview_context(request),
    }
    request.current_app = site.name
    return TemplateResponse(request, "admin/overview_index.html", context)


@require_POST
def _toggle_scheduler(request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm(CHANGE_SCHEDULER):
        return HttpResponseForbidden("needs the change permission on periodic tasks")
    enabled = request.POST.get("enabled") == "1"
    if set_scheduler_enabled(request, enabled):
        done = "started: ticks resume" if enabled else "stopped: no tick runs until it is started again"
        messages.success(request, f"Master scheduler {done}.")
    else:
        messages.info(request, f"The master scheduler was already {'enabled' if enabled else 'disabled'}.")
    return HttpResponseRedirect(reverse("overview"))


index = admin.site.admin_view(_index)
toggle_scheduler = admin.site.admin_view(_toggle_scheduler)
