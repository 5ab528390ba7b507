"""Resilient HTTP calls: httpx for the request, tenacity for the retries, a breaker per host.

One logical call (``ResilientClient.request``):

1. Asks the target host's shared breaker (``<breaker_prefix>:<host:port>``, ``rpc:``
   unless the caller names another, e.g. ``k8s:``) for a permit. A rejected call
   raises ``CircuitBreakerOpenError`` at once: it is never retried, and nothing is sent.
2. Makes up to ``max_attempts`` attempts, each with a timeout of at most the per-call
   timeout and never past the overall deadline. Between attempts it sleeps with full
   jitter (uniform in [0, min(max, base * 2^n)]); tenacity's ``stop_before_delay``
   gives up rather than start an attempt after the deadline.
3. Retries only what is safe: connection failures for every method (nothing was
   sent), plus timeouts and 502/503/504 answers for idempotent methods (or calls the
   caller declares idempotent, e.g. a server-side apply). A TLS handshake that fails
   verification is never retried: the server answered and will answer the same.
4. Reports once to the breaker: success, or failure when the last attempt failed or
   the server answered 5xx. Four retries of one call are one failure, not five. A
   failed TLS verification counts as a success: the host is up, and one caller's wrong
   CA bundle must not open the breaker every other caller of that host shares.
5. Records the call's latency (all attempts and sleeps) for p50/p95/p99 and calls/s;
   for a streamed call, up to its response headers (a watch's body lasts as long as
   the server holds it open). These metrics are this process's view, for dashboards;
   no decision reads them.

``request`` reads the whole body; ``stream`` hands the open response to a reader
function inside the attempt (a fresh call of it per attempt), for long-lived bodies.
"""

from __future__ import annotations

import math
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_before_delay, wait_random_exponential

from core.breaker import CircuitBreaker
from core.breaker_core import BreakerConfig

T = TypeVar("T")
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
RETRY_STATUSES = frozenset({502, 503, 504})


class RetryableStatus(Exception):
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        super().__init__(f"{response.status_code} from {response.request.url.host}")


class DeadlineExceeded(httpx.TimeoutException):
    """The overall deadline of a logical call passed before another attempt could start."""


# TLS errors that are the network's, not a refusal: the connection dropped mid-handshake.
_TLS_NETWORK_ERRORS = (ssl.SSLEOFError, ssl.SSLSyscallError, ssl.SSLZeroReturnError, ssl.SSLWantReadError)


def tls_rejection(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a failed connection (a certificate we refuse, a handshake the
    server refused), or None when the connection failed another way (including a
    connection dropped mid-handshake)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLError):
            return None if isinstance(cause, _TLS_NETWORK_ERRORS) else cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


@dataclass(frozen=True)
class LatencySummary:
    calls: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    calls_per_second: float


class LatencyStats:
    """Latencies of the last ``size`` calls; rate over the last ``window`` seconds."""

    def __init__(self, size: int = 2048, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=size)
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()

    def record(self, latency_ms: float) -> None:
        with self._lock:
            self._samples.append((self._clock(), latency_ms))

    def summary(self) -> LatencySummary:
        with self._lock:
            samples = list(self._samples)
        if not samples:
            return LatencySummary(0, 0.0, 0.0, 0.0, 0.0)
        ordered = sorted(ms for _, ms in samples)
        now = self._clock()
        recent = [t for t, _ in samples if t >= now - self._window]
        span = max(now - recent[0], 1.0) if recent else self._window

        def pct(p: float) -> float:  # nearest rank
            return round(ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))], 2)

        return LatencySummary(len(samples), pct(0.50), pct(0.95), pct(0.99), round(len(recent) / span, 2))


