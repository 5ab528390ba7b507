"""Health checks: their registry, a concurrent runner with timeouts, and the system verdict.

A check is a function returning a ``Report`` for its own component; a *provider*
returns a list of ``HealthCheckResult`` for components it discovers (one per managed
container, per fabric Git source, per breaker). Each check has a timeout, a critical
flag and thresholds (N consecutive failures before UNHEALTHY, M successes before
HEALTHY again; ``resilience.tracking`` applies them). The registry holds code only.

Running checks (``run_checks``):

1. Every check starts at once in its own daemon thread.
2. The runner waits for each one until that check's own deadline (start + timeout).
3. A check that raised yields UNHEALTHY with the error; one still running at its
   deadline yields UNHEALTHY "timed out" and is abandoned (a daemon thread never
   blocks the process from exiting). So a sweep lasts about as long as its slowest
   check, bounded by the longest timeout, and one hanging check delays nothing else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from django.db import connections, models
from django.utils import timezone

from core.redaction import redact

logger = logging.getLogger(__name__)

__all__ = [
    "ComponentType",
    "HealthCheck",
    "HealthCheckResult",
    "HealthStatus",
    "Report",
    "SystemHealth",
    "health_check",
    "run_checks",
]


class HealthStatus(models.TextChoices):
    HEALTHY = "healthy", "Healthy"
    DEGRADED = "degraded", "Degraded"
    UNHEALTHY = "unhealthy", "Unhealthy"
    UNKNOWN = "unknown", "Unknown"


class ComponentType(models.TextChoices):
    DATABASE = "database", "Database"
    CACHE = "cache", "Cache"
    BROKER = "broker", "Broker"
    WORKER = "worker", "Celery workers"
    SCHEDULER = "scheduler", "Scheduler (beat)"
    DOCKER = "docker", "Docker engine"
    CONTAINER = "container", "Managed container"
    FABRIC_SOURCE = "fabric_source", "Fabric Git source"
    SERVICE = "service", "Service"
    RPC = "rpc", "RPC target"
    BREAKER = "breaker", "Circuit breaker"
    DISK = "disk", "Disk"
    SYNC = "sync", "Sync leases"


@dataclass(frozen=True)
class Report:
    """What a single-component check function returns."""

    status: HealthStatus
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HealthCheckResult:
    component: str
    component_type: ComponentType
    status: HealthStatus
    message: str = ""
    latency_ms: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    checked_at: datetime = field(default_factory=timezone.now)
    critical: bool = False
    failure_threshold: int = 1
    success_threshold: int = 1

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["component_type"] = str(self.component_type)
        data["status"] = str(self.status)
        data["checked_at"] = self.checked_at.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HealthCheckResult:
        values = dict(data)
        values["component_type"] = ComponentType(values["component_type"])
        values["status"] = HealthStatus(values["status"])
        values["checked_at"] = datetime.fromisoformat(values["checked_at"])
        return cls(**values)


CheckFunction = Callable[[], "Report | list[HealthCheckResult]"]


@dataclass(frozen=True)
class HealthCheck:
    name: str
    component_type: ComponentType
    function: CheckFunction
    timeout: float = 5.0  # django-health-check's default
    critical: bool = False
    failure_threshold: int = 2
    success_threshold: int = 2
    live: bool = True  # False: too costly for on-demand runs; only the tick's sweep runs it
    provider: bool = False

    def result(self, status: HealthStatus, message: str, latency_ms: float, **extra: Any) -> HealthCheckResult:
        return HealthCheckResult(
            component=self.name,
            component_type=self.component_type,
            status=status,
            message=message,
            latency_ms=round(latency_ms, 2),
            critical=self.critical,
            failure_threshold=self.failure_threshold,
            success_threshold=self.success_threshold,
            **extra,
        )


_registry: dict[str, HealthCheck] = {}  # code only: which checks exist


def register(check: HealthCheck) -> HealthCheck:
    _registry[check.name] = check
    return check


def unregister(name: str) -> None:
    _registry.pop(name, None)


def health_check(name: str, component_type: ComponentType, **options: Any) -> Callable[[CheckFunction], CheckFunction]:
    """Register the decorated function as the check ``name``."""

    def decorate(function: CheckFunction) -> CheckFunction:
        register(HealthCheck(name, component_type, function, **options))
        return function

    return decorate


def registered_checks(live_only: bool = False) -> list[HealthCheck]:
    return sorted((c for c in _registry.values() if c.live or not live_only), key=lambda c: c.name)


def get_check(name: str) -> HealthCheck:
    return _registry[name]


# --- running -----------------------------------------------------------------------


class _Run:
    """One check running in its own daemon thread."""

    def __init__(self, check: HealthCheck) -> None:
        self.check = check
        self.done = threading.Event()
        self.value: Report | list[HealthCheckResult] | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._target, name=f"health-{check.name}", daemon=True)
        self.thread.start()

    def _target(self) -> None:
        try:
            self.value = self.check.function()
        except BaseException as exc:  # a check must never break the sweep
            self.error = exc
        finally:
            self.elapsed = time.monotonic() - self.started
            self.done.set()
            connections.close_all()  # this thread's own connections only

    def wait(self) -> None:
        self.done.wait(max(0.0, self.started + self.check.timeout - time.monotonic()))

    def results(self) -> list[HealthCheckResult]:
        check = self.check
        if not self.done.is_set():
            return [check.result(HealthStatus.UNHEALTHY, f"timed out after {check.timeout:g} s", check.timeout * 1000)]
        latency = self.elapsed * 1000
        if self.error is not None:
            message = redact(f"{type(self.error).__name__}: {self.error}")[:500]
            return [check.result(HealthStatus.UNHEALTHY, f"check failed: {message}", latency)]
        if isinstance(self.value, Report):
            return [
                check.result(self.value.status, redact(self.value.message)[:500], latency, details=self.value.details)
            ]
        return list(self.value or [])


def run_checks(checks: Iterable[HealthCheck]) -> list[HealthCheckResult]:
    """Run ``checks`` concurrently, each bounded by its own timeout (see the module docstring)."""
    runs = [_Run(check) for check in checks]
    for run in runs:
        run.wait()
    return [result for run in runs for result in run.results()]


# --- the verdict -------------------------------------------------------------------


@dataclass(frozen=True)
class SystemHealth:
    overall_status: HealthStatus
    components: list[HealthCheckResult]
    checked_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": str(self.overall_status),
            "checked_at": self.checked_at.isoformat(),
            "components": {
                c.component: {
                    "type": str(c.component_type),
                    "status": str(c.status),
                    "critical": c.critical,
                    "message": c.message,
                    "latency_ms": c.latency_ms,
                    "checked_at": c.checked_at.isoformat(),
                }
                for c in self.components
            },
        }


def overall_status(components: Iterable[HealthCheckResult]) -> HealthStatus:
    """UNHEALTHY if a critical component is; DEGRADED if any other one fails or is degraded.

    UNKNOWN never worsens the verdict (Spring Boot's order), and a non-critical
    failure (an OPEN breaker, a fabric's Git server) degrades but never fails the
    system, so a load balancer does not pull every instance for one dependency.
    """
    verdict = HealthStatus.HEALTHY
    for c in components:
        if c.status == HealthStatus.UNHEALTHY and c.critical:
            return HealthStatus.UNHEALTHY
        if c.status in (HealthStatus.UNHEALTHY, HealthStatus.DEGRADED):
            verdict = HealthStatus.DEGRADED
    return verdict
