"""Times every request for the response-time scaling metric (``scaling.metrics.response_time``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from scaling.metrics import response_time

logger = logging.getLogger(__name__)


# After a cache failure, stop recording for a while: a down cache must not add its
# connect timeout to every request. Per process, and only a pause, never a decision.
PAUSE_AFTER_FAILURE_SECONDS = 30.0


class ResponseTimeMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.paused_until = 0.0

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        duration = time.perf_counter() - started
        if time.monotonic() < self.paused_until:
            return response
        try:
            response_time.record(settings.SCALING_RESPONSE_TIME_SERVICE, duration, time.time())
        except Exception as exc:
            # A cache outage must never fail a request; the metric then reads as missing.
            self.paused_until = time.monotonic() + PAUSE_AFTER_FAILURE_SECONDS
            logger.warning("could not record a response time (pausing %.0f s): %s", PAUSE_AFTER_FAILURE_SECONDS, exc)
        return response
