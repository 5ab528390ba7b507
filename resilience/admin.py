"""The admin for operators: "what is broken, since when, and what did healing do?"

- Component health: coloured status, how long it has held, failure run, whether
  healing gave up ("needs attention") or an operator parked it (maintenance), with
  its transitions and healing attempts inline. Actions: maintenance on/off, resume
  healing after "needs attention". Judged when the page is read, not when the tick
  last wrote: a component whose last check is older than two ticks shows *Stale* (a
  stopped tick stops the sweeps too), and a stopped scheduler is recorded as UNHEALTHY
  with its transition before the list is drawn.
- Circuit breakers: the snapshot refreshed each tick, and which calls each one guards;
  actions force open, disable, reset and forget act on the live state in Redis and
  refresh the row.
- Transitions and healing attempts: read-only history, filterable by "in the last
  hour / day / …" (an indexed range, not a drill-down that reads every row's date).

Components are listed worst first: unhealthy, then stale, degraded, unknown, healthy.
Rows only the system writes (components, transitions, attempts, breakers) cannot be
added here. Times carry seconds and the zone; long messages are cut, whole on hover.

Every action that changes state needs the change permission (a view-only user is not
offered it) and leaves one admin log entry per object it changed: who, what, when.
"""

from __future__ import annotations

from datetime import datetime

from django.contrib import admin, messages
from django.db.models import Case, IntegerField, Q, QuerySet, Value, When
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from core.admin_filters import recent_filter
from core.display import AdminListMixin, ago_stamped, clipped, stamp
from core.guards import guard_description
from core.redaction import redact
from resilience import healing, snapshots, verdict
from resilience.models import (
    CircuitBreakerState,
    ComponentHealth,
    HealingAttempt,
    HealingOutcome,
    HealthStatus,
    HealthTransition,
)

COLOURS: dict[str, str] = {
    HealthStatus.HEALTHY: "#15803d",
    HealthStatus.DEGRADED: "#b45309",
    HealthStatus.UNHEALTHY: "#b91c1c",
    HealthStatus.UNKNOWN: "#6b7280",
    "closed": "#15803d",
    "half_open": "#b45309",
    "open": "#b91c1c",
    "forced_open": "#7c2d12",
    "disabled": "#6b7280",
    HealingOutcome.SUCCEEDED: "#15803d",
    HealingOutcome.NOT_HEALED: "#b45309",
    HealingOutcome.FAILED: "#b91c1c",
    HealingOutcome.RUNNING: "#2563eb",
    verdict.STALE: "#6d28d9",
}


def badge(label: str, key: str) -> SafeString:
    return format_html(
        '<span style="background:{};color:#fff;padding:2px 8px;border-radius:9px;font-weight:600">{}</span>',
        COLOURS.get(key, "#6b7280"),
        label,
    )


MESSAGE_CHARS = 80


def ago(moment: datetime | None) -> SafeString | str:
    return ago_stamped(moment, timezone.now(), never="—")


def message_cell(text: str) -> SafeString | str:
    return clipped(redact(text), MESSAGE_CHARS)


def severity(now: datetime) -> Case:
    """The order components are listed in: what needs an operator first."""
    stale = Q(last_checked_at__lt=now - verdict.stale_after())
    return Case(
        When(status=HealthStatus.UNHEALTHY, then=Value(0)),
        When(stale, then=Value(1)),
        When(status=HealthStatus.DEGRADED, then=Value(2)),
        When(status=HealthStatus.UNKNOWN, then=Value(3)),
        default=Value(4),
        output_field=IntegerField(),
    )


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    max_num = 0
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class TransitionInline(ReadOnlyInline):
    model = HealthTransition
    fields = ("when", "from_status", "to_status", "message")
    readonly_fields = fields
    ordering = ("-at",)

    @admin.display(description="at")
    def when(self, obj: HealthTransition) -> str:
        return stamp(obj.at)


class AttemptInline(ReadOnlyInline):
    model = HealingAttempt
    fields = ("started", "action", "attempt", "outcome", "host", "message")
    readonly_fields = fields
    ordering = ("-started_at",)

    @admin.display(description="started")
    def started(self, obj: HealingAttempt) -> str:
        return stamp(obj.started_at)


class FreshnessFilter(admin.SimpleListFilter):
    """Answers "which components has nothing checked lately?" (stale: no check for two ticks)."""

    title = "freshness"
    parameter_name = "freshness"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("stale", "Stale (no check for two ticks)"), ("fresh", "Checked lately")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ComponentHealth]) -> QuerySet[ComponentHealth]:
        cutoff = timezone.now() - verdict.stale_after()
        if self.value() == "stale":
            return queryset.filter(last_checked_at__lt=cutoff)
        if self.value() == "fresh":
            return queryset.exclude(last_checked_at__lt=cutoff)
        return queryset


