"""Benchmark: scaling metrics for 20 containers vs one stats call, and decisions for 100 policies.

Run with ``make bench`` (or ``.venv/bin/python bench/scaling.py`` after
``bash scripts/docker-engine.sh``). In one process, against the real Docker engine:

1. Start N containers (default 20; ``BENCH_CONTAINERS``) from ``fcp-tiny:latest`` with the
   ownership labels of a throw-away service.
2. Time one ``stats`` call (one container), then the concurrent gathering for all N,
   median of 3 rounds each. Target: N containers at most 1.5x one call.
3. For reference, time the same N calls one after another (one round), and the whole
   ``scaling.metrics.gather`` (list the instances + CPU and memory) for the service.
4. Decision time for 100 policies: the pure ``decide`` (3 metrics, a stabilisation
   history of 5 rows each), and ``scaling.planning.plan`` with the database (history
   and cooldown read, recommendation written), best of 5 rounds.
5. Remove the containers and the policies.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django

django.setup()

from django.utils import timezone  # noqa: E402

from scaling.actions import template_for  # noqa: E402
from scaling.decisions import MetricReading, PolicySpec, decide  # noqa: E402
from scaling.docker_backend import DockerBackend, EngineUnreachable  # noqa: E402
from scaling.metrics import gather  # noqa: E402
from scaling.metrics.docker_stats import gather_usage  # noqa: E402
from scaling.models import ScalingPolicy  # noqa: E402
from scaling.planning import plan  # noqa: E402

CONTAINERS = int(os.environ.get("BENCH_CONTAINERS", "20"))
POLICIES = 100
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def bench_metrics(results: dict[str, object]) -> None:
    service = f"bench-{uuid.uuid4().hex[:6]}"
    policy = ScalingPolicy(
        service=service, image="fcp-tiny:latest", command=SLEEPER, stop_timeout=2,
        target_cpu_percent=70.0, target_memory_percent=80.0,
    )  # fmt: skip
    backend = DockerBackend()
    try:
        template = template_for(policy)
        started = timed(lambda: [backend.start_instance(service, template) for _ in range(CONTAINERS)])
        containers = backend.list_instances(service)
        assert len(containers) == CONTAINERS, f"started {len(containers)} of {CONTAINERS} containers"
        one = statistics.median(timed(lambda: gather_usage(containers[:1], 32)) for _ in range(3))
        many = statistics.median(timed(lambda: gather_usage(containers, 32)) for _ in range(3))
        sequential = timed(lambda: gather_usage(containers, 1))
        whole = timed(lambda: gather(policy, backend.list_instances(service), timezone.now()))
        results["containers"] = CONTAINERS
        results["start_containers_s"] = round(started, 2)
        results["stats_one_container_s"] = round(one, 3)
        results["stats_all_concurrent_s"] = round(many, 3)
        results["ratio_all_vs_one"] = round(many / one, 2)
        results["stats_all_sequential_s"] = round(sequential, 3)
        results["gather_cpu_and_memory_s"] = round(whole, 3)
    finally:
        for container in backend.list_instances(service):
            container.remove(force=True)
        backend.close()


def bench_decisions(results: dict[str, object]) -> None:
    now = timezone.now()
    readings = {
        "cpu_percent": MetricReading.present(85.0, now),
        "response_time_ms": MetricReading.present(180.0, now - timedelta(seconds=20)),
        "queue_depth": MetricReading.missing("broker unreachable"),
    }
    specs = [
        PolicySpec(
            service=f"s{i}",
            min_instances=1,
            max_instances=20,
            targets={"cpu_percent": 70.0, "response_time_ms": 200.0, "queue_depth": 10.0},
            stabilization_seconds=300,
            cooldown_seconds=60,
        )
        for i in range(POLICIES)
    ]
    history = [(now - timedelta(seconds=60 * k), 4 + k) for k in range(5)]
    pure = min(timed(lambda: [decide(spec, 5, readings, history, None, now) for spec in specs]) for _ in range(5))
    results["decide_100_policies_ms"] = round(pure * 1000, 3)

    prefix = f"bench-plan-{uuid.uuid4().hex[:6]}"
    policies = ScalingPolicy.objects.bulk_create(
        ScalingPolicy(
            service=f"{prefix}-{i}", image="fcp-tiny:latest", target_cpu_percent=70.0, target_response_time_ms=200.0
        )
        for i in range(POLICIES)
    )
    try:
        with_db = min(timed(lambda: [plan(p, 5, readings, timezone.now()) for p in policies]) for _ in range(5))
        results["plan_100_policies_with_database_ms"] = round(with_db * 1000, 1)
    finally:
        ScalingPolicy.objects.filter(service__startswith=prefix).delete()


def main() -> int:
    results: dict[str, object] = {}
    try:
        bench_metrics(results)
    except EngineUnreachable as exc:
        results["metrics"] = f"skipped: {exc} (run `bash scripts/docker-engine.sh`)"
    bench_decisions(results)
    print(json.dumps(results, indent=2))
    ratio = results.get("ratio_all_vs_one")
    if isinstance(ratio, float):
        verdict = "OK" if ratio <= 1.5 else "ABOVE TARGET"
        print(f"metrics for {CONTAINERS} containers vs one stats call: {ratio}x (target <= 1.5x) {verdict}")
        return 0 if ratio <= 1.5 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
