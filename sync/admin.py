"""The admin: fabrics at a glance, their sync runs and resources (read-only).

The fabric changelist answers "what is broken and since when?" without opening a
fabric: a coloured status, how long it has been failing, the age of the last
success, when it is next due and the truncated last error. Its cost does not grow
with the number of fabrics (issue 11; ``bench/admin.py``, docs/benchmarks.md):

1. One count, of this page's rows, on the plain fabric table: no resource count is
   computed to count rows, and no second count of the unfiltered table is made.
2. The page's rows come in one query (with their cluster row for the drift badge).
   "Failing since" is a column of the fabric (``Fabric.failing_since``, set by the
   code that counts a failure), so sorting by it reads an index. A search reads the
   name's trigram index on PostgreSQL (``sync/migrations/0010``).
3. Their resource counts come in one more query, for the ids on the page only
   (``FabricChangeList``). Sorting by that column computes it for every fabric
   matched, in the database, only when an operator asks for that order.

Sync runs and resources are filtered by a fabric's name typed into a box, not by a
list of every fabric, and by "started in the last hour / day / …" instead of a date
drill-down that reads every row's date.

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
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import ValidationError
from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, QueryDict
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from core.admin_filters import DistinctValuesFilter, recent_filter
from core.audit import audit
from core.display import AdminListMixin, ago_stamped, clipped, span, stamp
from core.redaction import MASK, redact, redact_url
from sync import operations
from sync.admin_drift import DriftFilter, FabricClusterInline, FabricFilter, cluster_of, drift_badge
from sync.admin_operations import FabricOperationsAdmin, count_fabrics, report_not_enqueued
from sync.models import Fabric, FabricQuerySet, Resource, RunStatus, SyncRun, SyncStatus

RECENT_RUNS = 10
# Column widths in characters: with these the fabric and run lists fit 1600 px
# (tests/test_admin_layout.py); the whole text is in each cell's tooltip.
ERROR_CHARS = 80
RUN_ERROR_CHARS = 60
SOURCE_CHARS = 56
# A due fabric not dispatched within this long means ticks are not running.
OVERDUE_AFTER = timedelta(minutes=3)
# A fabric in a failure streak, or failing or suspended (the health filter, "failing since").
FAILING = Q(consecutive_failures__gt=0) | Q(sync_status__in=operations.FAILING_STATUSES)

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


def truncated(text: str, limit: int = ERROR_CHARS) -> SafeString | str:
    """The first ``limit`` characters, the whole (redacted) text on hover."""
    return clipped(redact(text), limit) if text else DASH


def safe_error(fabric: Fabric) -> str:
    """The fabric's last error, redacted once per row (the status tooltip and the error column both show it)."""
    cached: str | None = getattr(fabric, "_safe_error", None)
    if cached is None:
        cached = fabric._safe_error = redact(fabric.last_error)  # type: ignore[attr-defined]
    return cached


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
        return f"in {span((fabric.next_sync_at - now).total_seconds())}"
    if now - fabric.next_sync_at > OVERDUE_AFTER:
        # Due for minutes yet not dispatched: the master tick is not running.
        return format_html(
            '<span style="color:#b91c1c">overdue by {}</span>', span((now - fabric.next_sync_at).total_seconds())
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
            return queryset.filter(FAILING)
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

    @admin.display(description="started", ordering="started_at")
    def started(self, run: SyncRun) -> str:
        return stamp(run.started_at)

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: SyncRun) -> SafeString:
        label = run.get_status_display()
        if run.attempt > 1:
            label = f"{label} (attempt {run.attempt})"
        where = f"attempt {run.attempt}" + (f" on {run.worker}" if run.worker else "")
        return badge(label, RUN_COLOURS.get(run.status, "#6b7280"), where)

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
        text = f"{run.error_class}: {run.error_message}" if run.error_class else run.error_message
        return truncated(text, RUN_ERROR_CHARS)

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
    "started",
    "trigger",
    "status_badge",  # with the attempt when it is not the first
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


# The sort key of "failing since": failing fabrics by when their streak began, the others
# after them (NULLs last, which databases would otherwise sort to different ends). Reversed,
# the others come first, as with any column.
FAILING_SINCE = F("failing_since").asc(nulls_last=True)
RESOURCE_TOTAL = Coalesce(
    Subquery(
        Resource.objects.filter(fabric=OuterRef("pk")).order_by().values("fabric").annotate(n=Count("pk")).values("n")
    ),
    0,
)


