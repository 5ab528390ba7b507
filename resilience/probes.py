"""The built-in health checks. Importing this module registers them (see ``apps.py``).

Each check keeps its own I/O timeout below the runner's timeout, so an abandoned
thread rarely outlives its sweep. Messages are redacted by the runner; none of them
includes a URL with credentials in the first place.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from core.health import HealthCheck, HealthCheckResult, Report, health_check, register
from core.tick import LAST_TICK_CACHE_KEY
from resilience.engine import EngineUnavailable, engine_client, is_engine_failure
from resilience.models import ComponentType, HealthStatus

H, D, U, UNKNOWN = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY, HealthStatus.UNKNOWN
TIMEOUT = settings.HEALTH_CHECK_TIMEOUT


@health_check("database", ComponentType.DATABASE, critical=True, timeout=TIMEOUT)
def check_database() -> Report:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return Report(H, f"{connection.vendor} answers")


@health_check("cache", ComponentType.CACHE, critical=True, timeout=TIMEOUT)
def check_cache() -> Report:
    value = timezone.now().isoformat()
    cache.set("resilience:health-probe", value, timeout=30)
    if cache.get("resilience:health-probe") != value:
        return Report(U, "cache did not return what was just written")
    return Report(H, "cache answers")


def broker_reachable(timeout: int = 3) -> None:
    """Open a broker connection and make one round trip; raise if it cannot."""
    from project.celery_app import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
        client = getattr(conn.default_channel, "client", None)
        if client is not None:  # Redis transport: a real PING, not just a socket
            client.ping()


@health_check("broker", ComponentType.BROKER, critical=True, timeout=TIMEOUT)
def check_broker() -> Report:
    broker_reachable()
    return Report(H, "broker answers")


@health_check("workers", ComponentType.WORKER, critical=True, timeout=TIMEOUT)
def check_workers() -> Report:
    """Ping workers only once the broker answered (a ping to a dead broker hangs)."""
    from project.celery_app import app

    try:
        broker_reachable()
    except Exception as exc:
        return Report(UNKNOWN, f"skipped: broker unreachable ({type(exc).__name__})")
    # The consumer thread answers control messages even when every pool process is
    # busy, so a busy worker still replies; a worker that does not is gone or stuck.
    replies = app.control.ping(timeout=settings.HEALTH_WORKER_PING_TIMEOUT)
    names = sorted(name for reply in replies or [] for name in reply)
    if not names:
        return Report(U, "no Celery worker answered a ping")
    return Report(H, f"{len(names)} worker(s) answered", {"workers": names})


@health_check("scheduler", ComponentType.SCHEDULER, critical=True, timeout=TIMEOUT)
def check_scheduler() -> Report:
    """The age of the last master tick (recorded by ``core.tick``)."""
    summary = cache.get(LAST_TICK_CACHE_KEY)
    if not summary:
        return Report(UNKNOWN, "no tick recorded yet")
    at = datetime.fromisoformat(str(summary["at"]))
    age = (timezone.now() - at).total_seconds()
    details = {"last_tick_at": at.isoformat(), "age_seconds": round(age, 1)}
    if age > settings.HEALTH_BEAT_MAX_AGE:
        return Report(U, f"last tick {age:.0f} s ago (limit {settings.HEALTH_BEAT_MAX_AGE} s)", details)
    if summary.get("errors"):
        return Report(D, f"last tick had failing steps: {', '.join(summary['errors'])}", details)
    return Report(H, f"last tick {age:.0f} s ago", details)


@health_check("disk", ComponentType.DISK, timeout=TIMEOUT)
def check_disk() -> Report:
    usage = shutil.disk_usage(settings.VAR_DIR)
    free = 100.0 * usage.free / usage.total
    details = {"free_percent": round(free, 1), "free_bytes": usage.free}
    if free < settings.HEALTH_DISK_UNHEALTHY_PERCENT:
        return Report(U, f"only {free:.1f} % free under var/", details)
    if free < settings.HEALTH_DISK_DEGRADED_PERCENT:
        return Report(D, f"{free:.1f} % free under var/", details)
    return Report(H, f"{free:.1f} % free under var/", details)


def _breaker_results() -> list[HealthCheckResult]:
    from resilience.snapshots import read_breakers

    check = BREAKERS
    results = []
    for metrics in read_breakers():
        opened = metrics.state.value in ("open", "half_open", "forced_open")
        # An open breaker is doing its job: its component is DEGRADED, never the system DOWN.
        status = D if opened else H
        message = f"{metrics.state.value}, failure rate {metrics.failure_rate:g} %"
        results.append(
            HealthCheckResult(
                component=f"breaker:{metrics.name}",
                component_type=ComponentType.BREAKER,
                status=status,
                message=message,
                details={"rejected_calls": metrics.rejected_calls},
                failure_threshold=check.failure_threshold,
                success_threshold=check.success_threshold,
            )
        )
    return results


BREAKERS = register(
    HealthCheck("breaker", ComponentType.BREAKER, _breaker_results, timeout=TIMEOUT, provider=True, success_threshold=1)
)


# Below the runner's timeout, so the engine call ends (and reaches the breaker) first.
DOCKER_CHECK_TIMEOUT = max(1, min(settings.DOCKER_TIMEOUT, int(TIMEOUT) - 1))


def _check_docker() -> Report:
    """The engine at ``DOCKER_URL`` answers a ping; an open breaker answers for it."""
    try:
        with engine_client(DOCKER_CHECK_TIMEOUT) as client:
            client.ping()
            version = client.version().get("Version", "?")
    except EngineUnavailable as exc:
        # Forced open by an operator says nothing about the engine; open says it failed.
        return Report(D if exc.forced else U, str(exc), {"breaker_state": exc.state.value})
    return Report(H, f"Docker engine {version} answers")


def _known_containers() -> list[str]:
    from resilience.models import ComponentHealth

    return list(ComponentHealth.objects.filter(name__startswith="container:").values_list("name", flat=True))


def _containers_unknown(reason: str) -> list[HealthCheckResult]:
    """The engine cannot tell: each known container keeps its status (UNKNOWN changes nothing)."""
    return [
        HealthCheckResult(
            component=name,
            component_type=ComponentType.CONTAINER,
            status=UNKNOWN,
            message=f"skipped: {reason}",
            failure_threshold=CONTAINERS.failure_threshold,
            success_threshold=CONTAINERS.success_threshold,
        )
        for name in _known_containers()
    ]


def _container_results() -> list[HealthCheckResult]:
    """Managed containers (label ``HEALTH_CONTAINER_LABEL=true``): running, and healthy if they say."""
    try:
        with engine_client(DOCKER_CHECK_TIMEOUT) as client:
            label = f"{settings.HEALTH_CONTAINER_LABEL}=true"
            containers = client.containers.list(all=True, filters={"label": label}, ignore_removed=True)
    except EngineUnavailable as exc:
        return _containers_unknown(str(exc))
    except Exception as exc:
        if not is_engine_failure(exc):
            raise
        return _containers_unknown(f"Docker engine unreachable ({type(exc).__name__})")
    results = []
    for container in containers:
        state: dict[str, Any] = container.attrs.get("State", {})
        health = (state.get("Health") or {}).get("Status")
        if state.get("Status") != "running":
            status, message = U, f"{state.get('Status')} (exit code {state.get('ExitCode')})"
        elif health == "unhealthy":
            status, message = U, "running, but its HEALTHCHECK fails"
        else:
            status, message = H, f"running{f', {health}' if health else ''}"
        results.append(
            HealthCheckResult(
                component=f"container:{container.name}",
                component_type=ComponentType.CONTAINER,
                status=status,
                message=message,
                details={"id": container.short_id, "restart_count": container.attrs.get("RestartCount", 0)},
                failure_threshold=CONTAINERS.failure_threshold,
                success_threshold=CONTAINERS.success_threshold,
            )
        )
    return results


CONTAINERS = HealthCheck("container", ComponentType.CONTAINER, _container_results, timeout=TIMEOUT, provider=True)
if settings.HEALTH_DOCKER_ENABLED:
    register(HealthCheck("docker", ComponentType.DOCKER, _check_docker, timeout=TIMEOUT))
    register(CONTAINERS)
