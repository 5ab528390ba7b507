"""Sync's own health checks and heal action, registered from ``SyncConfig.ready()``.

- ``sync_leases``: leases long past their expiry mean the tick's reaper is not running.
- ``git``: one component per distinct Git URL (and Git credential) of the enabled
  fabrics, probed with ``git ls-remote`` through the sync's own git runner (same
  environment, credential, timeout, redaction and circuit breaker as a sync).
- ``kubernetes``: one component per fabric cluster of the enabled fabrics: reachable
  and the token accepted (``GET /version``), and RBAC allowing what the fabric's mode
  needs (SelfSubjectAccessReviews), through the sync's own client and so the cluster's
  shared breaker. The token never reaches a message or a detail.
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
from sync.live.client import ClusterUnavailable, KubeError
from sync.live.cluster import client_for, config_of
from sync.live.state import reading_pool
from sync.models import ClusterMode, Fabric, FabricCluster, SyncStatus
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


MAX_CLUSTERS = 50  # per sweep, like HEALTH_MAX_GIT_SOURCES
READ_VERBS = ("list", "watch")


def _cluster_results() -> list[HealthCheckResult]:
    """One component per fabric cluster of the enabled fabrics (capped per sweep)."""
    clusters = list(
        FabricCluster.objects.filter(fabric__sync_enabled=True)
        .select_related("fabric", "token")
        .defer("live_state")
        .order_by("fabric__name")[:MAX_CLUSTERS]
    )
    # The live reader's long-lived threads: a fresh thread per probe and sweep would open
    # (and count for good) a new breaker connection to Redis each time (core.breaker_redis).
    return list(reading_pool().map(_probe_cluster, clusters))


def _probe_cluster(cluster: FabricCluster) -> HealthCheckResult:
    """Reachable, authenticated, and allowed what the mode needs, in one namespace.

    UNHEALTHY: unreachable, the token or the certificate refused, the breaker open
    (the cluster kept failing), or reading forbidden (the sync cannot compare).
    DEGRADED: a write the reconcile mode needs is forbidden, or an operator forced
    the breaker open (that says nothing about the cluster).
    """
    started = timezone.now()
    verbs = list(READ_VERBS)
    if cluster.mode == ClusterMode.RECONCILE:
        # Server-side apply is a PATCH, and creating a missing object through it needs create.
        verbs += ["patch", "create"]
        if cluster.prune_enabled:
            verbs.append("delete")
    details: dict[str, object] = {"fabric": cluster.fabric.name, "mode": cluster.mode, "server": cluster.server_url}
    try:
        config = config_of(cluster)
        with client_for(cluster, timeout=TIMEOUT, deadline=TIMEOUT, max_attempts=2) as client:
            access = client.check_access(config.kinds, config.namespaces[:1], verbs)
        details["server_version"] = access.server_version
        reads = [line for line in access.denied if line.split(" ", 1)[0] in READ_VERBS]
        if reads:
            status, message = U, f"reachable, but the token may not {_first(reads)}"
        elif access.denied:
            status, message = D, f"reachable, but the token may not {_first(access.denied)} (reconcile needs it)"
        else:
            status, message = H, f"reachable, authenticated ({access.server_version})"
        details["denied"] = access.denied[:20]
    except ClusterUnavailable as exc:
        status, message = D if exc.forced else U, str(exc)
    except KubeError as exc:
        status, message = U, str(exc)
    latency = (timezone.now() - started).total_seconds() * 1000
    return HealthCheckResult(
        component=f"k8s:{cluster.fabric.name}"[:200],
        component_type=ComponentType.RPC,
        status=status,
        message=redact(message)[:500],
        latency_ms=round(latency, 2),
        details=details,
        failure_threshold=KUBERNETES.failure_threshold,
        success_threshold=KUBERNETES.success_threshold,
    )


def _first(lines: list[str]) -> str:
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    return f"{lines[0]}{more}"


KUBERNETES = register(
    HealthCheck(
        "kubernetes",
        ComponentType.RPC,
        _cluster_results,
        # Each cluster: a /version probe and a few access reviews, each bounded by TIMEOUT.
        timeout=TIMEOUT * 3 + 5,
        provider=True,
        live=False,
    )
)


@heal_action("release_expired_leases", "sync_leases")
def release_expired_leases(component: str) -> str:
    from sync.leases import reap_expired

    reaped = reap_expired(timezone.now())
    return f"released {reaped['leases_reaped']} expired lease(s), {reaped['runs_lost']} run(s) marked lost"
