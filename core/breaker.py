"""Circuit breakers whose state every worker process on every host shares.

Usage::

    github = CircuitBreaker("git:github.com")

    @github
    def fetch(): ...

    with github:
        fetch()

    permit = github.admit()          # the explicit form, for code that retries inside
    try:
        result = fetch()
    except Exception as exc:
        permit.finish(exc)
        raise
    permit.finish()

The state machine is described in ``core.breaker_core``; the shared state
and its Lua scripts in ``core.breaker_redis``. When Redis cannot be reached
the breaker keeps protecting the caller with a per-process breaker (never failing
open silently): ``metrics.backend`` says ``local-fallback``, ``fallback_events``
counts the switches, and one warning is logged per switch. Redis is tried again
every ``REDIS_RETRY_SECONDS`` (5 s).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

import redis

from core.breaker_core import NOT_CLOSED, Admission, BreakerConfig, Clock, LocalBreakerCore, Outcome, State
from core.breaker_redis import RedisBreakerStore, RedisChannel

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
REDIS_ERRORS = (redis.exceptions.RedisError, OSError)

# Short: a dead Redis must not stall calls; the breaker falls back to per-process state
# and tries Redis again after REDIS_RETRY_SECONDS.
REDIS_TIMEOUT = 0.5
REDIS_RETRY_SECONDS = 5.0
# A process that just saw CLOSED skips the admission round trip for this long (capped at
# half the OPEN wait, so trial calls stay exactly gated); see core.breaker_redis.
CLOSED_TTL = 0.5

_channels: dict[str, RedisChannel] = {}  # connections, one set per URL; no state lives here
_channels_lock = threading.Lock()


def _wall_clock() -> float:
    return time.time()  # looked up at each call, so freezegun can move it


def _setting(name: str, default: Any) -> Any:
    """A Django setting, or ``default`` outside Django.

    Not ``settings.configured``: that stays False until something first reads a
    setting, so a fresh process would silently use the defaults (another key prefix,
    another Redis) and not share state with the rest of the fleet.
    """
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        return getattr(settings, name, default)
    except ImproperlyConfigured:
        return default


def default_config(**overrides: Any) -> BreakerConfig:
    """``BreakerConfig``'s defaults (the one place they are written), with the
    ``BREAKER_WAIT_SECONDS`` setting and ``overrides`` applied."""
    values: dict[str, Any] = {"wait_seconds": _setting("BREAKER_WAIT_SECONDS", BreakerConfig.wait_seconds)}
    values.update(overrides)
    if values["wait_seconds"] > BreakerConfig.max_wait_seconds:
        values.setdefault("max_wait_seconds", values["wait_seconds"])
    return BreakerConfig(**values)


def channel_for(url: str, timeout: float) -> RedisChannel:
    with _channels_lock:
        key = f"{url}#{timeout}"
        if key not in _channels:
            _channels[key] = RedisChannel(url, timeout)
        return _channels[key]


def _as_datetime(epoch_seconds: float | str | None) -> datetime | None:
    if epoch_seconds in (None, ""):
        return None
    return datetime.fromtimestamp(float(epoch_seconds), tz=UTC)  # type: ignore[arg-type]


class CircuitBreakerOpenError(Exception):
    """The breaker rejected the call; nothing was sent to the dependency."""

    def __init__(self, name: str, state: State, retry_at: datetime | None) -> None:
        self.name = name
        self.state = state
        self.retry_at = retry_at  # when trials are admitted again (None: an operator decides)
        when = f"trial calls from {retry_at.isoformat()}" if retry_at else "no trial calls until an operator resets it"
        super().__init__(f"circuit breaker {name!r} is {state.value}: {when}")

    @property
    def forced(self) -> bool:
        """An operator holds the breaker open: it says nothing about the dependency."""
        return self.state is State.FORCED_OPEN

    def reason(self) -> str:
        """Why the call was refused, for an operator: "breaker open until <time>"."""
        until = self.retry_at.isoformat(timespec="seconds") if self.retry_at else ""
        if self.state is State.FORCED_OPEN:
            return "breaker forced open by an operator"
        if self.state is State.HALF_OPEN and until:
            return f"breaker half-open, its trial calls are under way until {until}"
        name = self.state.value.replace("_", "-")
        return f"breaker {name} until {until}" if until else f"breaker {name}"


@dataclass(frozen=True)
class BreakerMetrics:
    name: str
    state: State
    backend: str  # "redis", "local" or "local-fallback"
    total_calls: int
    successful_calls: int
    failed_calls: int
    ignored_calls: int
    slow_calls: int
    rejected_calls: int
    failure_rate: float  # percent of the current window
    consecutive_failures: int
    opened_at: datetime | None
    open_until: datetime | None
    last_failure_at: datetime | None
    fallback_active: bool
    fallback_events: int


class Permit:
    """One admitted call. Report its end exactly once with ``finish``."""

    __slots__ = ("_done", "admission", "backend", "breaker", "started")

    def __init__(self, breaker: CircuitBreaker, admission: Admission, backend: str, started: float) -> None:
        self.breaker = breaker
        self.admission = admission
        self.backend = backend
        self.started = started
        self._done = False

    def finish(self, exc: BaseException | None = None) -> Outcome:
        """Classify the call (ignored / failure / slow / success) and report it."""
        duration = self.breaker._clock() - self.started
        outcome = self.breaker.config.classify(exc, duration)
        slow = exc is None and outcome is Outcome.FAILURE
        self.record(outcome, slow=slow)
        return outcome

    def record(self, outcome: Outcome, slow: bool = False) -> None:
        if self._done:
            raise RuntimeError("this permit was already reported")
        self._done = True
        self.breaker._record(self, outcome, slow)


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        shared: bool = True,
        redis_url: str | None = None,
        key_prefix: str | None = None,
        clock: Clock | None = None,
        redis_timeout: float | None = None,
        redis_retry_seconds: float | None = None,
        closed_ttl: float | None = None,
    ) -> None:
        self.name = name
        self.config = config or default_config()
        self._clock: Clock = clock or _wall_clock
        self._lock = threading.Lock()  # guards the local core only, never the protected call
        self._local = LocalBreakerCore(self.config)
        self._tls = threading.local()
        self._store: RedisBreakerStore | None = None
        self.redis_retry_seconds = float(redis_retry_seconds or REDIS_RETRY_SECONDS)
        if shared:
            url = redis_url or _setting("REDIS_URL", None)
            if not url:
                raise ValueError("a shared breaker needs redis_url or the REDIS_URL setting")
            timeout = float(redis_timeout or REDIS_TIMEOUT)
            prefix = key_prefix or _setting("BREAKER_KEY_PREFIX", "fcp:breaker")
            ttl = float(closed_ttl if closed_ttl is not None else CLOSED_TTL)
            self._store = RedisBreakerStore(name, self.config, channel_for(url, timeout), prefix, ttl)
        self.fallback_active = False
        self.fallback_events = 0
        self._retry_redis_at = 0.0
        # Slow-call detection needs the duration of every call: no fast path then.
        self._fast_local = self._store is None and self.config.slow_call_seconds is None

    # --- calling through ---------------------------------------------------------------
    def admit(self) -> Permit:
        """Ask for permission to call; raise ``CircuitBreakerOpenError`` if refused."""
        if self._store is not None and self._redis_worth_trying():
            try:
                admission = self._store.ride() or self._store.admit(uuid.uuid4().hex)
            except REDIS_ERRORS as exc:
                self._enter_fallback(exc)
            else:
                self._leave_fallback()
                return self._permit(admission, "redis")
        with self._lock:
            admission = self._local.admit(self._clock())
        return self._permit(admission, "local")

    def _permit(self, admission: Admission, backend: str) -> Permit:
        if not admission.admitted:
            raise CircuitBreakerOpenError(self.name, admission.state, _as_datetime(admission.retry_at))
        return Permit(self, admission, backend, self._clock())

    def _record(self, permit: Permit, outcome: Outcome, slow: bool) -> None:
        if permit.backend == "redis" and self._store is not None:
            try:
                self._store.record(permit.admission, outcome, slow)
                return
            except REDIS_ERRORS as exc:
                self._enter_fallback(exc)
            # Redis went away mid-call: count the outcome locally (as a CLOSED-state
            # call) so that a failing dependency still trips the fallback breaker.
            with self._lock:
                local = self._local
                local.record(Admission(True, local.state, local.epoch), outcome, self._clock(), slow)
            return
        with self._lock:
            self._local.record(permit.admission, outcome, self._clock(), slow)

    def call(self, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        if self._fast_local:
            result = self._local.call_closed(function, args, kwargs, self._lock, self._clock)
            if result is not NOT_CLOSED:
                return cast(R, result)
        permit = self.admit()
        try:
            result = function(*args, **kwargs)
        except BaseException as exc:
            permit.finish(exc)
            raise
        permit.finish()
        return result

    def __call__(self, function: Callable[P, R]) -> Callable[P, R]:
        call = self.call
        if not self._fast_local:

            @functools.wraps(function)
            def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
                return call(function, *args, **kwargs)

            return guarded
        call_closed, lock, clock = self._local.call_closed, self._lock, self._clock

        @functools.wraps(function)
        def guarded_local(*args: P.args, **kwargs: P.kwargs) -> R:
            result = call_closed(function, args, kwargs, lock, clock)
            if result is not NOT_CLOSED:
                return cast(R, result)
            return call(function, *args, **kwargs)

        return guarded_local

    def __enter__(self) -> Permit:
        permit = self.admit()
        self._tls.__dict__.setdefault("stack", []).append(permit)
        return permit

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._tls.stack.pop().finish(exc)

    # --- Redis availability ----------------------------------------------------------
    def _redis_worth_trying(self) -> bool:
        return not self.fallback_active or time.monotonic() >= self._retry_redis_at

    def _enter_fallback(self, exc: BaseException) -> None:
        self._retry_redis_at = time.monotonic() + self.redis_retry_seconds
        if not self.fallback_active:
            self.fallback_active = True
            self.fallback_events += 1
            logger.warning(
                "circuit breaker %s: Redis unreachable (%s: %s); protecting calls with a per-process "
                "breaker until it answers again",
                self.name,
                type(exc).__name__,
                exc,
            )

    def _leave_fallback(self) -> None:
        if self.fallback_active:
            self.fallback_active = False
            logger.warning("circuit breaker %s: Redis answers again; back on the shared state", self.name)

    def flush(self) -> None:
        """Wait until Redis has applied every outcome this thread reported (tests, shutdown)."""
        if self._store is not None and not self.fallback_active:
            try:
                self._store.flush()
            except REDIS_ERRORS as exc:
                self._enter_fallback(exc)

    # --- operators and metrics ---------------------------------------------------------
    def _operate(self, operation: str) -> None:
        if self._store is not None:
            self._store.operate(operation)  # operators must see a Redis failure, not a local change
            return
        with self._lock:
            self._local.operate(operation, self._clock())

    def force_open(self) -> None:
        self._operate("force_open")

    def disable(self) -> None:
        self._operate("disable")

    def reset(self) -> None:
        self._operate("reset")

    def forget(self) -> None:
        """Delete the shared state and unlist the breaker (one no longer used); it restarts CLOSED."""
        self._operate("forget")

    @property
    def state(self) -> State:
        return self.metrics.state

    @property
    def metrics(self) -> BreakerMetrics:
        if self._store is not None and self._redis_worth_trying():
            try:
                fields = self._store.read()
            except REDIS_ERRORS as exc:
                self._enter_fallback(exc)
            else:
                self._leave_fallback()
                return self._shared_metrics(fields)
        return self._local_metrics()

    def _shared_metrics(self, f: dict[str, str]) -> BreakerMetrics:
        calls = int(f.get("window_calls", 0))
        failures = int(f.get("window_failures", 0))
        return BreakerMetrics(
            name=self.name,
            state=State(f.get("state", "closed")),
            backend="redis",
            total_calls=int(f.get("total_calls", 0)),
            successful_calls=int(f.get("successful_calls", 0)),
            failed_calls=int(f.get("failed_calls", 0)),
            ignored_calls=int(f.get("ignored_calls", 0)),
            slow_calls=int(f.get("slow_calls", 0)),
            rejected_calls=int(f.get("rejected_calls", 0)),
            failure_rate=round(100.0 * failures / calls, 2) if calls else 0.0,
            consecutive_failures=int(f.get("consecutive_failures", 0)),
            opened_at=_as_datetime(f.get("opened_at")),
            open_until=_as_datetime(f.get("open_until")) if f.get("state") == "open" else None,
            last_failure_at=_as_datetime(f.get("last_failure_at")),
            fallback_active=False,
            fallback_events=self.fallback_events,
        )

    def _local_metrics(self) -> BreakerMetrics:
        with self._lock:
            core = replace(self._local, counters=replace(self._local.counters))
            rate = self._local.failure_rate
        c = core.counters
        return BreakerMetrics(
            name=self.name,
            state=core.state,
            backend="local-fallback" if self.fallback_active else "local",
            total_calls=c.total_calls,
            successful_calls=c.successful_calls,
            failed_calls=c.failed_calls,
            ignored_calls=c.ignored_calls,
            slow_calls=c.slow_calls,
            rejected_calls=c.rejected_calls,
            failure_rate=rate,
            consecutive_failures=core.consecutive_failures,
            opened_at=_as_datetime(core.opened_at),
            open_until=_as_datetime(core.open_until) if core.state is State.OPEN else None,
            last_failure_at=_as_datetime(c.last_failure_at),
            fallback_active=self.fallback_active,
            fallback_events=self.fallback_events,
        )
