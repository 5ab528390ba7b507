"""Health endpoints for load balancers, monitors and operators, and ``/metrics``.

- ``/health/live``: the process answers; nothing else is checked, so a broken
  dependency never gets a healthy web process restarted.
- ``/health/ready``: this instance can serve: the database and the broker answer. Run
  live on every request (two round trips; never the broadcast worker ping), as
  readiness is this instance's own.
- ``/health/``: every live check, plus what the sweeps found for the rest; 503 when
  the system is UNHEALTHY (a critical component is), 200 otherwise. Anonymous callers
  get the verdict from a short shared cache (``resilience.verdict.cached_verdict``): a
  burst of probes costs one sweep, and cannot starve the admin of web workers.
- ``/metrics``: Prometheus text format, computed at scrape time from the database and
  Redis (``core.metrics``), so every web process and host answers the same.

Anyone gets the overall status and its HTTP code, which is all a load balancer needs.
The components (names carry Git URLs and container names; messages carry hosts,
ports and error text) are shown only to logged-in staff, or to a monitor sending
``Authorization: Bearer <HEALTH_TOKEN>`` (compared in constant time; no token set:
no monitor gets them). ``/metrics`` is protected the same way; it also accepts
``METRICS_TOKEN`` when that setting exists, so a scraper need not hold the health token.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from core.health import HealthStatus
from resilience.verdict import Verdict, as_body, cached_verdict, compute_verdict, get_system_health

READY_CHECKS = ("database", "broker")


def _is_staff(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


def _bearer_matches(request: HttpRequest, *expected: str) -> bool:
    """A bearer token equal to one of ``expected`` (the empty ones never match), in constant time."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    given = token.strip().encode()
    # Every configured token is compared, so the time taken does not tell which one matched.
    matches = [hmac.compare_digest(given, value.encode()) for value in expected if value]
    return any(matches)


def may_see_components(request: HttpRequest) -> bool:
    return _is_staff(request) or _bearer_matches(request, settings.HEALTH_TOKEN)


def may_read_metrics(request: HttpRequest) -> bool:
    return _is_staff(request) or _bearer_matches(request, getattr(settings, "METRICS_TOKEN", ""), settings.HEALTH_TOKEN)


def _code(status: HealthStatus) -> int:
    return 503 if status == HealthStatus.UNHEALTHY else 200


@never_cache
@require_GET
def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def ready(request: HttpRequest) -> JsonResponse:
    health = get_system_health(READY_CHECKS)
    body = as_body(health) if may_see_components(request) else {"status": str(health.overall_status)}
    return JsonResponse(body, status=_code(health.overall_status))


@never_cache
@require_GET
def full(request: HttpRequest) -> JsonResponse:
    # Staff and monitors asking for the detail get it computed now (and refresh the cache).
    detail = may_see_components(request)
    verdict: Verdict = compute_verdict() if detail else cached_verdict()
    body = verdict.body if detail else {"status": str(verdict.status)}
    return JsonResponse(body, status=_code(verdict.status))


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

    from core.metrics import ControlPlaneCollector

    if not may_read_metrics(request):
        if getattr(request, "user", None) is not None and request.user.is_authenticated:
            return HttpResponse("staff only\n", status=403, content_type="text/plain")
        response = HttpResponse("authentication required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    # The classic text format (0.0.4): every Prometheus version parses it, and our names need nothing newer.
    return HttpResponse(generate_latest(ControlPlaneCollector()), content_type=CONTENT_TYPE_PLAIN_0_0_4)
