"""What must hold after every fault, read from the database (call inside ``stack.orm()``)."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Q
from django.utils import timezone

from sync.models import Fabric, RunStatus, SyncRun, SyncStatus

SYNCED = (RunStatus.SUCCESS, RunStatus.UNCHANGED)


def overlapping_runs() -> list[tuple[int, int, int]]:
    """(fabric, run, run) for every two runs of one fabric whose lifetimes overlap.

    A run's lifetime is started_at until finished_at (now while running). Two syncs of
    one fabric at once would show here, whatever their outcome.
    """
    now = timezone.now()
    overlaps = []
    runs = SyncRun.objects.order_by("fabric_id", "started_at").values_list(
        "fabric_id", "id", "started_at", "finished_at"
    )
    last: dict[int, tuple[int, datetime]] = {}
    for fabric_id, run_id, started, finished in runs:
        previous = last.get(fabric_id)
        if previous is not None and started < previous[1]:
            overlaps.append((fabric_id, previous[0], run_id))
        end = finished or now
        if previous is None or end > previous[1]:
            last[fabric_id] = (run_id, end)
    return overlaps


def stuck_fabrics() -> list[str]:
    """Fabrics QUEUED or SYNCING whose lease ran out: nobody will finish them."""
    now = timezone.now()
    return list(
        Fabric.objects.filter(sync_status__in=[SyncStatus.QUEUED, SyncStatus.SYNCING])
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now))
        .values_list("name", flat=True)
    )


def not_synced_since(since: datetime) -> list[str]:
    """Fabrics with no successful run that started at or after ``since``."""
    synced = SyncRun.objects.filter(status__in=SYNCED, started_at__gte=since).values("fabric_id")
    return list(Fabric.objects.exclude(id__in=synced).values_list("name", flat=True))


def describe(names: list[str]) -> str:
    """Where each named fabric stands (status, lease, last runs): what a failed bound prints."""
    now = timezone.now()
    lines = []
    for fabric in Fabric.objects.filter(name__in=names):
        lease = (
            f"lease {fabric.lease_owner or '-'} ends {(fabric.lease_expires_at - now).total_seconds():+.0f} s"
            if fabric.lease_expires_at
            else "no lease"
        )
        runs = SyncRun.objects.filter(fabric=fabric).order_by("-started_at")[:4]
        history = ", ".join(
            f"{run.status}@{(run.started_at - now).total_seconds():+.0f}s {run.error_message[:80]!r}" for run in runs
        )
        lines.append(
            f"{fabric.name}: {fabric.sync_status}, next {(fabric.next_sync_at - now).total_seconds():+.0f} s, "
            f"{lease}, deliveries {fabric.lease_deliveries}, failures {fabric.consecutive_failures}, "
            f"error {fabric.last_error[:120]!r}; runs: {history or 'none'}"
        )
    return "; ".join(lines)


def assert_healthy_history() -> None:
    overlaps = overlapping_runs()
    assert not overlaps, f"fabrics synced twice at once (fabric, run, run): {overlaps}"
    stuck = stuck_fabrics()
    assert not stuck, f"fabrics stuck QUEUED/SYNCING with an expired lease: {stuck}"


def report(what: str, seconds: float, ticks: int) -> None:
    """Print a measured figure (``pytest -s``); docs/reliability.md quotes them."""
    print(f"\nMEASURED {what}: {seconds:.1f} s, {ticks} tick(s)")
