"""The fabric admin's Kubernetes side: the cluster settings, the drift badge and filter,
the drift on the fabric page, and the drifted objects' own read-only list.

Imported by ``sync.admin``. The rules:

- The changelist badge reads the cluster row the fabric query already joined
  (``Fabric.objects.with_cluster()``): no query per row, and the stored live objects
  (megabytes on a big fabric) are never loaded for a list or a page.
- The cluster's token is a ``core.Credential`` chosen by name; its secret is never read
  here, so no page can show it.
- An operator's edit of a cluster saves only the settings they changed
  (``sync.operations.save_cluster_settings``): drift a sync writes meanwhile stays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.forms.formsets import INITIAL_FORM_COUNT, TOTAL_FORM_COUNT, ManagementForm
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, QueryDict
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator
from django.utils.timesince import timesince

from core.admin_filters import TextFilter
from core.display import AdminListMixin, stamp
from core.redaction import redact, redact_url
from sync.live.describe import show_value
from sync.models import ClusterMode, DriftedObject, DriftState, DriftStatus, Fabric, FabricCluster

DASH = "—"
# Objects per state on the fabric page; the rest are one click away in the drifted objects' list.
DRIFT_ROWS_SHOWN = 50
VALUE_CHARS = 200

# Argo CD's words: what operators of GitOps tools already read at a glance.
DRIFT_LABELS: dict[str, tuple[str, str]] = {
    DriftStatus.IN_SYNC: ("Synced", "#15803d"),
    DriftStatus.OUT_OF_SYNC: ("OutOfSync", "#b45309"),
    DriftStatus.UNKNOWN: ("Unknown", "#6b7280"),
}
STATE_COLOURS: dict[str, str] = {
    DriftState.DRIFTED: "#b45309",
    DriftState.MISSING: "#b91c1c",
    DriftState.UNMANAGED: "#7c3aed",
}
OUT_OF_SYNC_STATES = (DriftState.DRIFTED, DriftState.MISSING, DriftState.UNMANAGED)


def pill(label: str, colour: str, title: str = "") -> SafeString:
    return format_html(
        '<span title="{}" style="background:{};color:#fff;padding:2px 8px;border-radius:9px;'
        'white-space:nowrap;font-weight:600">{}</span>',
        title,
        colour,
        label,
    )


def ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    if (now - moment).total_seconds() < 60:
        return "less than a minute ago"
    return f"{timesince(moment, now, depth=1)} ago"


def cluster_of(fabric: Fabric) -> FabricCluster | None:
    """The fabric's cluster, or None; no query when it was selected with the fabric."""
    try:
        return fabric.cluster
    except FabricCluster.DoesNotExist:
        return None


def counts_text(cluster: FabricCluster) -> str:
    """``"1 drifted · 2 missing"`` when out of sync, ``"12 objects"`` when in sync."""
    if cluster.drift_status == DriftStatus.IN_SYNC:
        total = cluster.count("in_sync")
        return f"{total} object{'' if total == 1 else 's'}"
    parts = [f"{cluster.count(state)} {state}" for state in OUT_OF_SYNC_STATES if cluster.count(state)]
    return " · ".join(parts)


def drift_badge(cluster: FabricCluster | None, now: datetime) -> SafeString | str:
    """The changelist's drift cell: the badge (its tooltip: when compared and the last
    error), the counts, and the compare's age; a dash for a Git-only fabric."""
    if cluster is None:
        return DASH
    label, colour = DRIFT_LABELS.get(cluster.drift_status, DRIFT_LABELS[DriftStatus.UNKNOWN])
    compared = f"compared {ago(cluster.drift_compared_at, now)}"
    error = redact(cluster.last_error)
    title = f"{compared}; {error}" if error else compared
    detail = Truncator(error).chars(60) if error else counts_text(cluster)
    return format_html(
        '{} <span style="white-space:nowrap">{}</span><br><small style="color:#6b7280">{}</small>',
        pill(label, colour, title),
        detail,
        compared,
    )


