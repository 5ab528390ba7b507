"""The shared breaker on real Redis: the Lua scripts, the Redis server's clock, many processes.

Timing here is real (the scripts read the Redis server's clock, which no test can
freeze), so waits are a fraction of a second. Tests that stop Redis use a private
valkey-server started for the test, never the shared Redis on 6379.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import hypothesis.strategies as st
import pybreaker
import pytest
import redis
from django.conf import settings
from hypothesis import given
from hypothesis import settings as hsettings

from core.breaker import REDIS_TIMEOUT, CircuitBreaker, CircuitBreakerOpenError, channel_for
from core.breaker_core import BreakerConfig, State
from core.breaker_redis import known_breakers
from project.embedded import free_port, start_background


@pytest.fixture(autouse=True)
def _forget_test_breakers() -> Iterator[None]:
    """Unlist this file's breakers afterwards, so health sweeps in later tests do not see hundreds."""
    yield
    channel = channel_for(settings.REDIS_URL, REDIS_TIMEOUT)
    for name in known_breakers(channel, settings.BREAKER_KEY_PREFIX):
        if name.startswith("test-"):
            CircuitBreaker(name).forget()


def unique(prefix: str) -> str:
    return f"test-{prefix}-{uuid.uuid4().hex[:8]}"


def boom() -> None:
    raise RuntimeError("dependency down")


def fast_config(**overrides: Any) -> BreakerConfig:
    values: dict[str, Any] = {
        "consecutive_failures": 2,
        "minimum_calls": 4,
        "window_size": 4,
        "wait_seconds": 0.4,
        "wait_multiplier": 2.0,
        "max_wait_seconds": 5.0,
        "half_open_calls": 2,
        "success_threshold": 2,
        "trial_timeout": 5.0,
    }
    values.update(overrides)
    values["max_wait_seconds"] = max(values["max_wait_seconds"], values["wait_seconds"])
    return BreakerConfig(**values)


def trip(breaker: CircuitBreaker, failures: int = 2) -> None:
    for _ in range(failures):
        with pytest.raises(RuntimeError):
            breaker.call(boom)
    breaker.flush()  # outcomes are sent without waiting: let Redis apply them before other clients look


def test_a_breaker_tripped_through_one_instance_rejects_calls_through_another() -> None:
    name = unique("shared")
    first = CircuitBreaker(name, fast_config(wait_seconds=30))
    other = CircuitBreaker(name, fast_config(wait_seconds=30), redis_timeout=0.4)  # its own connection
    trip(first)
    with pytest.raises(CircuitBreakerOpenError) as rejected:
        other.call(lambda: "never called")
    assert rejected.value.name == name
    assert rejected.value.state is State.OPEN
    m = other.metrics
    assert m.backend == "redis"
    assert (m.state, m.total_calls, m.failed_calls, m.rejected_calls, m.consecutive_failures) == (
        State.OPEN,
        2,
        2,
        1,
        2,
    )
    assert m.opened_at is not None
    assert m.open_until is not None
    assert 29 < (m.open_until - m.opened_at).total_seconds() <= 30.001
    assert rejected.value.retry_at == m.open_until


def test_a_process_riding_on_a_known_closed_state_learns_of_another_tripping_it_at_its_next_reply() -> None:
    """CLOSED admits without a round trip while this process's knowledge is fresh; each
    outcome's reply refreshes it, so the call after the one that saw the trip asks first."""
    name = unique("ride")
    ours = CircuitBreaker(name, fast_config(wait_seconds=30), closed_ttl=5.0)
    ours.call(lambda: None)  # learns CLOSED
    trip(CircuitBreaker(name, fast_config(wait_seconds=30), redis_timeout=0.4))
    through = 0
    for _ in range(5):
        time.sleep(0.05)  # calls spaced like real ones: the previous outcome's reply is in
        try:
            ours.call(lambda: None)
            through += 1
        except CircuitBreakerOpenError:
            break
    assert through == 1  # it rode once on what it knew; that call's reply said OPEN
    m = ours.metrics
    assert (m.state, m.rejected_calls, m.successful_calls) == (State.OPEN, 1, 2)


