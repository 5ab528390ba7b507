"""The JSON shapes of the API: plain dicts from model rows (times in ISO 8601, UTC).

Errors and URLs pass through ``core.redaction`` first, as everywhere else they are
shown: a credential in a Git URL or an error message never reaches a response.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from core.redaction import redact
from sync.models import Fabric, FabricCluster, SyncRun


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def cluster_of(fabric: Fabric) -> FabricCluster | None:
    try:
        return fabric.cluster
    except FabricCluster.DoesNotExist:
        return None


def fabric_shape(fabric: Fabric) -> dict[str, Any]:
    cluster = cluster_of(fabric)
    return {
        "id": fabric.id,
        "name": fabric.name,
        "url": f"/api/fabrics/{fabric.id}/",
        "git_url": fabric.safe_git_url,
        "git_branch": fabric.git_branch,
        "git_path": fabric.git_path,
        "sync_enabled": fabric.sync_enabled,
        "sync_interval": fabric.sync_interval,
        "status": fabric.sync_status,
        "last_sync": iso(fabric.last_sync),
        "last_attempt_at": iso(fabric.last_attempt_at),
        "next_sync_at": iso(fabric.next_sync_at),
        "consecutive_failures": fabric.consecutive_failures,
        "failing_since": iso(fabric.failing_since),
        "last_error": redact(fabric.last_error),
        "commit": fabric.current_commit,
        "drift": None
        if cluster is None
        else {
            "status": cluster.drift_status,
            "counts": cluster.drift_counts or {},
            "compared_at": iso(cluster.drift_compared_at),
            "last_error": redact(cluster.last_error),
        },
    }


def lease_shape(fabric: Fabric, now: datetime) -> dict[str, Any] | None:
    """The claim a sync holds on ``fabric`` (its token names the run it starts), or None."""
    if not fabric.lease_token or fabric.lease_expires_at is None or fabric.lease_expires_at <= now:
        return None
    return {
        "token": fabric.lease_token,
        "status": fabric.sync_status,
        "owner": fabric.lease_owner,
        "expires_at": iso(fabric.lease_expires_at),
        "deliveries": fabric.lease_deliveries,
    }


def run_shape(run: SyncRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "url": f"/api/runs/{run.id}/",
        "fabric": {"id": run.fabric_id, "url": f"/api/fabrics/{run.fabric_id}/"},
        "trigger": run.trigger,
        "status": run.status,
        "attempt": run.attempt,
        "token": run.lease_token,
        "worker": run.worker,
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "duration_ms": run.duration_ms,
        "commit": run.commit,
        "resources": {
            "created": run.resources_created,
            "updated": run.resources_updated,
            "deleted": run.resources_deleted,
            "total": run.resources_total,
        },
        "error_class": run.error_class,
        "error": redact(run.error_message),
        "live_status": run.live_status,
        "live_error": redact(run.live_error),
    }