class ResilientClient:
    def __init__(
        self,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        max_attempts: int | None = None,
        backoff_base: float | None = None,
        backoff_max: float | None = None,
        breaker_config: BreakerConfig | None = None,
        shared_breakers: bool = True,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        breaker_prefix: str = "rpc",
        verify: ssl.SSLContext | bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.timeout = timeout if timeout is not None else 5.0
        self.deadline = deadline if deadline is not None else 15.0
        self.max_attempts = max_attempts or 3
        self.backoff_base = backoff_base if backoff_base is not None else 0.2
        self.backoff_max = backoff_max if backoff_max is not None else 5.0
        self.breaker_config = breaker_config
        self.shared_breakers = shared_breakers
        self.breaker_prefix = breaker_prefix
        self._sleep = sleep
        # verify: an ssl.SSLContext (e.g. one trusting only a cluster's CA bundle) or a bool.
        # headers: defaults for every call; never a credential, which goes per call.
        self._http = httpx.Client(transport=transport, follow_redirects=False, verify=verify, headers=headers)
        self._breakers: dict[str, CircuitBreaker] = {}  # handles only; their state is in Redis
        self._stats: dict[str, LatencyStats] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ResilientClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def target(url: str | httpx.URL) -> str:
        parsed = httpx.URL(url)
        return f"{parsed.host}:{parsed.port}" if parsed.port else parsed.host

    def breaker_for(self, target: str) -> CircuitBreaker:
        with self._lock:
            if target not in self._breakers:
                self._breakers[target] = CircuitBreaker(
                    f"{self.breaker_prefix}:{target}", self.breaker_config, shared=self.shared_breakers
                )
                self._stats[target] = LatencyStats()
            return self._breakers[target]

    def stats(self, target: str) -> LatencySummary:
        with self._lock:
            stats = self._stats.get(target)
        return stats.summary() if stats else LatencySummary(0, 0.0, 0.0, 0.0, 0.0)

    def _retryable(self, method: str, idempotent: bool | None) -> Callable[[BaseException], bool]:
        if idempotent is None:
            idempotent = method.upper() in IDEMPOTENT

        def decide(exc: BaseException) -> bool:
            if isinstance(exc, DeadlineExceeded) or tls_rejection(exc) is not None:
                return False
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                return True  # the request never left: safe for any method
            return idempotent and isinstance(exc, RetryableStatus | httpx.TimeoutException | httpx.NetworkError)

        return decide

    def request(
        self,
        method: str,
        url: str,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        idempotent: bool | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One logical call (steps 1-5 of the module docstring); the body is read.

        ``timeout`` / ``deadline`` override the client's for this call; ``idempotent``
        overrides the method's default (``IDEMPOTENT``) for retrying after a timeout.
        """

        def send(attempt_timeout: float) -> tuple[httpx.Response, None, float | None]:
            return self._http.request(method, url, timeout=attempt_timeout, **kwargs), None, None

        return self._call(method, url, send, timeout, deadline, idempotent)[0]

    def stream(
        self,
        method: str,
        url: str,
        read: Callable[[httpx.Response], T],
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        idempotent: bool | None = None,
        **kwargs: Any,
    ) -> tuple[httpx.Response, T]:
        """One logical call whose open response goes to ``read`` (called once per attempt
        that got an answer other than 502/503/504); returns the response and what the
        last ``read`` returned. ``read`` may consume the body or not; it is closed after."""

        def send(attempt_timeout: float) -> tuple[httpx.Response, T | None, float | None]:
            started = time.monotonic()
            with self._http.stream(method, url, timeout=attempt_timeout, **kwargs) as response:
                headers_after = time.monotonic() - started
                if response.status_code in RETRY_STATUSES:
                    response.read()
                    return response, None, headers_after
                return response, read(response), headers_after

        response, value = self._call(method, url, send, timeout, deadline, idempotent)
        return response, value  # type: ignore[return-value]  # None only with a 5xx, which read never saw

    def _call(
        self,
        method: str,
        url: str,
        send: Callable[[float], tuple[httpx.Response, T | None, float | None]],
        timeout: float | None,
        deadline: float | None,
        idempotent: bool | None,
    ) -> tuple[httpx.Response, T | None]:
        target = self.target(url)
        breaker = self.breaker_for(target)
        permit = breaker.admit()  # step 1: raises CircuitBreakerOpenError, never retried
        per_attempt = timeout if timeout is not None else self.timeout
        overall = deadline if deadline is not None else max(self.deadline, per_attempt)
        started = time.monotonic()
        deadline_at = started + overall
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts) | stop_before_delay(overall),
            wait=wait_random_exponential(multiplier=self.backoff_base, max=self.backoff_max),
            retry=retry_if_exception(self._retryable(method, idempotent)),
            sleep=self._sleep,
            reraise=True,
        )
        response: httpx.Response | None = None
        value: T | None = None
        latency: float | None = None  # seconds, when the call measured its own (a stream)
        try:
            for attempt in retrying:
                with attempt:
                    remaining = deadline_at - time.monotonic()
                    if remaining <= 0:
                        raise DeadlineExceeded(f"deadline of {overall:g} s passed")
                    attempt_started = time.monotonic()
                    response, value, headers_after = send(min(per_attempt, remaining))
                    if headers_after is not None:
                        latency = attempt_started - started + headers_after
                    if response.status_code in RETRY_STATUSES:
                        raise RetryableStatus(response)
        except RetryableStatus as exc:
            permit.finish(exc)  # step 4: the dependency is failing; hand back its last answer
            return exc.response, None
        except BaseException as exc:
            # A certificate we refused: the host answered (step 4).
            permit.finish(None if tls_rejection(exc) is not None else exc)
            raise
        finally:
            elapsed = latency if latency is not None else time.monotonic() - started
            self._stats[target].record(elapsed * 1000)
        assert response is not None
        permit.finish(RetryableStatus(response) if response.status_code >= 500 else None)
        return response, value

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)