def test_a_process_whose_knowledge_is_older_than_closed_ttl_asks_before_calling() -> None:
    name = unique("stale-knowledge")
    ours = CircuitBreaker(name, fast_config(wait_seconds=30), closed_ttl=0.2)
    ours.call(lambda: None)
    trip(CircuitBreaker(name, fast_config(wait_seconds=30), redis_timeout=0.4))
    time.sleep(0.25)
    with pytest.raises(CircuitBreakerOpenError):
        ours.call(lambda: None)


def test_after_its_wait_the_breaker_admits_the_permitted_trials_and_closes_on_their_success() -> None:
    breaker = CircuitBreaker(unique("recover"), fast_config())
    trip(breaker)
    with pytest.raises(CircuitBreakerOpenError):
        breaker.admit()
    time.sleep(0.45)
    first, second = breaker.admit(), breaker.admit()
    assert first.admission.trial
    assert second.admission.trial
    with pytest.raises(CircuitBreakerOpenError) as third:
        breaker.admit()
    assert third.value.state is State.HALF_OPEN
    first.finish()
    assert breaker.state is State.HALF_OPEN
    second.finish()
    assert breaker.state is State.CLOSED
    assert breaker.call(lambda: 42) == 42


def test_a_failed_trial_reopens_the_breaker_with_a_doubled_wait() -> None:
    breaker = CircuitBreaker(unique("reopen"), fast_config(wait_seconds=0.3))
    trip(breaker)
    time.sleep(0.35)
    with pytest.raises(RuntimeError):
        breaker.call(boom)
    m = breaker.metrics
    assert m.state is State.OPEN
    assert m.open_until is not None
    assert m.opened_at is not None
    assert (m.open_until - m.opened_at).total_seconds() == pytest.approx(0.6, abs=0.001)


def test_a_trial_whose_caller_died_frees_its_slot_after_the_trial_timeout() -> None:
    breaker = CircuitBreaker(
        unique("lease"), fast_config(wait_seconds=0.2, half_open_calls=1, success_threshold=1, trial_timeout=0.4)
    )
    trip(breaker)
    time.sleep(0.25)
    breaker.admit()  # the holder "dies": it never reports
    with pytest.raises(CircuitBreakerOpenError) as rejected:
        breaker.admit()
    assert rejected.value.retry_at is not None  # when the dead trial's lease runs out
    time.sleep(0.45)
    breaker.admit().finish()
    assert breaker.state is State.CLOSED


def test_an_outcome_from_before_the_breaker_tripped_does_not_move_it() -> None:
    breaker = CircuitBreaker(unique("stale"), fast_config(wait_seconds=30))
    slow_call = breaker.admit()
    trip(breaker)
    slow_call.finish()  # a success admitted while CLOSED, reported while OPEN
    m = breaker.metrics
    assert m.state is State.OPEN
    assert m.successful_calls == 1


def missing_key() -> None:
    raise KeyError("missing")


def test_ignored_exceptions_count_neither_as_success_nor_failure() -> None:
    breaker = CircuitBreaker(unique("ignored"), fast_config(ignored_exceptions=(KeyError,)))
    for _ in range(5):
        with pytest.raises(KeyError):
            breaker.call(missing_key)
    m = breaker.metrics
    assert (m.state, m.ignored_calls, m.failed_calls, m.successful_calls, m.failure_rate) == (State.CLOSED, 5, 0, 0, 0)


def test_the_failure_rate_over_the_window_trips_the_breaker_without_a_run_of_failures() -> None:
    breaker = CircuitBreaker(unique("rate"), fast_config(consecutive_failures=0, window_size=4, minimum_calls=4))
    for fail in (True, False, True):
        if fail:
            with pytest.raises(RuntimeError):
                breaker.call(boom)
        else:
            breaker.call(lambda: None)
    assert breaker.metrics.failure_rate == pytest.approx(66.67)
    assert breaker.state is State.CLOSED  # 3 calls: below the minimum
    breaker.call(lambda: None)
    assert breaker.state is State.OPEN  # 2 of 4 failed: 50 %


def test_operators_force_open_disable_and_reset_a_shared_breaker() -> None:
    name = unique("operator")
    breaker = CircuitBreaker(name, fast_config())
    breaker.force_open()
    with pytest.raises(CircuitBreakerOpenError) as rejected:
        breaker.call(lambda: None)
    assert rejected.value.retry_at is None
    assert "until an operator resets it" in str(rejected.value)
    breaker.disable()
    for _ in range(5):
        with pytest.raises(RuntimeError):
            breaker.call(boom)
    assert breaker.state is State.DISABLED
    breaker.reset()
    m = breaker.metrics
    assert (m.state, m.consecutive_failures, m.failure_rate, m.opened_at) == (State.CLOSED, 0, 0.0, None)


