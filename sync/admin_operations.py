"""The fabric admin's operations on a fabric's cluster: *Compare now*, *Reconcile now* and
*Confirm prune* (actions on the fabric list), the buttons on the fabric page that run
them (and *Sync now*) for one fabric, and saving the cluster inline.

``FabricOperationsAdmin`` is the base class of ``sync.admin.FabricAdmin``. Every
operation needs the change permission, calls ``sync.operations`` (which claims the
fabric's lease like any sync) and leaves an audit entry (``core.audit.audit``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.forms.models import BaseModelFormSet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseBase,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone

from core.audit import audit
from core.display import AdminListMixin
from core.redaction import redact
from sync import operations
from sync.admin_drift import cluster_of, drift_context, pending_prune, refusal_stamp
from sync.models import ClusterMode, Fabric, FabricCluster

# The buttons on the fabric page and the action each runs.
OPERATIONS = {"sync": "sync_now", "compare": "compare_now", "reconcile": "reconcile_now", "prune": "confirm_prune"}
PRUNE_SHOWN = 500  # pending objects listed per fabric on the confirmation page


def save_cluster_formset(formset: BaseModelFormSet, fabric: Fabric, now: datetime) -> None:
    """Save the cluster inline the way ``sync.operations`` wants it: a new connection as a
    new row, an edit as its changed settings only, a removal as ``disconnect_cluster``.
    Fills the formset's ``new_objects`` / ``changed_objects`` / ``deleted_objects``, which
    the admin's change message (the fabric's history) reads."""
    formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
    for form in formset.forms:
        cluster = form.instance
        if form in formset.deleted_forms:
            if cluster.pk and operations.disconnect_cluster(fabric):
                formset.deleted_objects.append(cluster)
        elif cluster.pk is None:
            if form.has_changed():
                cluster = formset.save_new(form)
                # Same columns again, but this also makes the fabric due now: the first compare comes at once.
                operations.save_cluster_settings(cluster, form.changed_data, now)
                formset.new_objects.append(cluster)
        elif form.changed_data:
            operations.save_cluster_settings(cluster, form.changed_data, now)
            formset.changed_objects.append((cluster, form.changed_data))


def _with_cluster(queryset: QuerySet[Fabric]) -> QuerySet[Fabric]:
    """The selection with each fabric's cluster row (not its stored live objects)."""
    return Fabric.objects.with_cluster().filter(pk__in=queryset.values("pk"))


def count_fabrics(count: int) -> str:
    return f"{count} fabric{'' if count == 1 else 's'}"


def report_not_enqueued(
    model_admin: admin.ModelAdmin[Fabric], request: HttpRequest, outcome: operations.ManualSyncOutcome
) -> None:
    """Tell the operator which selected fabrics a manual sync left alone, and why."""
    if outcome.busy:
        model_admin.message_user(
            request,
            f"Skipped {count_fabrics(len(outcome.busy))} because a sync was already running: "
            f"{', '.join(outcome.busy)}.",
            messages.WARNING,
        )
    if outcome.failed:
        model_admin.message_user(
            request,
            f"Could not enqueue {count_fabrics(len(outcome.failed))} ({outcome.error}); nothing was claimed.",
            messages.ERROR,
        )