@admin.register(ComponentHealth)
class ComponentHealthAdmin(AdminListMixin, admin.ModelAdmin):
    list_display = (
        "name",
        "status_badge",
        "since",
        "component_type",
        "critical",
        "consecutive_failures",
        "healing",
        "checked",
        "message",
    )
    list_filter = ("status", FreshnessFilter, "component_type", "critical", "needs_attention", "in_maintenance")
    search_fields = ("name", "last_message")
    readonly_fields = (
        "name",
        "component_type",
        "critical",
        "status",
        "status_since",
        "consecutive_failures",
        "consecutive_successes",
        "last_message",
        "last_latency_ms",
        "last_details",
        "last_checked_at",
        "needs_attention",
        "heal_attempts",
        "heal_window_started_at",
        "heal_backoff_seconds",
        "next_heal_at",
        "heal_lock_until",
        "heal_lock_owner",
        "updated_at",
    )
    inlines = (TransitionInline, AttemptInline)
    actions = ("start_maintenance", "end_maintenance", "resume_healing")

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, object] | None = None) -> HttpResponse:
        verdict.notice_stale_scheduler()  # before the rows are read, so the list shows it
        return super().changelist_view(request, extra_context)

    def get_queryset(self, request: HttpRequest) -> QuerySet[ComponentHealth]:
        # ModelAdmin.get_queryset with the annotation its ordering needs added first.
        components = ComponentHealth.objects.annotate(severity=severity(timezone.now()))
        return components.order_by(*self.get_ordering(request))

    def get_ordering(self, request: HttpRequest) -> list[str]:
        return ["severity", "name"]  # unhealthy first, healthy last

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a component appears when its check first reports

    @admin.display(description="status", ordering="severity")
    def status_badge(self, obj: ComponentHealth) -> SafeString:
        if verdict.display_status(obj.status, obj.last_checked_at, timezone.now()) == verdict.STALE:
            return format_html(
                '{} <span title="no check for over two ticks">(last: {})</span>',
                badge("Stale", verdict.STALE),
                obj.get_status_display(),
            )
        return badge(obj.get_status_display(), obj.status)

    @admin.display(description="since", ordering="status_since")
    def since(self, obj: ComponentHealth) -> SafeString | str:
        return ago(obj.status_since)

    @admin.display(description="checked", ordering="last_checked_at")
    def checked(self, obj: ComponentHealth) -> SafeString | str:
        return ago(obj.last_checked_at)

    @admin.display(description="healing")
    def healing(self, obj: ComponentHealth) -> SafeString | str:
        """Whether healing may act, and what it spent: one column instead of three."""
        spent = f"{obj.heal_attempts} attempt{'' if obj.heal_attempts == 1 else 's'}" if obj.heal_attempts else ""
        if obj.in_maintenance:
            state = "in maintenance"
        elif obj.needs_attention:
            state = "needs attention"
        else:
            return spent or "—"
        label = format_html('<strong style="color:#b91c1c">{}</strong>', state)
        return format_html("{}<br><small>{}</small>", label, spent) if spent else label

    @admin.display(description="last message", ordering="last_message")
    def message(self, obj: ComponentHealth) -> SafeString | str:
        return message_cell(obj.last_message)

    def save_model(self, request: HttpRequest, obj: ComponentHealth, form: ModelForm, change: bool) -> None:
        # Only what the operator changed: tracking and healing write the other fields meanwhile.
        if change and form.changed_data:
            obj.save(update_fields=[*form.changed_data, "updated_at"])
        elif not change:
            obj.save()

    def _set_maintenance(self, request: HttpRequest, queryset: QuerySet[ComponentHealth], on: bool) -> int:
        targets = list(queryset.filter(in_maintenance=not on))
        ComponentHealth.objects.filter(pk__in=[c.pk for c in targets]).update(in_maintenance=on)
        for component in targets:
            self.log_change(request, component, "Put in maintenance" if on else "Ended maintenance")
        return len(targets)

    @admin.action(description="Put in maintenance (healing leaves them alone)", permissions=["change"])
    def start_maintenance(self, request: HttpRequest, queryset: QuerySet[ComponentHealth]) -> None:
        count = self._set_maintenance(request, queryset, on=True)
        self.message_user(request, f"{count} component(s) in maintenance: no healing until you end it.")

    @admin.action(description="End maintenance", permissions=["change"])
    def end_maintenance(self, request: HttpRequest, queryset: QuerySet[ComponentHealth]) -> None:
        count = self._set_maintenance(request, queryset, on=False)
        self.message_user(request, f"{count} component(s) out of maintenance.")

    @admin.action(description="Resume healing (clear needs attention, full budget)", permissions=["change"])
    def resume_healing(self, request: HttpRequest, queryset: QuerySet[ComponentHealth]) -> None:
        targets = list(queryset)
        count = healing.resume([c.pk for c in targets])
        for c in targets:
            was = f"needs attention: {'yes' if c.needs_attention else 'no'}, {c.heal_attempts} attempt(s) spent"
            self.log_change(request, c, f"Resumed healing with a full budget (was {was})")
        self.message_user(request, f"Healing resumed for {count} component(s) with a full budget.")


