"""Benchmark: what a circuit breaker costs per call.

Run with ``make bench`` (or ``.venv/bin/python bench/breaker.py``). In one process:

1. Local breaker: a bare no-op call against the same call through a per-process
   breaker (decorator and ``call``), best of several rounds. Target: at most 1 µs
   of overhead.
2. Shared breaker: our Redis-shared breaker against pybreaker with its
   ``CircuitRedisStorage``, both on the same private valkey-server (a real Redis
   protocol server, started for this run so other clients cannot skew the numbers),
   rounds interleaved, median per-call time. Target: ours at most 0.4x pybreaker.
   Commands sent per call are counted from the server's own statistics (ours: the
   outcome script, not waited for, while the breaker is known CLOSED; pybreaker: two
   commands, each waited for).
3. Rejected calls of an open breaker, for both (what a caller pays while the
   dependency is down).

``BENCH_REDIS_URL`` measures against another Redis instead (command counts then
include other clients' traffic).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django

django.setup()

import pybreaker  # noqa: E402
import redis  # noqa: E402

from core.breaker import CircuitBreaker, CircuitBreakerOpenError  # noqa: E402
from core.breaker_core import BreakerConfig  # noqa: E402
from project.embedded import free_port, start_background  # noqa: E402

LOCAL_CALLS = int(os.environ.get("BENCH_LOCAL_CALLS", "200000"))
SHARED_CALLS = int(os.environ.get("BENCH_SHARED_CALLS", "2000"))
ROUNDS = 5


def noop() -> int:
    return 1


def per_call_us(function: Callable[[], Any], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - started) / calls * 1e6


def best_of(function: Callable[[], Any], calls: int, rounds: int = 7) -> float:
    return min(per_call_us(function, calls) for _ in range(rounds))


def local_overhead() -> dict[str, float]:
    breaker = CircuitBreaker("bench-local", shared=False)
    decorated = breaker(noop)
    bare = best_of(noop, LOCAL_CALLS)
    through_decorator = best_of(decorated, LOCAL_CALLS)
    through_call = best_of(lambda: breaker.call(noop), LOCAL_CALLS)
    lambda_only = best_of(lambda: noop(), LOCAL_CALLS)  # what the lambda itself adds to the call row
    return {
        "bare_call_us": round(bare, 3),
        "local_decorated_us": round(through_decorator, 3),
        "local_overhead_us": round(through_decorator - bare, 3),
        "local_call_method_overhead_us": round(through_call - lambda_only, 3),
    }


def commands_processed(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def client_commands(client: redis.Redis) -> int:
    """Commands sent by clients (EVALSHA counts once, not the commands inside the script)."""
    stats = client.info("commandstats")
    inside_scripts = {"hincrby", "hset", "hmget", "hget", "rpush", "lpop", "llen", "del", "zadd", "zrem", "zcard"}
    inside_scripts |= {"zremrangebyscore", "zrange", "time"}
    return sum(int(v["calls"]) for k, v in stats.items() if k.removeprefix("cmdstat_") not in inside_scripts)


def shared_vs_pybreaker(url: str) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    ours = CircuitBreaker(f"bench-{uuid.uuid4().hex[:6]}", BreakerConfig(), redis_url=url)
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace=f"bench-{uuid.uuid4().hex[:6]}")
    theirs = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60, state_storage=storage)
    for _ in range(200):  # warm up: connections, script cache
        ours.call(noop)
        theirs.call(noop)

    ours_us, theirs_us = [], []
    for _ in range(ROUNDS):
        ours_us.append(per_call_us(lambda: ours.call(noop), SHARED_CALLS))
        theirs_us.append(per_call_us(lambda: theirs.call(noop), SHARED_CALLS))

    # Commands the client sends per call (a script counts once); INFO itself counts once.
    before = client_commands(client)
    for _ in range(SHARED_CALLS):
        ours.call(noop)
    ours.flush()
    ours_commands = (client_commands(client) - before - 1) / SHARED_CALLS
    before = client_commands(client)
    for _ in range(SHARED_CALLS):
        theirs.call(noop)
    theirs_commands = (client_commands(client) - before - 1) / SHARED_CALLS

    # Rejected calls: both breakers forced open.
    ours.force_open()
    theirs.open()

    def rejected_ours() -> None:
        with contextlib.suppress(CircuitBreakerOpenError):
            ours.call(noop)

    def rejected_theirs() -> None:
        with contextlib.suppress(pybreaker.CircuitBreakerError):
            theirs.call(noop)

    ours_rejected = statistics.median(per_call_us(rejected_ours, SHARED_CALLS) for _ in range(3))
    theirs_rejected = statistics.median(per_call_us(rejected_theirs, SHARED_CALLS) for _ in range(3))
    ours.reset()
    ours_median, theirs_median = statistics.median(ours_us), statistics.median(theirs_us)
    return {
        "shared_us": round(ours_median, 1),
        "pybreaker_redis_us": round(theirs_median, 1),
        "ratio_shared_to_pybreaker": round(ours_median / theirs_median, 3),
        "shared_commands_sent_per_call": round(ours_commands, 2),
        "pybreaker_commands_sent_per_call": round(theirs_commands, 2),
        "shared_rejected_us": round(ours_rejected, 1),
        "pybreaker_rejected_us": round(theirs_rejected, 1),
    }


def main() -> None:
    result: dict[str, object] = {"python": sys.version.split()[0]}
    result.update(local_overhead())
    url = os.environ.get("BENCH_REDIS_URL")
    server = None
    if not url:
        port = free_port()
        server = start_background(port, Path(tempfile.mkdtemp(prefix="bench-valkey-")), persist=False)
        url = f"redis://127.0.0.1:{port}/0"
    try:
        result["redis"] = "private valkey-server" if server else url
        result.update(shared_vs_pybreaker(url))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    print(json.dumps(result, indent=2))
    failed = []
    if float(result["local_overhead_us"]) > 1.0:  # type: ignore[arg-type]
        failed.append("local breaker overhead should be at most 1 us per call")
    if float(result["ratio_shared_to_pybreaker"]) > 0.4:  # type: ignore[arg-type]
        failed.append("shared breaker should cost at most 0.4x pybreaker with Redis storage")
    for message in failed:
        print(f"FAILED target: {message}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