def test_a_forgotten_breaker_is_unlisted_and_starts_again_closed() -> None:
    name = unique("forget")
    breaker = CircuitBreaker(name, fast_config(wait_seconds=30))
    trip(breaker)
    channel = channel_for(settings.REDIS_URL, REDIS_TIMEOUT)
    assert name in known_breakers(channel, settings.BREAKER_KEY_PREFIX)
    breaker.forget()
    assert name not in known_breakers(channel, settings.BREAKER_KEY_PREFIX)
    m = breaker.metrics
    assert (m.state, m.total_calls, m.failed_calls) == (State.CLOSED, 0, 0)


@given(st.lists(st.sampled_from(["success", "failure", "ignored", "force_open", "disable", "reset"]), max_size=25))
@hsettings(max_examples=40, deadline=None)
def test_the_lua_scripts_and_the_local_breaker_agree_on_every_sequence(operations: list[str]) -> None:
    config = fast_config(wait_seconds=3600, max_wait_seconds=3600, ignored_exceptions=(KeyError,))
    shared = CircuitBreaker(unique("diff"), config)
    local = CircuitBreaker("diff", config, shared=False)
    errors = {"success": None, "failure": RuntimeError("x"), "ignored": KeyError("k")}
    for op in operations:
        if op in errors:
            results = []
            for breaker in (shared, local):
                try:
                    breaker.admit().finish(errors[op])
                    results.append("admitted")
                except CircuitBreakerOpenError:
                    results.append("rejected")
            assert results[0] == results[1], op
        else:
            getattr(shared, op)()
            getattr(local, op)()
        a, b = shared.metrics, local.metrics
        assert (a.state, a.total_calls, a.successful_calls, a.failed_calls, a.ignored_calls, a.rejected_calls) == (
            b.state, b.total_calls, b.successful_calls, b.failed_calls, b.ignored_calls, b.rejected_calls,
        )  # fmt: skip
        assert (a.failure_rate, a.consecutive_failures) == (b.failure_rate, b.consecutive_failures)
    shared.forget()


# --- Redis down: the fallback ----------------------------------------------------------


