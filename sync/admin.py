"""The admin: fabrics at a glance, their sync runs and resources (read-only).

The fabric changelist answers "what is broken and since when?" without opening a
fabric: a coloured status, how long it has been failing, the age of the last
success, when it is next due and the truncated last error, all from one query per
page (counts and "failing since" are annotations, not per-row queries).

Git URLs are shown only through ``Fabric.safe_git_url``: credentials embedded in a
URL never reach a list, a message or the change form (see ``FabricForm``).

A fabric with a Kubernetes cluster also shows its drift (a badge beside the sync
status, a filter, the diff on its page) and offers "Compare now", "Reconcile now" and
"Confirm prune"; that side lives in ``sync.admin_drift`` (the cluster, the badge, the
diff) and ``sync.admin_operations`` (the operations and the fabric page's buttons).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, QueryDict
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator
from django.utils.timesince import timesince, timeuntil

from core.audit import audit
from core.redaction import MASK, redact, redact_url
from sync import operations
from sync.admin_drift import DriftFilter, FabricClusterInline, cluster_of, drift_badge
from sync.admin_operations import FabricOperationsAdmin, count_fabrics, report_not_enqueued
from sync.models import Fabric, FabricQuerySet, Resource, RunStatus, SyncRun, SyncStatus

RECENT_RUNS = 10
ERROR_CHARS = 80
# A due fabric not dispatched within this long means ticks are not running.
OVERDUE_AFTER = timedelta(minutes=3)
FAILED_RUN_STATUSES = (RunStatus.FAILED, RunStatus.RETRYING, RunStatus.LOST)

STATUS_COLOURS: dict[str, str] = {
    SyncStatus.NEVER_SYNCED: "#6b7280",
    SyncStatus.QUEUED: "#2563eb",
    SyncStatus.SYNCING: "#2563eb",
    SyncStatus.IN_SYNC: "#15803d",
    SyncStatus.ERROR: "#b91c1c",
    SyncStatus.SUSPENDED: "#7c2d12",
}
RUN_COLOURS: dict[str, str] = {
    RunStatus.RUNNING: "#2563eb",
    RunStatus.SUCCESS: "#15803d",
    RunStatus.UNCHANGED: "#15803d",
    RunStatus.FAILED: "#b91c1c",
    RunStatus.RETRYING: "#b45309",
    RunStatus.LOST: "#b91c1c",
    RunStatus.SKIPPED: "#b45309",
}
DASH = "—"


# --- Display helpers -----------------------------------------------------------------


def badge(label: str, colour: str, title: str = "") -> SafeString:
    return format_html(
        '<span title="{}" style="background:{};color:#fff;padding:2px 8px;border-radius:9px;'
        'white-space:nowrap;font-weight:600">{}</span>',
        title,
        colour,
        label,
    )


def age(moment: datetime | None, now: datetime, never: str = "never") -> str:
    """'3 minutes ago' (one unit is enough at a glance), or ``never``."""
    if moment is None:
        return never
    if now - moment < timedelta(minutes=1):
        return "less than a minute ago"
    return f"{timesince(moment, now, depth=1)} ago"


def truncated(text: str, limit: int = ERROR_CHARS) -> SafeString | str:
    """The first ``limit`` characters, the whole (redacted) text on hover."""
    if not text:
        return DASH
    safe = redact(text)
    return format_html('<span title="{}">{}</span>', safe, Truncator(safe).chars(limit))


def short_commit(commit: str) -> SafeString | str:
    return format_html("<code>{}</code>", commit[:10]) if commit else DASH


def describe_next_due(fabric: Fabric, now: datetime) -> SafeString | str:
    """When the scheduler will next dispatch the fabric, in an operator's words."""
    if not fabric.sync_enabled:
        return "disabled"
    if fabric.sync_status == SyncStatus.SUSPENDED:
        return "suspended: reset failures to resume"
    if fabric.sync_status in operations.LEASED_STATUSES:
        return "syncing now" if fabric.sync_status == SyncStatus.SYNCING else "queued"
    if fabric.next_sync_at > now:
        return f"in {timeuntil(fabric.next_sync_at, now, depth=1)}"
    if now - fabric.next_sync_at > OVERDUE_AFTER:
        # Due for minutes yet not dispatched: the master tick is not running.
        return format_html(
            '<span style="color:#b91c1c">overdue by {}</span>', timesince(fabric.next_sync_at, now, depth=1)
        )
    return "due now"


# --- Fabric --------------------------------------------------------------------------