class DriftFilter(admin.SimpleListFilter):
    """Fabrics by their drift against the cluster (Argo CD's sync status)."""

    title = "drift"
    parameter_name = "drift"
    NO_CLUSTER = "none"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            (DriftStatus.IN_SYNC, "Synced"),
            (DriftStatus.OUT_OF_SYNC, "OutOfSync"),
            (DriftStatus.UNKNOWN, "Unknown (never compared, or the cluster unreadable)"),
            (self.NO_CLUSTER, "No cluster (Git only)"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Fabric]) -> QuerySet[Fabric]:
        value = self.value()
        if value == self.NO_CLUSTER:
            return queryset.filter(cluster__isnull=True)
        if value in DriftStatus.values:
            return queryset.filter(cluster__drift_status=value)
        return queryset


class FabricFilter(TextFilter):
    """Rows of one fabric, by its name typed into a box: a list of every fabric's link
    would be 10,000 links (most of a megabyte) on every page of runs or resources."""

    title = "fabric"
    parameter_name = "fabric"
    lookup = "fabric__name"
    placeholder = "fabric name, Enter"


# --- The cluster's settings: an inline on the fabric page ------------------------------------


def fabric_permission(request: HttpRequest, action: str) -> bool:
    """The cluster is part of its fabric: the fabric's permissions govern it."""
    return request.user.has_perm(f"sync.{action}_fabric")


class FabricClusterForm(forms.ModelForm):
    """What an operator sets; the token is a bearer-token ``Credential`` chosen by name."""

    class Meta:
        model = FabricCluster
        fields = [
            "server_url",
            "ca_bundle",
            "token",
            "namespaces",
            "kinds",
            "ignore_rules",
            "mode",
            "prune_enabled",
            "prune_max_share",
        ]
        labels = {"token": "Token (credential)"}
        widgets = {
            "server_url": forms.TextInput(attrs={"size": 60}),
            "ca_bundle": forms.Textarea(attrs={"rows": 4, "cols": 70, "style": "font-family:monospace"}),
            "namespaces": forms.Textarea(attrs={"rows": 1, "cols": 70, "style": "font-family:monospace"}),
            "kinds": forms.Textarea(attrs={"rows": 2, "cols": 70, "style": "font-family:monospace"}),
            "ignore_rules": forms.Textarea(attrs={"rows": 3, "cols": 70, "style": "font-family:monospace"}),
        }

    def full_clean(self) -> None:
        super().full_clean()
        key = self.add_prefix("server_url")
        if self.is_bound and "server_url" in self.errors and key in self.data:
            # A refused URL is shown again masked: a password or token typed into it never goes back into a page.
            data = self.data.copy() if isinstance(self.data, QueryDict) else dict(self.data)
            data[key] = redact_url(str(data.get(key, "")))
            self.data = data

    def _empty_list(self, name: str) -> Any:
        # An emptied box means "none" (the defaults), not JSON null.
        value = self.cleaned_data.get(name)
        return [] if value in (None, "") else value

    def clean_kinds(self) -> Any:
        return self._empty_list("kinds")

    def clean_ignore_rules(self) -> Any:
        return self._empty_list("ignore_rules")


CLUSTER_STATE_FIELDS = ("drift", "drift_compared_at", "live_read_at", "cluster_error", "latency", "prune_waiting")


class ClusterFormSet(BaseInlineFormSet):
    """A post that does not carry the cluster's inline at all (a script that edits only the
    fabric's own fields) leaves the cluster alone, instead of failing the whole save for
    a missing management form. A post that carries it is validated as usual."""

    @cached_property
    def management_form(self) -> ManagementForm:
        if self.is_bound and self.add_prefix(TOTAL_FORM_COUNT) not in self.data:
            absent = {self.add_prefix(TOTAL_FORM_COUNT): "0", self.add_prefix(INITIAL_FORM_COUNT): "0"}
            form = ManagementForm(absent, auto_id=self.auto_id, prefix=self.prefix)
            form.full_clean()
            return form
        return super().management_form


