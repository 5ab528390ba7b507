"""Sync's own health checks and heal action, registered from ``SyncConfig.ready()``.

- ``sync_leases``: leases long past their expiry mean the tick's reaper is not running.
- ``git``: one component per distinct Git URL (and Git credential) of the enabled
  fabrics, probed with ``git ls-remote`` through the sync's own git runner (same
  environment, credential, timeout, redaction and circuit breaker as a sync).
- heal action ``release_expired_leases`` for ``sync_leases``: run the reaper now.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from core.credentials import CredentialError, git_credential_env
from core.heal import heal_action
from core.health import ComponentType, HealthCheck, HealthCheckResult, HealthStatus, Report, health_check, register
from core.models import Credential
from core.redaction import redact
from sync.errors import SyncError
from sync.models import Fabric, SyncStatus
from sync.sources.git import GitSource, RemoteUnavailable

H, D, U = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY
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
    """One component per distinct Git URL and credential of the enabled fabrics (capped per sweep)."""
    sources: dict[tuple[str, int | None], list[str]] = {}
    for url, credential_id, name in (
        Fabric.objects.filter(sync_enabled=True)
        .order_by("git_url", "git_credential_id", "name")
        .values_list("git_url", "git_credential_id", "name")
    ):
        if (url, credential_id) in sources or len(sources) < settings.HEALTH_MAX_GIT_SOURCES:
            sources.setdefault((url, credential_id), []).append(name)
    credentials = Credential.objects.in_bulk({cid for _url, cid in sources if cid is not None})
    probes = [(url, names, credentials.get(cid) if cid else None) for (url, cid), names in sources.items()]
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(probes)))) as pool:
        return list(pool.map(lambda probe: _probe_git(*probe), probes))


def _probe_git(url: str, fabric_names: list[str], credential: Credential | None = None) -> HealthCheckResult:
    """``git ls-remote`` through the sync's own git runner (same env, credential, timeout, redaction).

    The runner's breaker too: while the remote host's breaker is open the probe says
    so without calling the remote, UNHEALTHY (the remote kept failing) or, when an
    operator forced it open, DEGRADED (that says nothing about the remote).
    """
    started = timezone.now()
    try:
        # The cache folder is never touched by ls-remote; the branch is irrelevant to it.
        source = GitSource(
            url,
            "main",
            settings.SYNC_GIT_CACHE_DIR,
            settings.HEALTH_GIT_TIMEOUT,
            extra_env=git_credential_env(credential, url),
        )
        source.check_reachable()
        status, message = H, "reachable"
    except RemoteUnavailable as exc:
        status, message = D if exc.forced else U, str(exc)
    except (SyncError, CredentialError) as exc:
        status, message = U, str(exc)
    latency = (timezone.now() - started).total_seconds() * 1000
    return HealthCheckResult(
        component=(f"git:{redact(url)}" + (f" ({credential.name})" if credential else ""))[:200],
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