class FabricForm(forms.ModelForm):
    """The Git source: a URL without credentials, and the credential git sends with it.

    Credentials live in ``git_credential`` (encrypted, write-only); the URL validator
    refuses any URL that still carries one. A row stored before that rule is shown
    masked, and submitting the masked URL back means "keep what is stored" (the
    model validation then asks to move the credentials out).
    """

    class Meta:
        model = Fabric
        fields = [
            "name",
            "description",
            "git_url",
            "git_credential",
            "git_branch",
            "git_path",
            "sync_interval",
            "sync_enabled",
        ]
        widgets = {
            "description": forms.Textarea(attrs={"rows": 3, "cols": 80}),
            "git_url": forms.TextInput(attrs={"size": 80}),
            "git_path": forms.TextInput(attrs={"size": 60}),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["git_url"] = self.instance.safe_git_url

    def clean_git_url(self) -> str:
        value: str = self.cleaned_data["git_url"]
        stored = self.instance.git_url if self.instance.pk else ""
        if stored and value == redact_url(stored):
            return stored
        if MASK in value:
            raise ValidationError("Remove the masked credentials from the URL and choose a Git credential instead.")
        return value

    def full_clean(self) -> None:
        super().full_clean()
        if self.is_bound and "git_url" in self.errors:
            # A refused URL is shown again masked: credentials never go back into a page.
            key = self.add_prefix("git_url")
            data = self.data.copy() if isinstance(self.data, QueryDict) else dict(self.data)
            data[key] = redact_url(str(data.get(key, "")))
            self.data = data


class HealthFilter(admin.SimpleListFilter):
    """The two questions an operator asks first: what is failing, and is anything stuck?"""

    title = "health"
    parameter_name = "health"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("failing", "Failing or suspended"), ("overdue", "Overdue (ticks not dispatching)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Fabric]) -> QuerySet[Fabric]:
        if self.value() == "failing":
            return queryset.filter(Q(consecutive_failures__gt=0) | Q(sync_status__in=operations.FAILING_STATUSES))
        if self.value() == "overdue":
            return queryset.filter(
                sync_enabled=True, next_sync_at__lt=timezone.now() - OVERDUE_AFTER, lease_expires_at__isnull=True
            ).exclude(sync_status=SyncStatus.SUSPENDED)
        return queryset


class RecentRunsFormSet(BaseInlineFormSet):
    """Limits the inline to the latest runs without slicing the queryset itself.

    The admin filters an inline's queryset by the parent after ``get_queryset``, and
    a sliced queryset cannot be filtered; an ``id IN (latest ids)`` subquery can.
    """

    def get_queryset(self) -> QuerySet[SyncRun]:
        if not hasattr(self, "_recent_runs"):
            runs = super().get_queryset()
            self._recent_runs = runs.filter(pk__in=runs.values("pk")[:RECENT_RUNS])
        return self._recent_runs


class SyncRunDisplay:
    """Columns shared by the run inline and the run changelist."""

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: SyncRun) -> SafeString:
        return badge(run.get_status_display(), RUN_COLOURS.get(run.status, "#6b7280"))

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, run: SyncRun) -> str:
        return f"{run.duration_ms / 1000:.1f} s" if run.duration_ms is not None else DASH

    @admin.display(description="commit")
    def commit_short(self, run: SyncRun) -> SafeString | str:
        return short_commit(run.commit)

    @admin.display(description="resources (+ ~ -)")
    def changes(self, run: SyncRun) -> str:
        return f"{run.resources_total} (+{run.resources_created} ~{run.resources_updated} -{run.resources_deleted})"

    @admin.display(description="error")
    def error(self, run: SyncRun) -> SafeString | str:
        return truncated(f"{run.error_class}: {run.error_message}" if run.error_class else run.error_message)

    @admin.display(description="cluster", ordering="live_status")
    def live(self, run: SyncRun) -> SafeString | str:
        """What the run's live step did (a fabric with a cluster), its error on hover."""
        if not run.live_status:
            return DASH
        parts = [run.get_live_status_display()]
        if run.live_applied:
            parts.append(f"applied {run.live_applied}")
        if run.live_pruned:
            parts.append(f"pruned {run.live_pruned}")
        return format_html('<span title="{}">{}</span>', redact(run.live_error), ", ".join(parts))


RUN_INLINE_FIELDS = (
    "started_at",
    "trigger",
    "status_badge",
    "attempt",
    "duration",
    "commit_short",
    "changes",
    "live",
    "error",
)


class SyncRunInline(SyncRunDisplay, admin.TabularInline):
    model = SyncRun
    formset = RecentRunsFormSet
    verbose_name_plural = f"last {RECENT_RUNS} sync runs"
    fields = RUN_INLINE_FIELDS
    readonly_fields = RUN_INLINE_FIELDS
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


