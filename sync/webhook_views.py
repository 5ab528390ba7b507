"""``POST /hooks/git/``: GitHub, GitLab and Gitea push webhooks (docs/webhooks.md).

1. No ``SYNC_WEBHOOK_SECRET`` configured: 403, whatever the request. An endpoint
   that anyone could call unsigned would let anyone make every fabric sync.
2. Which forge sent it (``sync.webhooks.detect_forge``) and its signature: 403 when
   it is missing or wrong. Neither the secret nor the signature is ever logged.
3. Any event but a push, or a push of a tag: 202, ignored.
4. The push (``sync.push_sync.sync_on_push``): 200 with what it matched, claimed and
   found already claimed, or 503 when the broker could not take the work (the
   fabrics are due then, so the tick syncs them).

No session, no CSRF token: the signature is the authentication.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from core.redaction import redact
from sync import webhooks
from sync.push_sync import sync_on_push

logger = logging.getLogger(__name__)


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def _ignored(event: str, reason: str) -> JsonResponse:
    return JsonResponse({"event": event, "ignored": True, "reason": reason}, status=202)


@csrf_exempt
@require_POST
def git_push(request: HttpRequest) -> JsonResponse:
    secret: str = settings.SYNC_WEBHOOK_SECRET
    if not secret:
        return _error(403, "webhook secret not configured")
    forge = webhooks.detect_forge(request.headers)
    if forge is None:
        return _error(403, "missing signature")
    try:
        body = request.body
    except RequestDataTooBig:
        return _error(413, "payload too large")
    if problem := webhooks.signature_error(forge, request.headers, body, secret):
        logger.warning("git webhook refused: %s (%s, from %s)", problem, forge, request.META.get("REMOTE_ADDR"))
        return _error(403, problem)

    event = webhooks.event_name(forge, request.headers)
    if not webhooks.is_push(forge, event):
        return _ignored(event, "not a push event")
    try:
        push = webhooks.parse_push(forge, webhooks.load_payload(body, request.content_type or ""))
    except webhooks.IgnoredPush as exc:
        return _ignored(event, str(exc))
    except webhooks.PayloadError as exc:
        return _error(400, str(exc))

    try:
        outcome = sync_on_push(push, timezone.now())
    except Exception as exc:  # the broker or the database refused: the fabrics are due, the tick takes them
        # Broker errors may echo the broker URL, password included; no traceback for the same reason.
        logger.error("git webhook: push to %s %s not dispatched: %s", push.repository, push.branch,
                     redact(f"{type(exc).__name__}: {exc}"))  # fmt: skip
        return _error(503, "could not dispatch the syncs now; the next tick will")
    logger.info(
        "git webhook: %s push to %s %s: %d fabrics matched, %d claimed, %d already claimed%s",
        forge, push.repository, push.branch, len(outcome.matched), len(outcome.claimed),
        len(outcome.already_claimed), " (debounced)" if outcome.debounced else "",
    )  # fmt: skip
    return JsonResponse({
        "event": event,
        "repository": push.repository,
        "branch": push.branch,
        "fabrics_matched": len(outcome.matched),
        "claimed": outcome.claimed,
        "already_claimed": outcome.already_claimed,
        "debounced": outcome.debounced,
    })  # fmt: skip