@pytest.fixture
def private_valkey(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A valkey-server of our own, to stop and start without touching the shared Redis."""
    port = free_port()
    server: dict[str, Any] = {"port": port, "url": f"redis://127.0.0.1:{port}/0", "dir": tmp_path / "valkey"}
    server["process"] = start_background(port, server["dir"], persist=False)
    yield server
    server["process"].terminate()
    server["process"].wait(timeout=10)


def test_when_redis_goes_down_the_breaker_falls_back_to_a_local_one_and_says_so(private_valkey, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="core.breaker")
    breaker = CircuitBreaker(
        unique("fallback"), fast_config(wait_seconds=30), redis_url=private_valkey["url"], redis_retry_seconds=0.3
    )
    breaker.call(lambda: None)
    assert breaker.metrics.backend == "redis"

    private_valkey["process"].terminate()
    private_valkey["process"].wait(timeout=10)

    assert breaker.call(lambda: "still served") == "still served"
    m = breaker.metrics
    assert (m.backend, m.fallback_active, m.fallback_events) == ("local-fallback", True, 1)
    assert "Redis unreachable" in caplog.text
    assert "per-process breaker" in caplog.text
    # It still protects the caller: it never fails open.
    trip(breaker)
    with pytest.raises(CircuitBreakerOpenError):
        breaker.call(lambda: None)
    assert breaker.metrics.state is State.OPEN

    private_valkey["process"] = start_background(private_valkey["port"], private_valkey["dir"], persist=False)
    time.sleep(0.35)
    assert breaker.call(lambda: "shared again") == "shared again"  # the fresh Redis holds a CLOSED breaker
    m = breaker.metrics
    assert (m.backend, m.fallback_active, m.fallback_events) == ("redis", False, 1)
    assert "back on the shared state" in caplog.text


def test_a_breaker_survives_redis_losing_its_script_cache(private_valkey) -> None:
    breaker = CircuitBreaker(unique("noscript"), fast_config(), redis_url=private_valkey["url"])
    breaker.call(lambda: None)
    redis.Redis.from_url(private_valkey["url"]).script_flush()
    breaker.call(lambda: None)
    breaker.call(lambda: None)
    m = breaker.metrics
    assert (m.backend, m.successful_calls, m.fallback_events) == ("redis", 3, 0)


# --- Many processes at an open breaker -------------------------------------------------


class _FailingDependency(BaseHTTPRequestHandler):
    """Answers 503 after a delay, like a dependency that is still down; counts its hits."""

    hits = 0
    lock = threading.Lock()
    delay = 1.0

    def do_GET(self) -> None:
        with _FailingDependency.lock:
            _FailingDependency.hits += 1
        time.sleep(self.delay)
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _call_dependency(url: str) -> None:
    response = httpx.get(url, timeout=10)
    response.raise_for_status()


def _ours(redis_url: str, name: str, config: BreakerConfig, barrier: Any, url: str, results: Any) -> None:
    try:
        breaker = CircuitBreaker(name, config, redis_url=redis_url)
        barrier.wait(timeout=20)
        try:
            breaker.call(_call_dependency, url)
            results.put("succeeded")
        except CircuitBreakerOpenError:
            results.put("rejected")
        except httpx.HTTPError:
            results.put("failed")
    except BaseException as exc:  # report, or the parent waits for nothing
        results.put(f"error: {exc!r}")


def _pybreakers(redis_url: str, name: str, barrier: Any, url: str, results: Any) -> None:
    try:
        client = redis.Redis.from_url(redis_url)
        storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace=name)
        breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=0.5, state_storage=storage)
        barrier.wait(timeout=20)
        try:
            breaker.call(_call_dependency, url)
            results.put("succeeded")
        except pybreaker.CircuitBreakerError:
            results.put("rejected")
        except httpx.HTTPError:
            results.put("failed")
    except BaseException as exc:
        results.put(f"error: {exc!r}")


def _stampede(target: Any, args: tuple[Any, ...], processes: int = 8) -> tuple[int, list[str]]:
    """Start ``processes`` callers, release them together at an open breaker; count the hits.

    Children come from a fork server, not from this process: a plain fork would
    inherit this test process's open broker connections, and kombu's after-fork
    cleanup in the child then blocks reading a socket it shares with its parent.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailingDependency)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    _FailingDependency.hits = 0
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    children = [ctx.Process(target=target, args=(*args, barrier, url, results)) for _ in range(processes)]
    for child in children:
        child.start()
    try:
        outcomes = sorted(results.get(timeout=30) for _ in children)
        for child in children:
            child.join(timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    return _FailingDependency.hits, outcomes


def test_eight_processes_at_an_open_breaker_send_only_the_permitted_trials_but_pybreaker_sends_all() -> None:
    redis_url = settings.REDIS_URL
    config = fast_config(consecutive_failures=1, wait_seconds=0.5, half_open_calls=2, success_threshold=2)

    ours = unique("stampede")
    trip(CircuitBreaker(ours, config), failures=1)
    time.sleep(0.55)
    hits, outcomes = _stampede(_ours, (redis_url, ours, config))
    assert hits == config.half_open_calls == 2
    assert outcomes == ["failed"] * 2 + ["rejected"] * 6

    theirs = unique("pybreaker")
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, redis.Redis.from_url(redis_url), namespace=theirs)
    opener = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=0.5, state_storage=storage)
    with pytest.raises(pybreaker.CircuitBreakerError):
        opener.call(boom)
    time.sleep(0.55)
    hits, outcomes = _stampede(_pybreakers, (redis_url, theirs))
    # Half-open is not gated across processes: every caller is a "trial" (pybreaker
    # then reports each failed trial as CircuitBreakerError, after calling through).
    assert hits == 8
    assert len(outcomes) == 8


def test_a_breaker_stays_shared_after_hundreds_of_short_lived_threads() -> None:
    """Each thread gets its own connection; they must not exhaust a pool and push every
    breaker of the process onto its per-process fallback."""
    breaker = CircuitBreaker(unique("threads"), fast_config())

    def one_call() -> None:
        breaker.call(lambda: None)

    for _ in range(150):
        thread = threading.Thread(target=one_call)
        thread.start()
        thread.join()
    assert not breaker.fallback_active
    assert breaker.metrics.backend == "redis"