class FabricOperationsAdmin(AdminListMixin, admin.ModelAdmin):
    """The cluster operations of the fabric admin (see the module docstring)."""

    # --- The change page: drift and operation buttons ---

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Fabric | None = None,
    ) -> HttpResponse:
        if obj is not None and obj.pk:
            context["drift"] = drift_context(obj, timezone.now())
            context["fabric_operations"] = self.operations_for(request, obj)
            context["operate_url"] = reverse("admin:sync_fabric_operate", args=[obj.pk])
        return super().render_change_form(request, context, add, change, form_url, obj)

    def operations_for(self, request: HttpRequest, fabric: Fabric) -> list[tuple[str, str, str]]:
        """The buttons on the fabric page: (operation, label, what it does)."""
        if not self.has_change_permission(request, fabric):
            return []
        buttons = [("sync", "Sync now", "Read Git now (and compare the cluster, if the fabric has one)")]
        cluster = cluster_of(fabric)
        if cluster is not None:
            buttons.append(("compare", "Compare now", "Re-read the whole cluster and recompute the drift"))
            if cluster.mode == ClusterMode.RECONCILE:
                buttons.append(("reconcile", "Reconcile now", "Apply Git's objects to the cluster now"))
            if cluster.prune_refused:
                buttons.append(("prune", "Confirm prune", "Review and confirm the deletions the prune guard refused"))
        return buttons

    def get_urls(self) -> list[URLPattern]:
        operate = path(
            "<path:object_id>/operate/", self.admin_site.admin_view(self.operate_view), name="sync_fabric_operate"
        )
        return [operate, *super().get_urls()]

    def operate_view(self, request: HttpRequest, object_id: str) -> HttpResponseBase:
        """A button on the fabric page: the same action as in the list, for this fabric, then back to its page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        fabric = self.get_object(request, unquote(object_id))
        if fabric is None:
            raise Http404("No such fabric.")
        if not self.has_change_permission(request, fabric):
            raise PermissionDenied
        action = OPERATIONS.get(request.POST.get("op", ""))
        if action is None:
            return HttpResponseBadRequest("Unknown operation.")
        response = getattr(self, action)(request, Fabric.objects.filter(pk=fabric.pk))
        return response or HttpResponseRedirect(reverse("admin:sync_fabric_change", args=[fabric.pk]))

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is not FabricCluster:
            super().save_formset(request, form, formset, change)
            return
        save_cluster_formset(formset, form.instance, timezone.now())

    # --- Actions ---

    @admin.action(description="Compare now (re-read the cluster)", permissions=["change"])
    def compare_now(self, request: HttpRequest, queryset: QuerySet[Fabric]) -> None:
        fabrics = list(_with_cluster(queryset))
        outcome = operations.compare_now(fabrics, timezone.now())
        self._report_live(request, fabrics, outcome, "Compare now", "no Kubernetes cluster")

    @admin.action(description="Reconcile now (apply Git to the cluster)", permissions=["change"])
    def reconcile_now(self, request: HttpRequest, queryset: QuerySet[Fabric]) -> None:
        fabrics = list(_with_cluster(queryset))
        outcome = operations.reconcile_now(fabrics, timezone.now())
        self._report_live(
            request, fabrics, outcome, "Reconcile now", "no cluster, or a cluster in observe mode (which never writes)"
        )

    def _report_live(
        self,
        request: HttpRequest,
        fabrics: list[Fabric],
        outcome: operations.ManualSyncOutcome,
        what: str,
        not_applicable: str,
    ) -> None:
        tried = set(outcome.enqueued) | set(outcome.busy) | set(outcome.failed)
        parts = [f"{len(outcome.enqueued)} enqueued", f"{len(outcome.busy)} busy"]
        if outcome.failed:
            parts.append(f"{len(outcome.failed)} not enqueued")
        audit(request, [f for f in fabrics if f.name in tried], f"{what}: {', '.join(parts)}")
        if outcome.enqueued:
            self.message_user(
                request,
                f"{what}: enqueued {count_fabrics(len(outcome.enqueued))} ({', '.join(outcome.enqueued)}); "
                "the result shows on the fabric page when the run finishes.",
                messages.SUCCESS,
            )
        report_not_enqueued(self, request, outcome)
        if outcome.not_applicable:
            self.message_user(
                request,
                f"Left {count_fabrics(len(outcome.not_applicable))} alone, with {not_applicable}: "
                f"{', '.join(outcome.not_applicable)}.",
                messages.WARNING,
            )

    @admin.action(description="Confirm the refused prune", permissions=["change"])
    def confirm_prune(self, request: HttpRequest, queryset: QuerySet[Fabric]) -> TemplateResponse | None:
        """Show the objects the prune guard refused to delete; on "yes", confirm and reconcile.

        A confirmation counts only for the refusal the operator saw (its time is posted
        back): a newer refusal, of other objects, needs a new look.
        """
        waiting = [f for f in _with_cluster(queryset) if (c := cluster_of(f)) is not None and c.prune_refused]
        if not waiting:
            self.message_user(request, "No prune waits for a confirmation among the selected fabrics.", messages.INFO)
            return None
        if request.POST.get("post") != "yes":
            return self._confirm_prune_page(request, waiting)
        seen = dict(entry.partition("|")[::2] for entry in request.POST.getlist("refusal"))
        now = timezone.now()
        confirmed: list[Fabric] = []
        moved: list[str] = []
        for fabric in waiting:
            cluster = fabric.cluster
            if seen.get(str(fabric.pk)) != refusal_stamp(cluster):
                moved.append(fabric.name)
            elif operations.confirm_prune(cluster, request.user.get_username(), now):
                audit(request, [fabric], f"Confirmed the refused prune of {len(pending_prune(cluster))} objects")
                confirmed.append(fabric)
        if moved:
            self.message_user(
                request,
                f"The refused prune of {', '.join(moved)} changed since you looked: nothing confirmed there; "
                "review it again.",
                messages.WARNING,
            )
        if confirmed:
            self.message_user(
                request,
                f"Confirmed the prune of {count_fabrics(len(confirmed))}: "
                "the next reconcile deletes those objects, once.",
                messages.SUCCESS,
            )
            outcome = operations.reconcile_now(confirmed, now)
            self._report_live(request, confirmed, outcome, "Reconcile now", "a cluster in observe mode")
        return None

    def _confirm_prune_page(self, request: HttpRequest, fabrics: list[Fabric]) -> TemplateResponse:
        refused = [
            {
                "fabric": f,
                "reason": redact(f.cluster.prune_refused),
                "pending": pending_prune(f.cluster)[:PRUNE_SHOWN],
                "more": max(len(pending_prune(f.cluster)) - PRUNE_SHOWN, 0),
                "stamp": refusal_stamp(f.cluster),
            }
            for f in fabrics
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Confirm the refused prune",
            "opts": self.opts,
            "refused": refused,
            "back_url": reverse("admin:sync_fabric_change", args=[fabrics[0].pk])
            if len(fabrics) == 1
            else reverse("admin:sync_fabric_changelist"),
        }
        return TemplateResponse(request, "admin/sync/fabric/confirm_prune.html", context)