class FabricClusterInline(admin.StackedInline):
    """The fabric's Kubernetes cluster: at most one; removing it disconnects the fabric
    (``sync.operations.disconnect_cluster``) and it goes on Git-only."""

    model = FabricCluster
    form = FabricClusterForm
    formset = ClusterFormSet
    fk_name = "fabric"
    max_num = 1
    extra = 0
    verbose_name = "Kubernetes cluster"
    verbose_name_plural = "Kubernetes cluster"
    fieldsets = [
        ("Connection", {"fields": ["server_url", "ca_bundle", "token"]}),
        ("What it compares", {"fields": ["namespaces", "kinds", "ignore_rules"]}),
        ("Mode and prune", {"fields": ["mode", "prune_enabled", "prune_max_share"]}),
        ("Live state (written by the system)", {"fields": CLUSTER_STATE_FIELDS}),
    ]
    readonly_fields = CLUSTER_STATE_FIELDS
    # Rendered right after the fabric's own fields (see the fabric's change_form.html).
    section = "cluster"

    def get_queryset(self, request: HttpRequest) -> QuerySet[FabricCluster]:
        return super().get_queryset(request).defer("live_state")

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return fabric_permission(request, "view") or fabric_permission(request, "change")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return fabric_permission(request, "change")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return fabric_permission(request, "change")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return fabric_permission(request, "change")

    @admin.display(description="drift")
    def drift(self, cluster: FabricCluster) -> SafeString | str:
        return drift_badge(cluster, timezone.now()) if cluster.pk else DASH

    @admin.display(description="last error")
    def cluster_error(self, cluster: FabricCluster) -> str:
        return redact(cluster.last_error) or DASH

    @admin.display(description="API latency")
    def latency(self, cluster: FabricCluster) -> str:
        if cluster.latency_p50_ms is None:
            return DASH
        return f"p50 {cluster.latency_p50_ms:.0f} ms, p95 {(cluster.latency_p95_ms or 0):.0f} ms"

    @admin.display(description="prune waiting for confirmation")
    def prune_waiting(self, cluster: FabricCluster) -> SafeString | str:
        if not cluster.prune_refused:
            return DASH
        pending = list(cluster.prune_pending or [])
        shown = format_html_join("", "<li><code>{}</code></li>", ((name,) for name in pending[:DRIFT_ROWS_SHOWN]))
        more = f"… and {len(pending) - DRIFT_ROWS_SHOWN} more" if len(pending) > DRIFT_ROWS_SHOWN else ""
        confirmed = ""
        if cluster.prune_confirmed:
            confirmed = f"Confirmed by {cluster.prune_confirmed_by}: the next reconcile deletes these."
        return format_html(
            '{}<br><small>refused {}</small><ul style="margin-left:1.5em">{}</ul>{}<strong>{}</strong>',
            redact(cluster.prune_refused),
            ago(cluster.prune_refused_at, timezone.now()),
            shown,
            more,
            confirmed,
        )


# --- The drift on the fabric page -----------------------------------------------------------


@dataclass
class DriftRow:
    """One out-of-sync object as the fabric page shows it."""

    label: str
    state: str
    state_label: str
    colour: str
    diffs: list[dict[str, str]] = field(default_factory=list)  # {"path", "git", "live"}
    truncated: int = 0


@dataclass
class DriftSection:
    state: str
    title: str
    rows: list[DriftRow]
    total: int
    list_url: str

    @property
    def more(self) -> int:
        return max(self.total - len(self.rows), 0)


def object_label(row: DriftedObject) -> str:
    where = f"{row.namespace}/" if row.namespace else ""
    return f"{row.kind} {where}{row.name}"


def drift_row(row: DriftedObject) -> DriftRow:
    diffs = [
        {
            "path": str(d.get("path", "")),
            "git": show_value(d.get("desired"), limit=VALUE_CHARS),
            "live": show_value(d.get("live"), bool(d.get("live_absent")), limit=VALUE_CHARS),
        }
        for d in row.diff or []
    ]
    return DriftRow(
        label=object_label(row),
        state=row.state,
        state_label=row.get_state_display(),
        colour=STATE_COLOURS.get(row.state, "#6b7280"),
        diffs=diffs,
        truncated=row.truncated,
    )


SECTION_TITLES = {
    DriftState.DRIFTED: "Drifted: the cluster differs from Git in these fields",
    DriftState.MISSING: "Missing: in Git, not in the cluster",
    DriftState.UNMANAGED: "Unmanaged: in the cluster, not in Git",
}


