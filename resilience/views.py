"""Health endpoints for load balancers, monitors and operators.

- ``/health/live``: the process answers; nothing else is checked, so a broken
  dependency never gets a healthy web process restarted.
- ``/health/ready``: this instance can serve: the database and the broker answer.
- ``/health/``: every live check, plus what the sweeps found for the rest; 503 when
  the system is UNHEALTHY (a critical component is), 200 otherwise.

Anyone gets the overall status and its HTTP code, which is all a load balancer needs.
The components (names carry Git URLs and container names; messages carry hosts,
ports and error text) are shown only to logged-in staff, or to a monitor sending
``Authorization: Bearer <HEALTH_TOKEN>`` (compared in constant time; no token set:
no monitor gets them).
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from core.health import HealthStatus
from resilience.verdict import get_system_health

READY_CHECKS = ("database", "broker")


def may_see_components(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    if user is not None and user.is_active and user.is_staff:
        return True
    expected = settings.HEALTH_TOKEN
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if not expected or scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(token.strip().encode(), expected.encode())


def _response(request: HttpRequest, names: tuple[str, ...] | None) -> JsonResponse:
    health = get_system_health(names)
    code = 503 if health.overall_status == HealthStatus.UNHEALTHY else 200
    body = health.as_dict() if may_see_components(request) else {"status": str(health.overall_status)}
    return JsonResponse(body, status=code)


@never_cache
@require_GET
def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def ready(request: HttpRequest) -> JsonResponse:
    return _response(request, READY_CHECKS)


@never_cache
@require_GET
def full(request: HttpRequest) -> JsonResponse:
    return _response(request, None)
