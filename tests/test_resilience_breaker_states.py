"""The breaker's state machine under hypothesis, with time travelled by freezegun.

A per-process breaker (``shared=False``) runs against a small reference model written
from the specification in ``core.breaker_core``'s docstring: every admission
decision, every state and every counter must agree after each step, whatever the
interleaving of successes, failures, ignored errors, held trial calls, operator
actions and jumps in time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import hypothesis.strategies as st
import pytest
from freezegun import freeze_time
from hypothesis import settings as hsettings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from core.breaker import CircuitBreaker, CircuitBreakerOpenError, Permit
from core.breaker_core import BreakerConfig, Outcome, State

CONFIG = BreakerConfig(
    failure_rate_threshold=50.0,
    window_size=6,
    minimum_calls=4,
    consecutive_failures=3,
    wait_seconds=10.0,
    wait_multiplier=2.0,
    max_wait_seconds=35.0,
    half_open_calls=2,
    success_threshold=2,
    trial_timeout=7.0,
    ignored_exceptions=(KeyError,),
)


ERRORS: dict[Outcome, Exception | None] = {
    Outcome.SUCCESS: None,
    Outcome.FAILURE: RuntimeError("down"),
    Outcome.IGNORED: KeyError("k"),
}


@dataclass
class Spec:
    """The specification, restated as simply as possible."""

    state: str = "closed"
    epoch: int = 0  # bumped by every transition
    open_until: float = 0.0
    reopens: int = 0
    outcomes: list[bool] = field(default_factory=list)  # True = failure, newest last
    run: int = 0
    trials: dict[int, float] = field(default_factory=dict)  # held trial id -> lease expiry
    trial_successes: int = 0
    total: int = 0
    rejected: int = 0

    def wait(self) -> float:
        return min(CONFIG.wait_seconds * CONFIG.wait_multiplier**self.reopens, CONFIG.max_wait_seconds)

    def move(self, state: str) -> None:
        self.state = state
        self.epoch += 1

    def open(self, now: float) -> None:
        self.move("open")
        self.open_until, self.outcomes, self.trials = now + self.wait(), [], {}

    def close(self) -> None:
        self.move("closed")
        self.reopens, self.run, self.outcomes, self.trials, self.trial_successes = 0, 0, [], {}, 0

    def admits(self, now: float, trial_id: int) -> bool | str:
        """True (normal call), "trial", or False (rejected)."""
        if self.state in ("closed", "disabled"):
            self.total += 1
            return True
        if self.state == "forced_open" or (self.state == "open" and now < self.open_until):
            self.rejected += 1
            return False
        if self.state == "open":
            self.move("half_open")
            self.trials, self.trial_successes = {}, 0
        self.trials = {t: until for t, until in self.trials.items() if until > now}
        if len(self.trials) + self.trial_successes < CONFIG.half_open_calls:
            self.trials[trial_id] = now + CONFIG.trial_timeout
            self.total += 1
            return "trial"
        self.rejected += 1
        return False

    def closed_outcome(self, failed: bool, now: float) -> None:
        self.outcomes = [*self.outcomes, failed][-CONFIG.window_size :]
        self.run = self.run + 1 if failed else 0
        rate_trips = len(self.outcomes) >= CONFIG.minimum_calls and 2 * sum(self.outcomes) >= len(self.outcomes)
        if self.run >= CONFIG.consecutive_failures or rate_trips:
            self.open(now)

    def trial_outcome(self, trial_id: int, outcome: Outcome, now: float) -> None:
        if self.trials.pop(trial_id, None) is None or outcome is Outcome.IGNORED:
            return
        if outcome is Outcome.FAILURE:
            self.run += 1
            self.reopens += 1
            self.open(now)
        else:
            self.trial_successes += 1
            if self.trial_successes >= CONFIG.success_threshold:
                self.close()


@dataclass
class Held:
    permit: Permit
    trial_id: int | None  # None: a normal (closed/disabled) call
    epoch: int  # the spec's epoch at admission


class BreakerMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.freezer = freeze_time(datetime(2026, 1, 1, tzinfo=UTC))
        self.frozen = self.freezer.start()
        self.breaker = CircuitBreaker("under-test", CONFIG, shared=False)
        self.spec = Spec()
        self.held: list[Held] = []
        self.next_id = 0
        self.successes = self.failures = self.ignored = 0

    def teardown(self) -> None:
        if hasattr(self, "freezer"):
            self.freezer.stop()

    def _admit(self) -> Held | None:
        now = time.time()
        self.next_id += 1
        expected = self.spec.admits(now, self.next_id)
        rejection: CircuitBreakerOpenError | None = None
        try:
            permit = self.breaker.admit()
        except CircuitBreakerOpenError as exc:
            rejection = exc
        if rejection is not None:
            assert expected is False, f"breaker rejected, spec expected {expected} in {self.spec.state}"
            assert rejection.name == "under-test"
            if self.spec.state == "open":
                assert rejection.retry_at == datetime.fromtimestamp(self.spec.open_until, tz=UTC)
            return None
        assert expected is not False, f"breaker admitted, spec rejected in {self.spec.state}"
        assert permit.admission.trial == (expected == "trial")
        return Held(permit, self.next_id if expected == "trial" else None, self.spec.epoch)

    def _finish(self, held: Held, outcome: Outcome) -> None:
        assert held.permit.finish(ERRORS[outcome]) is outcome
        self._spec_outcome(held.trial_id, held.epoch, outcome)

    def _spec_outcome(self, trial_id: int | None, epoch: int, outcome: Outcome) -> None:
        now = time.time()
        self.successes += outcome is Outcome.SUCCESS
        self.failures += outcome is Outcome.FAILURE
        self.ignored += outcome is Outcome.IGNORED
        if trial_id is not None:
            self.spec.trial_outcome(trial_id, outcome, now)
        elif epoch == self.spec.epoch and self.spec.state == "closed" and outcome is not Outcome.IGNORED:
            self.spec.closed_outcome(outcome is Outcome.FAILURE, now)

    @rule(outcome=st.sampled_from(Outcome))
    def call_through_the_decorator(self, outcome: Outcome) -> None:
        """The decorator and ``call`` take a faster path while CLOSED: it must obey the same spec."""
        self.next_id += 1
        expected = self.spec.admits(time.time(), self.next_id)
        epoch = self.spec.epoch

        error = ERRORS[outcome]

        @self.breaker
        def dependency() -> None:
            if error is not None:
                raise error

        try:
            dependency()
            admitted = True
        except CircuitBreakerOpenError:
            admitted = False
        except (RuntimeError, KeyError):
            admitted = True
        assert admitted == (expected is not False)
        if admitted:
            self._spec_outcome(self.next_id if expected == "trial" else None, epoch, outcome)

    @rule(outcome=st.sampled_from(Outcome))
    def call(self, outcome: Outcome) -> None:
        held = self._admit()
        if held is not None:
            self._finish(held, outcome)

    @rule()
    def start_call_and_hold(self) -> None:
        held = self._admit()
        if held is not None:
            self.held.append(held)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), outcome=st.sampled_from(Outcome))
    def finish_held(self, data: st.DataObject, outcome: Outcome) -> None:
        held = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self._finish(held, outcome)

    @rule(seconds=st.sampled_from([0.5, 3.0, 7.0, 10.0, 25.0, 40.0]))
    def time_passes(self, seconds: float) -> None:
        self.frozen.tick(seconds)

    @rule(operation=st.sampled_from(["force_open", "disable", "reset"]))
    def operator(self, operation: str) -> None:
        getattr(self.breaker, operation)()
        if operation == "reset":
            self.spec.close()
            self.spec.open_until = 0.0
        else:
            self.spec.move({"force_open": "forced_open", "disable": "disabled"}[operation])
            self.spec.trials = {}

    @invariant()
    def agrees_with_the_specification(self) -> None:
        if not hasattr(self, "breaker"):
            return
        m = self.breaker.metrics
        spec = self.spec
        assert m.state == State(spec.state)
        assert m.backend == "local"
        assert m.total_calls == spec.total
        assert m.rejected_calls == spec.rejected
        assert (m.successful_calls, m.failed_calls, m.ignored_calls) == (self.successes, self.failures, self.ignored)
        assert m.total_calls == self.successes + self.failures + self.ignored + len(self.held)
        if spec.state == "closed":
            assert m.consecutive_failures == spec.run
            expected_rate = round(100.0 * sum(spec.outcomes) / len(spec.outcomes), 2) if spec.outcomes else 0.0
            assert m.failure_rate == expected_rate
        if spec.state == "open":
            assert m.open_until == datetime.fromtimestamp(spec.open_until, tz=UTC)
        live_trials = [t for t, until in spec.trials.items() if until > time.time()]
        assert len(live_trials) + spec.trial_successes <= CONFIG.half_open_calls


BreakerMachine.TestCase.settings = hsettings(max_examples=400, stateful_step_count=40, deadline=None)
test_the_breaker_follows_its_specification_through_any_sequence = BreakerMachine.TestCase


def test_the_wait_in_open_doubles_on_each_failed_recovery_up_to_its_cap() -> None:
    assert [CONFIG.wait_for(n) for n in range(4)] == [10.0, 20.0, 35.0, 35.0]


def test_a_slow_success_counts_as_a_failure() -> None:
    config = BreakerConfig(slow_call_seconds=1.0)
    assert config.classify(None, 1.5) is Outcome.FAILURE
    assert config.classify(None, 0.5) is Outcome.SUCCESS


def test_a_config_cannot_need_more_trial_successes_than_it_admits() -> None:
    with pytest.raises(ValueError, match="success_threshold"):
        BreakerConfig(half_open_calls=1, success_threshold=2)


def test_the_decorator_and_the_context_manager_count_calls_like_call() -> None:
    with freeze_time("2026-01-01 00:00:00") as frozen:
        _decorator_and_context_manager(frozen)


def _decorator_and_context_manager(frozen) -> None:
    breaker = CircuitBreaker("deco", BreakerConfig(consecutive_failures=2, wait_seconds=5), shared=False)

    @breaker
    def flaky(fail: bool) -> str:
        if fail:
            raise RuntimeError("boom")
        return "ok"

    assert flaky(False) == "ok"
    with pytest.raises(RuntimeError):
        flaky(True)
    with pytest.raises(RuntimeError), breaker:
        raise RuntimeError("boom again")
    with pytest.raises(CircuitBreakerOpenError) as rejected:
        flaky(False)
    assert rejected.value.retry_at == datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)
    m = breaker.metrics
    assert (m.total_calls, m.successful_calls, m.failed_calls, m.rejected_calls) == (3, 1, 2, 1)
    assert m.state is State.OPEN
    frozen.tick(5)
    with breaker as permit:
        assert permit.admission.trial
