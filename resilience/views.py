"""Health endpoints for load balancers and monitors. No login (they are polled by
machines), so they show statuses and short redacted messages, never settings or URLs.

- ``/health/live``: the process answers; nothing else is checked, so a broken
  dependency never gets a healthy web process restarted.
- ``/health/ready``: this instance can serve: the database and the broker answer.
- ``/health/``: every live check, plus what the sweeps found for the rest; 503 when
  the system is UNHEALTHY (a critical component is), 200 otherwise.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from core.health import HealthStatus
from resilience.verdict import get_system_health

READY_CHECKS = ("database", "broker")


def _response(names: tuple[str, ...] | None) -> JsonResponse:
    health = get_system_health(names)
    code = 503 if health.overall_status == HealthStatus.UNHEALTHY else 200
    return JsonResponse(health.as_dict(), status=code)


@never_cache
@require_GET
def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def ready(request: HttpRequest) -> JsonResponse:
    return _response(READY_CHECKS)


@never_cache
@require_GET
def full(request: HttpRequest) -> JsonResponse:
    return _response(None)
