"""The JSON API: fabrics, their runs and "sync now", scaling, and system health (docs/api.md).

Plain Django views behind ``project.api.auth.api_view``. Writes go through the same
functions as the admin (``sync.operations.enqueue_manual_syncs`` for "Sync now") and
leave an audit entry (``Caller.audit``) like the admin's actions do.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.utils import timezone

from project.api.auth import Caller, api_view, error
from project.api.shapes import fabric_shape, iso, lease_shape, run_shape
from project.overview.scheduler import read_scheduler
from resilience import verdict
from scaling.models import ScalingEvent, ScalingPolicy
from sync import operations
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
RECENT_EVENTS = 10


def _int(value: str | None, default: int, low: int, high: int) -> int | None:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        return None
    return number if low <= number <= high else None


def _fabric(fabric_id: int) -> Fabric | None:
    return Fabric.objects.with_cluster().filter(id=fabric_id).first()


@api_view()
def fabrics(request: HttpRequest, caller: Caller) -> JsonResponse:
    """Fabrics with status, drift, last sync and errors; ``?status=``, ``?failing=1``, ``?limit=``, ``?offset=``."""
    limit = _int(request.GET.get("limit"), DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _int(request.GET.get("offset"), 0, 0, 10**9)
    if limit is None or offset is None:
        return error(400, f"limit must be 1..{MAX_LIMIT} and offset 0 or more")
    rows = Fabric.objects.with_cluster().order_by("name", "id")
    if status := request.GET.get("status"):
        if status not in SyncStatus.values:
            return error(400, f"unknown status {status!r}", statuses=list(SyncStatus.values))
        rows = rows.filter(sync_status=status)
    if request.GET.get("failing") in ("1", "true"):
        rows = rows.filter(sync_status__in=operations.FAILING_STATUSES) | rows.filter(consecutive_failures__gt=0)
    return JsonResponse(
        {
            "count": rows.count(),
            "limit": limit,
            "offset": offset,
            "fabrics": [fabric_shape(f) for f in rows[offset : offset + limit]],
        }
    )


@api_view()
def fabric(request: HttpRequest, caller: Caller, fabric_id: int) -> JsonResponse:
    """One fabric, its current lease and run, its last run; ``?token=`` adds what that claim started."""
    found = _fabric(fabric_id)
    if found is None:
        return error(404, f"no fabric {fabric_id}")
    now = timezone.now()
    lease = lease_shape(found, now)
    runs = SyncRun.objects.filter(fabric=found).order_by("-started_at", "-id")
    current = runs.filter(lease_token=found.lease_token, status=RunStatus.RUNNING).first() if lease else None
    last = runs.first()
    body: dict[str, Any] = {
        **fabric_shape(found),
        "lease": lease,
        "current_run": run_shape(current) if current else None,
        "last_run": run_shape(last) if last else None,
    }
    if token := request.GET.get("token"):
        claimed = runs.filter(lease_token=token).first()
        body["claim"] = {
            "token": token,
            "held": bool(lease and lease["token"] == token),
            "run": run_shape(claimed) if claimed else None,
        }
    return JsonResponse(body)


@api_view(methods=("POST",), permission="sync.change_fabric")
def sync_fabric(request: HttpRequest, caller: Caller, fabric_id: int) -> JsonResponse:
    """ "Sync now": claim the fabric's lease and publish its sync, as the admin's action does."""
    found = _fabric(fabric_id)
    if found is None:
        return error(404, f"no fabric {fabric_id}")
    now = timezone.now()
    outcome = operations.enqueue_manual_syncs([found], now)
    token = outcome.tokens.get(found.id)
    if token:
        caller.audit(request, [found], "Sync now: enqueued")
        run = SyncRun.objects.filter(fabric=found, lease_token=token).order_by("-id").first()
        return JsonResponse(
            {
                "fabric": found.id,
                "claimed": True,
                "token": token,
                "run": run.id if run else None,  # known once a worker has started it
                "status_url": f"/api/fabrics/{found.id}/?token={token}",
            },
            status=202,
        )
    if outcome.busy:
        caller.audit(request, [found], "Sync now: busy (a sync is queued or running)")
        found.refresh_from_db()
        return error(409, "a sync of this fabric is already queued or running", lease=lease_shape(found, now))
    caller.audit(request, [found], "Sync now: not enqueued (broker unavailable)")
    return error(503, "could not enqueue the sync: the broker did not accept it", detail=outcome.error)


@api_view()
def run(request: HttpRequest, caller: Caller, run_id: int) -> JsonResponse:
    found = SyncRun.objects.filter(id=run_id).first()
    if found is None:
        return error(404, f"no run {run_id}")
    body = run_shape(found)
    body["fabric"]["name"] = Fabric.objects.filter(id=found.fabric_id).values_list("name", flat=True).first()
    return JsonResponse(body)


@api_view()
def scaling(request: HttpRequest, caller: Caller) -> JsonResponse:
    """Each service's current and desired instances, and its recent decisions."""
    services = []
    for policy in ScalingPolicy.objects.order_by("service"):
        events = list(
            ScalingEvent.objects.filter(service=policy.service).order_by("-created_at", "-id")[:RECENT_EVENTS]
        )
        services.append(
            {
                "service": policy.service,
                "enabled": policy.enabled,
                "dry_run": policy.dry_run,
                "min_instances": policy.min_instances,
                "max_instances": policy.max_instances,
                "current": policy.observed_instances,
                "observed_at": iso(policy.observed_at),
                "desired": events[0].desired_instances if events else None,
                "decided_at": iso(events[0].created_at) if events else None,
                "recent_events": [e.as_dict() for e in events],
            }
        )
    return JsonResponse({"services": services})


@api_view()
def health(request: HttpRequest, caller: Caller) -> JsonResponse:
    """``/health/``'s full verdict computed now (stale components shown ``stale``), plus the scheduler.

    Always 200: the body says the status; probes use ``/health/``, whose code carries it.
    """
    result = verdict.compute_verdict()  # notices (and records, once) a stopped scheduler
    return JsonResponse({**result.body, "scheduler": read_scheduler(timezone.now()).as_dict()})
