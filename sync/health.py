"""Sync's own health checks and heal action, registered from ``SyncConfig.ready()``.

- ``sync_leases``: leases long past their expiry mean the tick's reaper is not running.
- ``git``: one component per distinct Git URL of the enabled fabrics, probed with
  ``git ls-remote`` through the sync's own git runner (same environment, timeout,
  redaction and circuit breaker as a sync).
- heal action ``release_expired_leases`` for ``sync_leases``: run the reaper now.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from core.heal import heal_action
from core.health import ComponentType, HealthCheck, HealthCheckResult, HealthStatus, Report, health_check, register
from core.redaction import redact
from sync.errors import SyncError
from sync.models import Fabric, SyncStatus
from sync.sources.git import GitSource

H, U = HealthStatus.HEALTHY, HealthStatus.UNHEALTHY
TIMEOUT = settings.HEALTH_CHECK_TIMEOUT


@health_check("sync_leases", ComponentType.SYNC, timeout=TIMEOUT, failure_threshold=1, live=False)
def check_sync_leases() -> Report:
    """Leases long past their expiry mean the reaper (the tick's sync step) is not running."""
    cutoff = timezone.now() - timedelta(seconds=settings.HEALTH_LEASE_GRACE_SECONDS)
    stuck = Fabric.objects.filter(
        sync_status__in=[SyncStatus.QUEUED, SyncStatus.SYNCING], lease_expires_at__lte=cutoff
    ).count()
    if stuck:
        return Report(U, f"{stuck} fabric lease(s) expired more than {settings.HEALTH_LEASE_GRACE_SECONDS} s ago")
    return Report(H, "no stale sync leases")


def _git_results() -> list[HealthCheckResult]:
    """One component per distinct Git URL of the enabled fabrics (capped per sweep)."""
    fabrics: dict[str, list[str]] = {}
    for url, name in (
        Fabric.objects.filter(sync_enabled=True).order_by("git_url", "name").values_list("git_url", "name")
    ):
        if url in fabrics or len(fabrics) < settings.HEALTH_MAX_GIT_SOURCES:
            fabrics.setdefault(url, []).append(name)
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(fabrics)))) as pool:
        return list(pool.map(_probe_git, fabrics, fabrics.values()))


def _probe_git(url: str, fabric_names: list[str]) -> HealthCheckResult:
    """``git ls-remote`` through the sync's own git runner (same env, timeout, redaction)."""
    started = timezone.now()
    # The cache folder is never touched by ls-remote; the branch is irrelevant to it.
    source = GitSource(url, "main", settings.SYNC_GIT_CACHE_DIR, settings.HEALTH_GIT_TIMEOUT)
    try:
        source.check_reachable()
        status, message = H, "reachable"
    except SyncError as exc:
        status, message = U, str(exc)
    latency = (timezone.now() - started).total_seconds() * 1000
    return HealthCheckResult(
        component=f"git:{redact(url)}"[:200],
        component_type=ComponentType.FABRIC_SOURCE,
        status=status,
        message=message[:500],
        latency_ms=round(latency, 2),
        details={"fabrics": fabric_names[:50]},
        failure_threshold=GIT.failure_threshold,
        success_threshold=GIT.success_threshold,
    )


GIT = register(
    HealthCheck(
        "git",
        ComponentType.FABRIC_SOURCE,
        _git_results,
        timeout=settings.HEALTH_GIT_TIMEOUT + 5,
        provider=True,
        live=False,
    )
)


@heal_action("release_expired_leases", "sync_leases")
def release_expired_leases(component: str) -> str:
    from sync.leases import reap_expired

    reaped = reap_expired(timezone.now())
    return f"released {reaped['leases_reaped']} expired lease(s), {reaped['runs_lost']} run(s) marked lost"