class FabricChangeList(ChangeList):
    """The fabric list, with each shown fabric's resource count computed for the page's
    fabrics only, in one query, after the page is chosen."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        self.result_list = with_page_columns(list(self.result_list))


def with_page_columns(fabrics: list[Fabric]) -> list[Fabric]:
    """Sets ``resource_total`` on each of ``fabrics`` (one query)."""
    if not fabrics:
        return fabrics
    rows = Fabric.objects.filter(pk__in=[f.pk for f in fabrics]).annotate(resource_total=RESOURCE_TOTAL)
    totals = dict(rows.values_list("pk", "resource_total"))
    for fabric in fabrics:
        fabric.resource_total = totals.get(fabric.pk, 0)  # type: ignore[attr-defined]
    return fabrics


STATE_FIELDS = (
    "sync_status",
    "last_sync",
    "last_attempt_at",
    "next_sync_at",
    "consecutive_failures",
    "failing_since",
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
        "failing",
        "last_success",
        "next_due",
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
    # One count per page: the unfiltered total is on the overview, not worth a second pass here.
    show_full_result_count = False
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
        # The drift badge: the cluster row in the same query. No annotations here: the
        # counts would compute them (see FabricChangeList).
        return cast(FabricQuerySet, super().get_queryset(request)).with_cluster()

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return FabricChangeList

    # --- Columns ---

    @admin.display(description="status", ordering="sync_status")
    def status(self, fabric: Fabric) -> SafeString:
        label = fabric.get_sync_status_display()
        if not fabric.sync_enabled:
            label = f"{label} (disabled)"
        return badge(label, STATUS_COLOURS.get(fabric.sync_status, "#6b7280"), safe_error(fabric))

    @admin.display(description="drift", ordering="cluster__drift_status")
    def drift(self, fabric: Fabric) -> SafeString | str:
        return drift_badge(cluster_of(fabric), timezone.now())

    # Not named after the field: the admin would then render and sort the bare field.
    @admin.display(description="failing since", ordering=FAILING_SINCE)
    def failing(self, fabric: Fabric) -> SafeString | str:
        if fabric.consecutive_failures == 0 and fabric.sync_status not in operations.FAILING_STATUSES:
            return DASH
        since = ago_stamped(fabric.failing_since or fabric.last_attempt_at, timezone.now(), DASH)
        failures = fabric.consecutive_failures  # the streak's length, under its start
        if not failures:
            return since
        return format_html("{}<br><small>{} failure{}</small>", since, failures, "" if failures == 1 else "s")

    @admin.display(description="last success (commit)", ordering="last_sync")
    def last_success(self, fabric: Fabric) -> SafeString | str:
        when = ago_stamped(fabric.last_sync, timezone.now())
        if not fabric.current_commit:
            return when
        return format_html("{}<br>{}", when, short_commit(fabric.current_commit))

    @admin.display(description="next due", ordering="next_sync_at")
    def next_due(self, fabric: Fabric) -> SafeString | str:
        return describe_next_due(fabric, timezone.now())

    @admin.display(description="resources", ordering=RESOURCE_TOTAL)
    def resource_count(self, fabric: Fabric) -> int:
        return int(getattr(fabric, "resource_total", 0))

    @admin.display(description="last error")
    def last_error_short(self, fabric: Fabric) -> SafeString | str:
        return clipped(safe_error(fabric), ERROR_CHARS)

    @admin.display(description="Git URL")
    def git_url_redacted(self, fabric: Fabric) -> str:
        return fabric.safe_git_url

    @admin.display(description="Git source")
    def source(self, fabric: Fabric) -> SafeString | str:
        where = fabric.safe_git_url
        if fabric.git_branch:
            where = f"{where} @ {fabric.git_branch}"
        if fabric.git_path:
            where = f"{where} : {fabric.git_path}"
        # The middle goes: the host and the repository, branch and folder stay readable.
        return clipped(where, SOURCE_CHARS, middle=True, code=True)

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


class ReadOnlyAdmin(AdminListMixin, admin.ModelAdmin):
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
    # The attempt and the worker are in the status badge's tooltip (and on the run's page).
    list_display = [
        "started",
        "fabric",
        "trigger",
        "status_badge",
        "duration",
        "commit_short",
        "changes",
        "live",
        "error",
    ]
    list_filter = ["status", recent_filter("started_at", "started"), "trigger", "live_status", FabricFilter]
    list_select_related = ["fabric"]
    search_fields = ["fabric__name", "error_class", "error_message", "commit"]
    list_per_page = 100
    # One count per page, not two: the unfiltered total of 100,000 runs is not worth a second pass.
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER


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


class KindFilter(DistinctValuesFilter):
    title = "kind"
    parameter_name = "kind"
    field = "kind"


@admin.register(Resource)
class ResourceAdmin(ReadOnlyAdmin):
    # The API version is the kind's tooltip: a column of its own pushed "updated" off a 1600 px screen.
    list_display = ["kind_of", "name", "namespace", "fabric", "source", "updated"]
    list_filter = [KindFilter, FabricFilter]
    list_select_related = ["fabric"]
    search_fields = ["name", "namespace", "kind", "source_file", "fabric__name"]
    fields = RESOURCE_FIELDS
    readonly_fields = RESOURCE_FIELDS
    list_per_page = 100
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER

    @admin.display(description="kind", ordering="kind")
    def kind_of(self, resource: Resource) -> SafeString:
        return format_html('<span title="{}">{}</span>', resource.api_version, resource.kind)

    @admin.display(description="source file", ordering="source_file")
    def source(self, resource: Resource) -> SafeString | str:
        return clipped(resource.source_file, SOURCE_CHARS, middle=True)

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, resource: Resource) -> str:
        return stamp(resource.updated_at)

    @admin.display(description="spec")
    def spec_pretty(self, resource: Resource) -> SafeString:
        return format_html("<pre>{}</pre>", json.dumps(resource.spec, indent=2, sort_keys=True))