STATE_FIELDS = (
    "sync_status",
    "last_sync",
    "last_attempt_at",
    "next_sync_at",
    "consecutive_failures",
    "last_error",
    "current_commit",
    "source_fingerprint",
)
LEASE_FIELDS = ("lease_token", "lease_expires_at", "lease_owner", "lease_deliveries", "created_at", "updated_at")


@admin.register(Fabric)
class FabricAdmin(FabricOperationsAdmin):
    form = FabricForm
    list_display = [
        "name",
        "status",
        "drift",
        "failing_since",
        "last_success",
        "next_due",
        "consecutive_failures",
        "commit",
        "resource_count",
        "last_error_short",
        "source",
    ]
    list_filter = ["sync_status", DriftFilter, "sync_enabled", HealthFilter]
    # Only the name: a search on a field that could hold a secret lets a viewer guess it character by character.
    search_fields = ["name"]
    readonly_fields = [*STATE_FIELDS, *LEASE_FIELDS]
    fieldsets = [
        (None, {"fields": ["name", "description"]}),
        ("Git source", {"fields": ["git_url", "git_credential", "git_branch", "git_path"]}),
        ("Schedule", {"fields": ["sync_enabled", "sync_interval"]}),
        ("State (written by the system)", {"fields": STATE_FIELDS}),
        ("Lease", {"fields": LEASE_FIELDS, "classes": ["collapse"]}),
    ]
    # The cluster is rendered first, then the drift, then the runs (change_form.html).
    inlines = [SyncRunInline, FabricClusterInline]
    actions = [
        "sync_now",
        "compare_now",
        "reconcile_now",
        "confirm_prune",
        "enable_sync",
        "disable_sync",
        "reset_failures",
    ]
    list_per_page = 100
    change_form_template = "admin/sync/fabric/change_form.html"

    def get_fieldsets(self, request: HttpRequest, obj: Fabric | None = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or self.has_change_permission(request, obj):
            return fieldsets
        # View-only staff: Django would render the stored URL as it is; show it redacted.
        return [
            (title, {**options, "fields": ["git_url_redacted" if f == "git_url" else f for f in options["fields"]]})
            for title, options in fieldsets
        ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Fabric]:
        first_failure = (
            SyncRun.objects.filter(
                fabric=OuterRef("pk"),
                status__in=FAILED_RUN_STATUSES,
                started_at__gte=Coalesce(OuterRef("last_sync"), OuterRef("created_at")),
            )
            .order_by("started_at")
            .values("started_at")[:1]
        )
        fabrics = cast(FabricQuerySet, super().get_queryset(request))
        return fabrics.with_cluster().annotate(  # the drift badge: the cluster row in the same query
            resource_total=Count("resources"), first_failure_at=Subquery(first_failure)
        )

    # --- Columns ---

    @admin.display(description="status", ordering="sync_status")
    def status(self, fabric: Fabric) -> SafeString:
        label = fabric.get_sync_status_display()
        if not fabric.sync_enabled:
            label = f"{label} (disabled)"
        return badge(label, STATUS_COLOURS.get(fabric.sync_status, "#6b7280"), redact(fabric.last_error))

    @admin.display(description="drift", ordering="cluster__drift_status")
    def drift(self, fabric: Fabric) -> SafeString | str:
        return drift_badge(cluster_of(fabric), timezone.now())

    @admin.display(description="failing since", ordering="first_failure_at")
    def failing_since(self, fabric: Fabric) -> str:
        if fabric.consecutive_failures == 0 and fabric.sync_status not in operations.FAILING_STATUSES:
            return DASH
        # Runs may have been pruned: the last attempt is then the best we know.
        since = getattr(fabric, "first_failure_at", None) or fabric.last_attempt_at
        return age(since, timezone.now(), never=DASH)

    @admin.display(description="last success", ordering="last_sync")
    def last_success(self, fabric: Fabric) -> str:
        return age(fabric.last_sync, timezone.now())

    @admin.display(description="next due", ordering="next_sync_at")
    def next_due(self, fabric: Fabric) -> SafeString | str:
        return describe_next_due(fabric, timezone.now())

    @admin.display(description="commit", ordering="current_commit")
    def commit(self, fabric: Fabric) -> SafeString | str:
        return short_commit(fabric.current_commit)

    @admin.display(description="resources", ordering="resource_total")
    def resource_count(self, fabric: Fabric) -> int:
        return int(getattr(fabric, "resource_total", 0))

    @admin.display(description="last error")
    def last_error_short(self, fabric: Fabric) -> SafeString | str:
        return truncated(fabric.last_error)

    @admin.display(description="Git URL")
    def git_url_redacted(self, fabric: Fabric) -> str:
        return fabric.safe_git_url

    @admin.display(description="Git source")
    def source(self, fabric: Fabric) -> SafeString:
        where = fabric.safe_git_url
        if fabric.git_branch:
            where = f"{where} @ {fabric.git_branch}"
        if fabric.git_path:
            where = f"{where} : {fabric.git_path}"
        return format_html("<code>{}</code>", where)

    # --- Saving: the edited columns only ---

    def save_model(self, request: HttpRequest, obj: Fabric, form: forms.ModelForm, change: bool) -> None:
        if not change:
            super().save_model(request, obj, form, change)
            return
        # A whole-row save would write back state a worker changed since the form
        # was loaded (a lease, a sync result); see sync.operations.
        operations.save_settings(obj, form.changed_data, timezone.now())

    # --- Actions ---

    @admin.action(description="Sync now", permissions=["change"])
    def sync_now(self, request: HttpRequest, queryset: QuerySet[Fabric]) -> None:
        selected = list(_plain(queryset).only("id", "name"))
        outcome = operations.enqueue_manual_syncs(_plain(queryset).only("id", "name"), timezone.now())
        audit(request, selected, f"Sync now: {len(outcome.enqueued)} enqueued, {len(outcome.busy)} busy")
        if outcome.enqueued:
            self.message_user(request, f"Enqueued {count_fabrics(len(outcome.enqueued))} for sync.", messages.SUCCESS)
        report_not_enqueued(self, request, outcome)

    @admin.action(description="Enable sync", permissions=["change"])
    def enable_sync(self, request: HttpRequest, queryset: QuerySet[Fabric]) -> None:
        changed = operations.set_sync_enabled(_plain(queryset), True, timezone.now())
        audit(request, _plain(queryset).only("id", "name"), "Enabled sync")
        self.message_user(request, f"Enabled sync for {count_fabrics(changed)}.", messages.SUCCESS)

    @admin.action(description="Disable sync", permissions=["change"])
    def disable_sync(self, request: HttpRequest, queryset: QuerySet[Fabric]) -> None:
        changed = operations.set_sync_enabled(_plain(queryset), False, timezone.now())
        audit(request, _plain(queryset).only("id", "name"), "Disabled sync")
        self.message_user(request, f"Disabled sync for {count_fabrics(changed)}.", messages.SUCCESS)

    @admin.action(description="Reset failures", permissions=["change"])
    def reset_failures(self, request: HttpRequest, queryset: QuerySet[Fabric]) -> None:
        selected = _plain(queryset)
        audit(request, selected.only("id", "name"), "Reset failures")
        reset = operations.reset_failures(selected, timezone.now())
        self.message_user(request, f"Reset failures of {count_fabrics(reset)}; they are due now.", messages.SUCCESS)
        untouched = selected.count() - reset
        if untouched:
            self.message_user(
                request,
                f"Left {count_fabrics(untouched)} alone: no failures to reset, or a sync is running.",
                messages.INFO,
            )


def _plain(queryset: QuerySet[Fabric]) -> QuerySet[Fabric]:
    """The selection without the changelist's annotations (updates refuse aggregates)."""
    return Fabric.objects.filter(pk__in=queryset.values("pk"))


# --- Sync runs and resources: written by the system, read by operators ----------------


class ReadOnlyAdmin(admin.ModelAdmin):
    """No adding or editing. Deleting stays possible (with the delete permission):
    the admin refuses to delete a fabric if its runs or resources could not be."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # bulk deletion of history is a footgun
        return actions


@admin.register(SyncRun)
class SyncRunAdmin(SyncRunDisplay, ReadOnlyAdmin):
    list_display = [
        "started_at",
        "fabric",
        "trigger",
        "status_badge",
        "attempt",
        "duration",
        "commit_short",
        "changes",
        "live",
        "error",
        "worker",
    ]
    list_filter = ["status", "trigger", "live_status", ("fabric", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["fabric"]
    search_fields = ["fabric__name", "error_class", "error_message", "commit"]
    date_hierarchy = "started_at"


# The spec is shown as indented JSON (spec_pretty) instead of the raw field.
RESOURCE_FIELDS = (
    "fabric",
    "api_version",
    "kind",
    "namespace",
    "name",
    "source_file",
    "content_hash",
    "updated_at",
    "spec_pretty",
)


@admin.register(Resource)
class ResourceAdmin(ReadOnlyAdmin):
    list_display = ["kind", "name", "namespace", "fabric", "api_version", "source_file", "updated_at"]
    list_filter = ["kind", ("fabric", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["fabric"]
    search_fields = ["name", "namespace", "kind", "source_file", "fabric__name"]
    fields = RESOURCE_FIELDS
    readonly_fields = RESOURCE_FIELDS

    @admin.display(description="spec")
    def spec_pretty(self, resource: Resource) -> SafeString:
        return format_html("<pre>{}</pre>", json.dumps(resource.spec, indent=2, sort_keys=True))
