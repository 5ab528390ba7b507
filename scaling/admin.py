"""Admin for scaling: policies (editable, validated) and events (read-only, filterable).

The policy changelist answers "how many instances does each service run, and why?"
from one page: the count the engine reported at the last evaluation and when, the
limits, the targets, the cooldown and the last decision with its rule. The page never
calls the Docker engine: it renders the same with the engine down, and its queries do
not grow with the number of policies. The template's environment may hold secrets and
is never shown in a list.

Actions that change state (queueing an evaluation records events and
recommendations) need the change permission and leave a ``LogEntry`` per policy.

A dry-run decision is recorded with the count it *would* have scaled to, so every
place that shows one says "dry run" beside it: the policy's last decision, the event
list and the event's page. The event list stays as fast at 100,000 events as at ten:
one count, filters drawn without reading the table (services by a loose index scan,
rules from the code, "in the last hour / day / …" instead of a date drill-down).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from core.admin_filters import DistinctValuesFilter, recent_filter
from core.audit import audit
from core.display import AdminListMixin, clipped, stamp
from scaling.decisions import MetricName, Rule, ScaleDirection
from scaling.dispatch import publish_evaluations
from scaling.models import TARGET_FIELDS, ScalingEvent, ScalingPolicy, ScalingTrigger

REASON_CHARS = 90
DRY_RUN_PILL = (
    '<span title="Decided and recorded only: no instance was started or stopped" '
    'style="background:#6b7280;color:#fff;padding:1px 6px;border-radius:9px;white-space:nowrap">dry run</span>'
)


def dry_run_pill() -> SafeString:
    return mark_safe(DRY_RUN_PILL)  # noqa: S308 (a constant)


def _last_event(field: str, **filters: Any) -> Subquery:
    events = ScalingEvent.objects.filter(service=OuterRef("service"), **filters).order_by("-created_at", "-id")
    return Subquery(events.values(field)[:1])


@admin.register(ScalingPolicy)
class ScalingPolicyAdmin(AdminListMixin, admin.ModelAdmin):
    list_filter = ["enabled", "dry_run", "celery_worker"]
    search_fields = ["service", "image"]
    actions = ["evaluate_now_dry_run"]
    list_display = ["service", "enabled", "dry_run", "instances", "limits", "targets", "cooldown", "last_decision"]
    readonly_fields = ["observed_instances", "observed_at", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["service", "enabled", "dry_run", ("min_instances", "max_instances")]}),
        (
            "Targets (set any subset)",
            {"fields": [*TARGET_FIELDS, "queues", "celery_worker"]},
        ),
        (
            "Behaviour",
            {"fields": ["tolerance", "scale_up_step_limit", "scale_down_stabilization_seconds", "cooldown_seconds"]},
        ),
        (
            "Container template",
            {
                "fields": [
                    "image",
                    "command",
                    "environment",
                    "labels",
                    "network",
                    "volumes",
                    "working_dir",
                    "stop_timeout",
                ]
            },
        ),
        ("Record", {"fields": [("observed_instances", "observed_at"), "created_at", "updated_at"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ScalingPolicy]:
        # The last decision and the last successful action, one subquery each, not a
        # query per row.
        return (
            super()
            .get_queryset(request)
            .annotate(
                last_action=_last_event("action"),
                last_rule=_last_event("rule"),
                last_success=_last_event("success"),
                last_event_at=_last_event("created_at"),
                last_dry_run=_last_event("dry_run"),
                last_scaled_at=_last_event(
                    "created_at", success=True, dry_run=False, action__in=[ScaleDirection.UP, ScaleDirection.DOWN]
                ),
            )
        )

    @admin.display(description="instances (observed)", ordering="observed_instances")
    def instances(self, policy: ScalingPolicy) -> str:
        if policy.observed_instances is None or policy.observed_at is None:
            return "not observed yet"
        return f"{policy.observed_instances} at {stamp(policy.observed_at)}"

    @admin.display(description="min-max")
    def limits(self, policy: ScalingPolicy) -> str:
        return f"{policy.min_instances}-{policy.max_instances}"

    @admin.display(description="targets")
    def targets(self, policy: ScalingPolicy) -> str:
        return ", ".join(f"{name} {value:g}" for name, value in policy.targets().items()) or "none"

    @admin.display(description="cooldown left")
    def cooldown(self, policy: ScalingPolicy) -> str:
        last = getattr(policy, "last_scaled_at", None)
        if last is None or not policy.cooldown_seconds:
            return "—"
        left = (last + timedelta(seconds=policy.cooldown_seconds) - timezone.now()).total_seconds()
        return f"{left:.0f} s" if left > 0 else "—"

    @admin.display(description="last decision")
    def last_decision(self, policy: ScalingPolicy) -> SafeString | str:
        action = getattr(policy, "last_action", None)
        if action is None:
            return "never evaluated"
        failed = "" if getattr(policy, "last_success", True) else " FAILED"
        when = stamp(policy.last_event_at)  # type: ignore[attr-defined]
        text = f"{action} by {policy.last_rule}{failed} at {when}"  # type: ignore[attr-defined]
        return format_html("{} {}", text, dry_run_pill()) if getattr(policy, "last_dry_run", False) else text

    @admin.action(description="Evaluate now (dry run)", permissions=["change"])
    def evaluate_now_dry_run(self, request: HttpRequest, queryset: QuerySet[ScalingPolicy]) -> None:
        # The plain rows, without the changelist's annotations.
        selected = list(ScalingPolicy.objects.filter(pk__in=queryset.values("pk")).only("id", "service"))
        try:
            count = publish_evaluations([p.pk for p in selected], trigger=ScalingTrigger.ADMIN, force_dry_run=True)
        except Exception as exc:
            self.message_user(request, f"Could not queue the evaluations: {exc}", messages.ERROR)
            return
        audit(request, selected, "Evaluate now (dry run): evaluation queued")
        self.message_user(
            request,
            f"Queued a dry-run evaluation of {count} polic{'y' if count == 1 else 'ies'}; "
            "the decisions appear under Scaling events.",
            messages.SUCCESS,
        )


class ServiceFilter(DistinctValuesFilter):
    title = "service"
    parameter_name = "service"
    field = "service"


class RuleFilter(admin.SimpleListFilter):
    """The rule that had the last word: the rules are the code's, so drawing this reads nothing."""

    title = "rule"
    parameter_name = "rule"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        rules = [f"{Rule.METRIC}:{metric}" for metric in MetricName]
        rules += [str(rule) for rule in Rule if rule != Rule.METRIC]
        return [(rule, rule) for rule in sorted(rules)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ScalingEvent]) -> QuerySet[ScalingEvent]:
        return queryset.filter(rule=self.value()) if self.value() else queryset