def drift_context(fabric: Fabric, now: datetime) -> dict[str, Any]:
    """What the fabric page's drift section shows: the summary and, per state, the first
    ``DRIFT_ROWS_SHOWN`` objects (one query per state that has any)."""
    cluster = cluster_of(fabric)
    if cluster is None:
        return {"cluster": None}
    label, colour = DRIFT_LABELS.get(cluster.drift_status, DRIFT_LABELS[DriftStatus.UNKNOWN])
    base_url = reverse("admin:sync_driftedobject_changelist")
    sections = []
    for state in OUT_OF_SYNC_STATES:
        total = cluster.count(state)
        if not total:
            continue
        rows = DriftedObject.objects.filter(fabric=fabric, state=state).order_by("kind", "namespace", "name")
        sections.append(
            DriftSection(
                state=state,
                title=SECTION_TITLES[state],
                rows=[drift_row(r) for r in rows[:DRIFT_ROWS_SHOWN]],
                total=total,
                list_url=f"{base_url}?fabric__id__exact={fabric.pk}&state__exact={state}",
            )
        )
    return {
        "cluster": cluster,
        "badge": pill(label, colour),
        "summary": counts_text(cluster),
        "compared": ago(cluster.drift_compared_at, now),
        "error": redact(cluster.last_error),
        "sections": sections,
        "reconcile_mode": cluster.mode == ClusterMode.RECONCILE,
    }


# --- The drifted objects: the whole list, read-only --------------------------------------------


@admin.register(DriftedObject)
class DriftedObjectAdmin(AdminListMixin, admin.ModelAdmin):
    """Every out-of-sync object of every fabric, written by the sync; nobody edits it."""

    list_display = ["object", "state_badge", "fabric", "field_count", "compared"]
    list_filter = ["state", "kind", FabricFilter]
    list_select_related = ["fabric"]
    search_fields = ["name", "namespace", "kind", "fabric__name"]
    fields = ("fabric", "object", "api_version", "state_badge", "live_uid", "compared_at", "diff_table")
    readonly_fields = fields
    list_per_page = 100
    show_facets = admin.ShowFacets.NEVER

    @admin.display(description="compared", ordering="compared_at")
    def compared(self, row: DriftedObject) -> str:
        return stamp(row.compared_at)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # the next compare rewrites these rows anyway
        return actions

    @admin.display(description="object", ordering="kind")
    def object(self, row: DriftedObject) -> str:
        return object_label(row)

    @admin.display(description="state", ordering="state")
    def state_badge(self, row: DriftedObject) -> SafeString:
        return pill(row.get_state_display(), STATE_COLOURS.get(row.state, "#6b7280"))

    @admin.display(description="fields")
    def field_count(self, row: DriftedObject) -> int:
        return len(row.diff or []) + row.truncated

    @admin.display(description="difference")
    def diff_table(self, row: DriftedObject) -> SafeString:
        shown = drift_row(row)
        if not shown.diffs:
            unmanaged = row.state == DriftState.UNMANAGED
            git, live = ("(absent)", "(the object)") if unmanaged else ("(the object)", "(absent)")
            return format_html("<p>Git: {} · live: {}</p>", git, live)
        lines = format_html_join(
            "",
            "<tr><td><code>{}</code></td><td><code>{}</code></td><td><code>{}</code></td></tr>",
            ((d["path"], d["git"], d["live"]) for d in shown.diffs),
        )
        more = f"… {row.truncated} more field(s)" if row.truncated else ""
        return format_html(
            "<table><thead><tr><th>field</th><th>Git</th><th>live</th></tr></thead><tbody>{}</tbody></table>{}",
            lines,
            more,
        )


def pending_prune(cluster: FabricCluster) -> list[str]:
    return [str(name) for name in (cluster.prune_pending or [])]


def refusal_stamp(cluster: FabricCluster) -> str:
    """Identifies the refusal an operator saw, so a confirmation cannot apply to a newer one."""
    return cluster.prune_refused_at.isoformat() if cluster.prune_refused_at else ""
