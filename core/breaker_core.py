"""The circuit breaker's state machine, as plain Python with the clock handed in.

This is the per-process breaker (used alone with ``shared=False`` and as the
fallback when Redis is unreachable) and the reference model for the Lua scripts in
``core.breaker_redis``: both implement exactly the algorithm below, and a
hypothesis test drives them side by side.

State machine, per breaker:

1. CLOSED: every call is admitted. Each finished call pushes success/failure into a
   count-based sliding window of the last ``window_size`` calls. It trips to OPEN
   when ``consecutive_failures`` failures happen in a row, or when the window holds
   at least ``minimum_calls`` calls and the failure rate reaches
   ``failure_rate_threshold`` percent. Ignored outcomes count neither way.
2. OPEN: every call is rejected until ``open_until`` = opened_at + wait, where the
   wait is ``wait_seconds * wait_multiplier ** reopens`` capped at ``max_wait_seconds``
   (``reopens`` counts re-openings since the breaker last closed).
3. The first admission at or after ``open_until`` moves it to HALF_OPEN (a new epoch).
4. HALF_OPEN: trial calls are admitted while in-flight trials + successful trials
   < ``half_open_calls``. A trial's permit is a lease: a holder that died never
   reports, so its slot is reclaimed after ``trial_timeout``.
5. A failed trial re-opens the breaker (``reopens`` + 1, so the wait grows); when
   ``success_threshold`` trials succeed it closes with an empty window.
6. FORCED_OPEN rejects everything and DISABLED admits everything; only an operator
   sets or leaves them (``reset`` goes back to CLOSED).

Every transition bumps ``epoch``; an outcome reported under an older epoch (a call
admitted before the breaker tripped, say) still counts in the totals but never
moves the state machine.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

Clock = Callable[[], float]
NOT_CLOSED: Any = object()  # call_closed's "not CLOSED: take the general path"


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"


@dataclass(frozen=True)
class BreakerConfig:
    """Defaults chosen from resilience4j, Hystrix and pybreaker (see docs/resilience.md).

    Our dependencies (Git servers, Docker, fabric RPC hosts) see tens of calls a
    minute, not thousands, so resilience4j's 100-call minimum would never trip:
    Hystrix's 20-call volume and pybreaker's run of 5 failures are the floors.
    """

    failure_rate_threshold: float = 50.0  # percent of the window
    window_size: int = 20  # calls (count-based window)
    minimum_calls: int = 20  # before the failure rate counts (Hystrix's volume threshold)
    consecutive_failures: int = 5  # trips on its own, for low-volume dependencies (pybreaker)
    wait_seconds: float = 30.0
    wait_multiplier: float = 2.0  # 1.0 = fixed wait
    max_wait_seconds: float = 300.0
    half_open_calls: int = 3  # the whole fleet sends at most this many trials per half-open
    success_threshold: int = 3  # successful trials that close it (<= half_open_calls)
    trial_timeout: float = 30.0  # lease of a trial permit whose holder may have died
    slow_call_seconds: float | None = None  # a success slower than this counts as a failure
    ignored_exceptions: tuple[type[BaseException], ...] = ()
    failure_exceptions: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if not 1 <= self.success_threshold <= self.half_open_calls:
            raise ValueError("success_threshold must be between 1 and half_open_calls")
        if self.window_size < 1 or self.minimum_calls < 1:
            raise ValueError("window_size and minimum_calls must be positive")
        if self.wait_seconds <= 0 or self.wait_multiplier < 1 or self.max_wait_seconds < self.wait_seconds:
            raise ValueError("need 0 < wait_seconds <= max_wait_seconds and wait_multiplier >= 1")

    def wait_for(self, reopens: int) -> float:
        return float(min(self.wait_seconds * self.wait_multiplier**reopens, self.max_wait_seconds))

    def classify(self, exc: BaseException | None, duration: float) -> Outcome:
        """What a finished call counts as: ignored, failure (including slow), or success."""
        if exc is not None:
            if self.ignored_exceptions and isinstance(exc, self.ignored_exceptions):
                return Outcome.IGNORED
            return Outcome.FAILURE if isinstance(exc, self.failure_exceptions) else Outcome.IGNORED
        if self.slow_call_seconds is not None and duration > self.slow_call_seconds:
            return Outcome.FAILURE
        return Outcome.SUCCESS


@dataclass(frozen=True)
class Admission:
    """The answer to "may I call?": admitted or not, under which epoch, trial or not."""

    admitted: bool
    state: State
    epoch: int
    trial: bool = False
    token: str = ""
    retry_at: float | None = None  # rejected: when trials may be admitted (epoch seconds)
    counted: bool = True  # False: admitted on known state, total_calls counted with the outcome


@dataclass
class Counters:
    total_calls: int = 0
    successful_calls: int = 0
    failed_calls: int = 0
    ignored_calls: int = 0
    slow_calls: int = 0
    rejected_calls: int = 0
    last_failure_at: float | None = None


@dataclass
class LocalBreakerCore:
    """The state machine above, for one process. Not thread-safe: the caller locks."""

    config: BreakerConfig
    state: State = State.CLOSED
    epoch: int = 0
    opened_at: float | None = None
    open_until: float = 0.0
    reopens: int = 0
    consecutive_failures: int = 0
    half_open_successes: int = 0
    window: deque[int] = field(default_factory=deque)
    window_failures: int = 0  # sum(window), kept so that no outcome scans the window
    trials: dict[str, float] = field(default_factory=dict)  # token -> lease expiry
    counters: Counters = field(default_factory=Counters)

    # --- admission (step 1-4) --------------------------------------------------------
    def admit(self, now: float) -> Admission:
        if self.state in (State.CLOSED, State.DISABLED):
            self.counters.total_calls += 1
            return Admission(True, self.state, self.epoch)
        if self.state is State.FORCED_OPEN:
            self.counters.rejected_calls += 1
            return Admission(False, self.state, self.epoch)
        if self.state is State.OPEN:
            if now < self.open_until:
                self.counters.rejected_calls += 1
                return Admission(False, self.state, self.epoch, retry_at=self.open_until)
            self._move(State.HALF_OPEN)
            self.half_open_successes = 0
            self.trials.clear()
        self.trials = {token: until for token, until in self.trials.items() if until > now}
        if len(self.trials) + self.half_open_successes < self.config.half_open_calls:
            token = uuid.uuid4().hex
            self.trials[token] = now + self.config.trial_timeout
            self.counters.total_calls += 1
            return Admission(True, self.state, self.epoch, trial=True, token=token)
        self.counters.rejected_calls += 1
        return Admission(False, self.state, self.epoch, retry_at=min(self.trials.values(), default=None))

    # --- outcome (steps 1, 5) --------------------------------------------------------
    def record(self, admission: Admission, outcome: Outcome, now: float, slow: bool = False) -> None:
        c = self.counters
        if outcome is Outcome.SUCCESS:
            c.successful_calls += 1
        elif outcome is Outcome.FAILURE:
            c.failed_calls += 1
            c.last_failure_at = now
        else:
            c.ignored_calls += 1
        if slow:
            c.slow_calls += 1
        if admission.epoch != self.epoch:
            return  # admitted under an older state: totals only
        if self.state is State.CLOSED:
            self._record_closed(outcome, now)
        elif self.state is State.HALF_OPEN:
            if self.trials.pop(admission.token, None) is None or outcome is Outcome.IGNORED:
                return  # an expired trial's late answer, or an ignored one that just frees its slot
            if outcome is Outcome.FAILURE:
                self.consecutive_failures += 1
                self.reopens += 1
                self._open(now)
            else:
                self.half_open_successes += 1
                if self.half_open_successes >= self.config.success_threshold:
                    self._close()

    def _record_closed(self, outcome: Outcome, now: float) -> None:
        if outcome is Outcome.IGNORED:
            return
        failed = 1 if outcome is Outcome.FAILURE else 0
        window = self.window
        window.append(failed)
        self.window_failures += failed
        if len(window) > self.config.window_size:
            self.window_failures -= window.popleft()
        self.consecutive_failures = self.consecutive_failures + 1 if failed else 0
        if self._should_trip():
            self._open(now)

    def _should_trip(self) -> bool:
        cfg = self.config
        if cfg.consecutive_failures > 0 and self.consecutive_failures >= cfg.consecutive_failures:
            return True
        calls = len(self.window)
        return calls >= cfg.minimum_calls and self.window_failures * 100 >= cfg.failure_rate_threshold * calls

    # --- the CLOSED fast path -------------------------------------------------------------
    def call_closed(self, function: Callable[..., Any], args: Any, kwargs: Any, lock: Any, clock: Clock) -> Any:
        """Run ``function`` if CLOSED with steps 1 of admission and outcome inlined, or
        return ``NOT_CLOSED`` (take the general path). No permit objects and no clock
        read on success, so a per-process breaker costs well under a microsecond a call."""
        with lock:
            if self.state is not State.CLOSED:
                return NOT_CLOSED
            self.counters.total_calls += 1
            epoch = self.epoch
        try:
            result = function(*args, **kwargs)
        except BaseException as exc:
            outcome = self.config.classify(exc, 0.0)
            with lock:
                self.record(Admission(True, State.CLOSED, epoch), outcome, clock())
            raise
        with lock:
            self.counters.successful_calls += 1
            if epoch == self.epoch and self.state is State.CLOSED:
                window, cfg = self.window, self.config
                window.append(0)
                if len(window) > cfg.window_size:
                    self.window_failures -= window.popleft()
                self.consecutive_failures = 0
                # A success lowers the rate but may bring the window up to minimum_calls.
                failures, calls = self.window_failures, len(window)
                if failures and calls >= cfg.minimum_calls and failures * 100 >= cfg.failure_rate_threshold * calls:
                    self._open(clock())
        return result

    # --- transitions -----------------------------------------------------------------
    def _move(self, state: State) -> None:
        self.state = state
        self.epoch += 1

    def _open(self, now: float) -> None:
        self._move(State.OPEN)
        self.opened_at = now
        self.open_until = now + self.config.wait_for(self.reopens)
        self.window.clear()
        self.window_failures = 0
        self.trials.clear()

    def _close(self) -> None:
        self._move(State.CLOSED)
        self.reopens = 0
        self.consecutive_failures = 0
        self.half_open_successes = 0
        self.window.clear()
        self.window_failures = 0
        self.trials.clear()

    def operate(self, operation: str, now: float) -> None:
        """Operator actions: force_open, disable, reset or forget (back to a clean CLOSED)."""
        if operation == "force_open":
            self._move(State.FORCED_OPEN)
            self.opened_at = now
        elif operation == "disable":
            self._move(State.DISABLED)
        elif operation in ("reset", "forget"):
            self._close()
            self.opened_at = None
            self.open_until = 0.0
        else:
            raise ValueError(f"unknown breaker operation {operation!r}")
        self.trials.clear()

    @property
    def failure_rate(self) -> float:
        return round(100.0 * self.window_failures / len(self.window), 2) if self.window else 0.0