@admin.register(CircuitBreakerState)
class CircuitBreakerStateAdmin(AdminListMixin, admin.ModelAdmin):
    list_display = (
        "name",
        "guards",
        "state_badge",
        "failure_rate",
        "consecutive_failures",
        "rejected_calls",
        "total_calls",
        "opened",
        "trial_from",
        "refreshed",
    )
    list_filter = ("state",)
    search_fields = ("name",)
    readonly_fields = (*(f.name for f in CircuitBreakerState._meta.fields), "guards")
    actions = ("force_open", "disable", "reset", "forget")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # breakers exist in code; rows appear when they are first used

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj: CircuitBreakerState) -> SafeString:
        return badge(obj.get_state_display(), obj.state)

    @admin.display(description="opened", ordering="opened_at")
    def opened(self, obj: CircuitBreakerState) -> SafeString | str:
        return ago(obj.opened_at) if obj.state != "closed" else "—"

    @admin.display(description="open until", ordering="open_until")
    def trial_from(self, obj: CircuitBreakerState) -> str:
        return stamp(obj.open_until) if obj.state != "closed" else "—"

    @admin.display(description="refreshed", ordering="refreshed_at")
    def refreshed(self, obj: CircuitBreakerState) -> str:
        return stamp(obj.refreshed_at)

    @admin.display(description="guards")
    def guards(self, obj: CircuitBreakerState) -> SafeString | str:
        return clipped(guard_description(obj.name), 60)

    def _operate(
        self, request: HttpRequest, queryset: QuerySet[CircuitBreakerState], operation: str, done: str
    ) -> None:
        rows = list(queryset)
        try:
            count = snapshots.operate([row.name for row in rows], operation)
        except Exception as exc:
            self.message_user(request, f"Could not {operation} (Redis: {type(exc).__name__})", messages.ERROR)
            return
        for row in rows:  # a forgotten breaker's row is gone; its log entry keeps its name
            self.log_change(request, row, f"{done} the breaker (last snapshot: {row.state})")
        self.message_user(request, f"{operation.replace('_', ' ')}: {count} breaker(s), effective on every host.")

    @admin.action(description="Force open (reject every call)", permissions=["change"])
    def force_open(self, request: HttpRequest, queryset: QuerySet[CircuitBreakerState]) -> None:
        self._operate(request, queryset, "force_open", "Forced open")

    @admin.action(description="Disable (let every call through)", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[CircuitBreakerState]) -> None:
        self._operate(request, queryset, "disable", "Disabled")

    @admin.action(description="Reset (closed, empty window)", permissions=["change"])
    def reset(self, request: HttpRequest, queryset: QuerySet[CircuitBreakerState]) -> None:
        self._operate(request, queryset, "reset", "Reset")

    @admin.action(description="Forget (a breaker no longer used: delete its state and row)", permissions=["change"])
    def forget(self, request: HttpRequest, queryset: QuerySet[CircuitBreakerState]) -> None:
        self._operate(request, queryset, "forget", "Forgot")


@admin.register(HealthTransition)
class HealthTransitionAdmin(AdminListMixin, admin.ModelAdmin):
    list_display = ("when", "component", "from_status", "to_badge", "short_message")
    list_filter = (
        recent_filter("at"),
        "to_status",
        ("component__component_type", admin.ChoicesFieldListFilter),  # the choices, not a DISTINCT over a join
    )
    search_fields = ("component__name", "message")
    list_select_related = ("component",)
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER

    @admin.display(description="at", ordering="at")
    def when(self, obj: HealthTransition) -> str:
        return stamp(obj.at)

    @admin.display(description="message")
    def short_message(self, obj: HealthTransition) -> SafeString | str:
        return message_cell(obj.message)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description="to", ordering="to_status")
    def to_badge(self, obj: HealthTransition) -> SafeString:
        return badge(obj.get_to_status_display(), obj.to_status)


@admin.register(HealingAttempt)
class HealingAttemptAdmin(AdminListMixin, admin.ModelAdmin):
    list_display = ("started", "component", "action", "attempt", "outcome_badge", "host", "short_message")
    list_filter = (recent_filter("started_at", "started"), "outcome", "action")
    search_fields = ("component__name", "message")
    list_select_related = ("component",)
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER

    @admin.display(description="started", ordering="started_at")
    def started(self, obj: HealingAttempt) -> str:
        return stamp(obj.started_at)

    @admin.display(description="message")
    def short_message(self, obj: HealingAttempt) -> SafeString | str:
        return message_cell(obj.message)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description="outcome", ordering="outcome")
    def outcome_badge(self, obj: HealingAttempt) -> SafeString:
        return badge(obj.get_outcome_display(), obj.outcome)
