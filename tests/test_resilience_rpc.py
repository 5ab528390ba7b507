"""Resilient HTTP calls against a real local HTTP server, with the shared breaker on real Redis."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from core.breaker import CircuitBreakerOpenError
from core.rpc import LatencyStats, ResilientClient
from project.embedded import free_port


class ScriptedServer:
    """Each path answers from its script of (delay seconds, status), repeating the last entry."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[tuple[float, int]]] = {}
        self.hits: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                with server.lock:
                    n = server.hits[self.path]
                    server.hits[self.path] += 1
                script = server.scripts.get(self.path, [(0.0, 200)])
                delay, status = script[min(n, len(script) - 1)]
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on us (its timeout): that is the point of the test

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    s = ScriptedServer()
    yield s
    s.close()


@pytest.fixture
def rpc(server: ScriptedServer) -> Iterator[ResilientClient]:
    c = ResilientClient(timeout=2.0, deadline=5.0, max_attempts=3, backoff_base=0.01, backoff_max=0.05)
    c.breaker_for(c.target(server.base)).reset()  # a port reused from an earlier run starts clean
    yield c
    c.breaker_for(c.target(server.base)).forget()
    c.close()


def test_a_call_retried_through_two_503s_counts_once_as_a_success(server, rpc) -> None:
    server.scripts["/flaky"] = [(0, 503), (0, 503), (0, 200)]
    response = rpc.get(f"{server.base}/flaky")
    assert response.status_code == 200
    assert server.hits["/flaky"] == 3
    m = rpc.breaker_for(rpc.target(server.base)).metrics
    assert (m.total_calls, m.successful_calls, m.failed_calls) == (1, 1, 0)


def test_a_call_that_exhausts_its_retries_counts_one_failure_and_returns_the_last_answer(server, rpc) -> None:
    server.scripts["/down"] = [(0, 503)]
    response = rpc.get(f"{server.base}/down")
    assert response.status_code == 503
    assert server.hits["/down"] == 3
    m = rpc.breaker_for(rpc.target(server.base)).metrics
    assert (m.total_calls, m.successful_calls, m.failed_calls) == (1, 0, 1)


def test_an_open_breaker_rejects_the_call_without_sending_or_retrying_it(server, rpc) -> None:
    breaker = rpc.breaker_for(rpc.target(server.base))
    breaker.force_open()
    with pytest.raises(CircuitBreakerOpenError):
        rpc.get(f"{server.base}/anything")
    assert server.hits["/anything"] == 0
    assert breaker.metrics.rejected_calls == 1
    breaker.reset()


def test_five_failing_calls_open_the_breaker_for_the_host(server, rpc) -> None:
    server.scripts["/down"] = [(0, 503)]
    for _ in range(5):
        assert rpc.get(f"{server.base}/down").status_code == 503
    assert server.hits["/down"] == 15  # 5 logical calls x 3 attempts, 5 failures in the breaker
    with pytest.raises(CircuitBreakerOpenError):
        rpc.get(f"{server.base}/down")
    assert server.hits["/down"] == 15


def test_one_overall_deadline_bounds_a_call_to_a_hanging_server(server) -> None:
    server.scripts["/hangs"] = [(3.0, 200)]
    with ResilientClient(timeout=0.4, deadline=1.0, max_attempts=10, backoff_base=0.01, backoff_max=0.05) as c:
        c.breaker_for(c.target(server.base)).reset()
        started = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            c.get(f"{server.base}/hangs")
        elapsed = time.monotonic() - started
        # Generous on purpose (a loaded machine): without the deadline, ten 0.4 s
        # attempts would take over 4 s, so 2.5 s still proves the deadline cut it short.
        assert elapsed < 2.5
        assert 2 <= server.hits["/hangs"] <= 3
        m = c.breaker_for(c.target(server.base)).metrics
        assert (m.total_calls, m.failed_calls) == (1, 1)


def test_a_post_that_reached_the_server_is_not_retried(server, rpc) -> None:
    server.scripts["/create"] = [(0, 503)]
    assert rpc.post(f"{server.base}/create").status_code == 503
    assert server.hits["/create"] == 1


def test_a_refused_connection_is_retried_even_for_a_post() -> None:
    sleeps: list[float] = []
    url = f"http://127.0.0.1:{free_port()}/create"
    with ResilientClient(
        timeout=1, deadline=5, max_attempts=4, backoff_base=0.05, backoff_max=0.3, sleep=sleeps.append
    ) as c:
        c.breaker_for(c.target(url)).reset()
        with pytest.raises(httpx.ConnectError):
            c.post(url)
    assert len(sleeps) == 3
    # Full jitter: each wait is uniform in [0, min(max, base * 2^n)].
    for n, slept in enumerate(sleeps):
        assert 0 <= slept <= min(0.3, 0.05 * 2**n)


def test_latency_percentiles_and_rate_come_from_the_recorded_calls() -> None:
    now = [100.0]
    stats = LatencyStats(clock=lambda: now[0])
    for ms in range(1, 101):
        stats.record(float(ms))
        now[0] += 0.1
    summary = stats.summary()
    assert (summary.calls, summary.p50_ms, summary.p95_ms, summary.p99_ms) == (100, 50.0, 95.0, 99.0)
    assert summary.calls_per_second == pytest.approx(10.0, rel=0.02)


def test_the_client_records_the_latency_of_each_logical_call(server, rpc) -> None:
    server.scripts["/slow"] = [(0.05, 200)]
    for _ in range(4):
        rpc.get(f"{server.base}/slow")
    summary = rpc.stats(rpc.target(server.base))
    assert summary.calls == 4
    assert 50 <= summary.p50_ms < 500
    assert summary.calls_per_second > 0