EVENT_FIELDS = [field.name for field in ScalingEvent._meta.fields]


@admin.register(ScalingEvent)
class ScalingEventAdmin(AdminListMixin, admin.ModelAdmin):
    list_display = [
        "when",
        "service",
        "action",
        "change",
        "desired_instances",
        "rule",
        "success",
        "trigger",
        "short_reason",
    ]
    list_filter = [
        ServiceFilter,
        recent_filter("created_at"),
        "action",
        "success",
        "dry_run",
        "trigger",
        RuleFilter,
    ]
    search_fields = ["service", "reason", "error"]
    # The decision's mode first: a dry run's "to" is what it would have scaled to.
    fields = ["decision", *EVENT_FIELDS]
    readonly_fields = ["decision", *EVENT_FIELDS]
    list_per_page = 100
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER

    @admin.display(description="at", ordering="created_at")
    def when(self, event: ScalingEvent) -> str:
        return stamp(event.created_at)

    @admin.display(description="from → to")
    def change(self, event: ScalingEvent) -> SafeString | str:
        text = f"{event.from_instances} → {event.to_instances}"
        return format_html("{} {}", text, dry_run_pill()) if event.dry_run else text

    @admin.display(description="decision")
    def decision(self, event: ScalingEvent) -> SafeString | str:
        if event.dry_run:
            return format_html(
                "{} decided {} → {} and recorded it; nothing was started or stopped.",
                dry_run_pill(),
                event.from_instances,
                event.to_instances,
            )
        return "Carried out" if event.success else "Failed"

    @admin.display(description="reason / error")
    def short_reason(self, event: ScalingEvent) -> SafeString | str:
        text = f"{event.error} — {event.reason}" if event.error else event.reason
        return clipped(text, REASON_CHARS)

    # The audit trail is written by the system only.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ScalingEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ScalingEvent | None = None) -> bool:
        return False
