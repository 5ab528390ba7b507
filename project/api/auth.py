"""Who may call the API: logged-in staff (session), or a holder of ``API_TOKEN``.

1. An ``Authorization`` header is judged alone: ``Bearer <API_TOKEN>`` (compared in
   constant time; no token configured: no token is accepted) is a token caller; any
   other value is 401, whatever session cookie comes with it.
2. Otherwise the session: active staff may call; a logged-in non-staff user gets 403;
   anyone else 401 with a ``Bearer`` challenge.
3. A session caller's POST must pass Django's CSRF check (a token caller sends no
   cookie, so there is nothing to forge), and needs the view's model permission
   (``sync.change_fabric`` to start a sync), exactly as the admin's action would.

The token is never logged or echoed: errors name the scheme, never the value.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.conf import settings
from django.db.models import Model
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from core.audit import audit, audit_as_system

TOKEN_ACTOR = "api-token"  # noqa: S105  (a user name: token callers' audit entries are recorded under it)

View = Callable[..., HttpResponse]


@dataclass(frozen=True)
class Caller:
    kind: str  # "session" or "token"
    user: Any  # the staff user of a session caller; None for a token caller

    def audit(self, request: HttpRequest, objects: Iterable[Model], message: str) -> int:
        if self.kind == "session":
            return audit(request, objects, f"{message} (API)")
        return audit_as_system(TOKEN_ACTOR, objects, f"{message} (API token)")


def error(status: int, message: str, **extra: Any) -> JsonResponse:
    response = JsonResponse({"error": message, **extra}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def token_matches(given: str) -> bool:
    expected = getattr(settings, "API_TOKEN", "")
    if not expected or not given:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def identify(request: HttpRequest) -> Caller | JsonResponse:
    """The caller, or the 401/403 response to send."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token_matches(token.strip()):
            return Caller("token", None)
        return error(401, "invalid credentials: send Authorization: Bearer <API_TOKEN>, or log in as staff")
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return error(401, "authentication required: Authorization: Bearer <API_TOKEN>, or a staff session")
    if not (user.is_active and user.is_staff):
        return error(403, "staff only")
    return Caller("session", user)


def _csrf_failure(request: HttpRequest) -> HttpResponse | None:
    def unused(request: HttpRequest) -> HttpResponse:  # the middleware needs a get_response
        raise AssertionError("not called")

    check = CsrfViewMiddleware(unused)
    check.process_request(request)  # reads the CSRF cookie, as the middleware would have
    rejected = check.process_view(request, None, (), {})  # type: ignore[arg-type]
    return error(403, "CSRF check failed: send the csrftoken cookie's value as X-CSRFToken") if rejected else None


def api_view(methods: tuple[str, ...] = ("GET",), permission: str | None = None) -> Callable[[View], View]:
    """Authenticate (``identify``), check the method, CSRF for session writes and ``permission``."""

    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                response = error(405, f"method {request.method} not allowed; use {', '.join(methods)}")
                response["Allow"] = ", ".join(methods)
                return response
            caller = identify(request)
            if isinstance(caller, HttpResponse):
                return caller
            if caller.kind == "session":
                if request.method not in ("GET", "HEAD", "OPTIONS") and (failed := _csrf_failure(request)):
                    return failed
                assert caller.user is not None
                if permission and not caller.user.has_perm(permission):
                    return error(403, f"needs the {permission} permission")
            return view(request, caller, *args, **kwargs)

        return csrf_exempt(never_cache(wrapper))

    return decorate
