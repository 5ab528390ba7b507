"""Benchmark: unchanged fabrics synced per second through a real worker, against no-op tasks.

Run with ``bash scripts/bench.sh bench/throughput.py`` (``make bench`` runs it with the
others). It needs PostgreSQL (``DATABASE_URL``'s server); everything it writes goes to
servers of its own:

1. A private Valkey (broker, results, cache and breakers; Redis database 0 for the
   project, 1 for the plain baseline) and a private PostgreSQL database created on the
   server of ``DATABASE_URL`` and migrated. Both are removed at the end.
2. ``BENCH_REPOS`` (20) local Git repositories with a few manifests, and
   ``BENCH_FABRICS`` (2,000) fabrics spread evenly over them.
3. Two workers, both ``celery worker --pool prefork --concurrency 2``: the project's
   (``-A project``, its settings, plus ``bench._tasks``) and a plain Celery app with
   Celery's defaults (``bench._plain_app``: no Django, no result backend, default
   prefetch, early acks, no events).
4. The first sync of every fabric: one tick (``sync.dispatch.dispatch_due_fabrics``),
   then wait until every fabric has an outcome.
5. ``BENCH_ROUNDS`` (5) rounds; each measures, in an order that rotates every round:
   (a) the unchanged re-sync: every fabric made due, one tick, until every fabric's
   run is recorded: N / (last run's finish - the tick's start); (b) N no-op tasks on the
   project's worker and (c) N no-op tasks on the plain worker, each published by an
   ``apply_async`` loop on one producer, from the first publish until the last task
   has run. The ratios are taken per round; medians and ranges are reported.
6. Alongside: the machine's load (``os.getloadavg``) before and after every round,
   the worker's RSS (main process + pool children) after the first sync and after
   every round (5 rounds = 10,000 unchanged syncs), Redis commands and
   ``celery-task-meta-*`` keys added per sync, PostgreSQL commits and sessions per
   sync (``pg_stat_database``; the benchmark's own polling is included), and the
   worker's CPU time (main process + pool children, from ``/proc``) per task of each
   measure: the cost of one sync or no-op that machine load does not stretch.

Target: (a) / (b) at least 1.0. Prints JSON; exits 1 when the median misses it.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._private import PrivateValkey, private_database  # noqa: E402
from bench._stack import Worker, make_repos, project_environment, wait  # noqa: E402

N = int(os.environ.get("BENCH_FABRICS", "2000"))
REPOS = int(os.environ.get("BENCH_REPOS", "20"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
TARGET = 1.0


def main() -> dict[str, Any]:
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        return {"skipped": "needs PostgreSQL: DATABASE_URL must name a PostgreSQL server"}
    work = Path(tempfile.mkdtemp(prefix="fcp-bench-throughput-"))
    valkey = PrivateValkey()
    try:
        with private_database(f"fcp_bench_throughput_{os.getpid()}") as database_url:
            return run(work, valkey, database_url)
    finally:
        valkey.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, valkey: PrivateValkey, database_url: str) -> dict[str, Any]:
    repos_root = work / "repos"
    repos = make_repos(repos_root, REPOS)
    base_env = project_environment(work, valkey.url(0), database_url, repos_root)
    import django

    django.setup()
    import redis
    from celery import Celery
    from django.core.management import call_command
    from django.db import connection
    from django.db.models import Max
    from django.utils import timezone
    from kombu import Connection

    from bench._tasks import noop
    from project.celery_app import app
    from sync.dispatch import dispatch_due_fabrics
    from sync.models import Fabric, RunStatus, SyncRun, SyncStatus

    call_command("migrate", verbosity=0)
    now = timezone.now()
    Fabric.objects.bulk_create(
        Fabric(
            name=f"bench-{i:05}",
            git_url=str(repos[i % len(repos)]),
            git_branch="main",
            git_path="manifests",
            sync_interval=300,
            next_sync_at=now - timedelta(seconds=1),
        )
        for i in range(N)
    )

    project_log = work / "project-worker.log"
    project = Worker("fcp", "project", base_env, project_log, include="bench._tasks")
    plain_env = {k: v for k, v in base_env.items() if not k.startswith(("DJANGO_", "CELERY_"))}
    plain_env |= {"BENCH_PLAIN_BROKER_URL": valkey.url(1), "PYTHONPATH": str(ROOT)}
    plain = Worker("plain", "bench._plain_app", plain_env, work / "plain-worker.log")
    workers = [project, plain]
    plain_client = Celery("plain-client", broker=valkey.url(1), set_as_current=False)
    redis0, redis1 = redis.Redis.from_url(valkey.url(0)), redis.Redis.from_url(valkey.url(1))
    batches = 0

    def noop_batch(send: Callable[[Any, str], object], client: redis.Redis, producer_of: Any, count: int) -> float:
        """count no-op tasks published in a loop on one producer; seconds until the last has run."""
        nonlocal batches
        batches += 1
        key = f"bench:noop:{batches}"
        started = time.time()
        with producer_of() as producer:
            for _ in range(count):
                send(producer, key)
        done = wait(lambda: client.get(f"{key}:done"), 120, f"{count} no-op tasks", workers, interval=0.02)
        return float(done) - started

    def project_noops(count: int = N) -> float:
        return noop_batch(
            lambda producer, key: noop.apply_async((count, key), producer=producer),
            redis0, app.producer_or_acquire, count,
        )  # fmt: skip

    @contextmanager
    def plain_producer() -> Iterator[Any]:
        # A connection of its own: an app's default one follows CELERY_BROKER_URL from the environment.
        with Connection(valkey.url(1)) as conn:
            yield plain_client.amqp.Producer(conn)

    def plain_noops(count: int = N) -> float:
        return noop_batch(
            lambda producer, key: plain_client.send_task("bench.plain_noop", (count, key), producer=producer),
            redis1, plain_producer, count,
        )  # fmt: skip

    def pg_counters() -> tuple[int, int]:
        with connection.cursor() as cursor:
            cursor.execute("select pg_stat_clear_snapshot()")
            cursor.execute("select xact_commit, sessions from pg_stat_database where datname = current_database()")
            commits, sessions = cursor.fetchone()
        return int(commits), int(sessions)

    def redis_commands() -> int:
        stats = redis0.info("commandstats")
        return sum(int(v["calls"]) for v in stats.values())

    def meta_keys() -> int:
        return sum(1 for _ in redis0.scan_iter("celery-task-meta-*", count=1000))

    def unsettled() -> int:
        return Fabric.objects.filter(
            sync_status__in=[SyncStatus.NEVER_SYNCED, SyncStatus.QUEUED, SyncStatus.SYNCING]
        ).count()

    def sync_round() -> dict[str, Any]:
        Fabric.objects.update(next_sync_at=timezone.now() - timedelta(seconds=1))
        meta_before, commands_before, (commits_before, sessions_before) = meta_keys(), redis_commands(), pg_counters()
        started_at = timezone.now()
        started = time.perf_counter()
        metrics = dispatch_due_fabrics(started_at)
        tick_seconds = time.perf_counter() - started
        assert metrics["fabrics_dispatched"] == N, metrics
        round_runs = SyncRun.objects.filter(started_at__gte=started_at)
        wait(lambda: round_runs.exclude(status=RunStatus.RUNNING).count() >= N and unsettled() == 0,
             1800, f"{N} unchanged syncs", workers)  # fmt: skip
        finished = round_runs.aggregate(last=Max("finished_at"))["last"]
        seconds = (finished - started_at).total_seconds()
        time.sleep(1)  # pg_stat_database is updated when the backends report, within about a second
        commits_after, sessions_after = pg_counters()
        not_unchanged = round_runs.exclude(status=RunStatus.UNCHANGED).count()
        return {
            "seconds": seconds,
            "tick_seconds": tick_seconds,
            "not_unchanged": not_unchanged,
            "redis_commands_per_sync": (redis_commands() - commands_before) / N,
            "task_meta_keys_added": meta_keys() - meta_before,
            "pg_commits_per_sync": (commits_after - commits_before) / N,
            "pg_sessions_per_sync": (sessions_after - sessions_before) / N,
        }

    try:
        project_noops(20), plain_noops(20)  # both workers ready and warm
        load_before = os.getloadavg()
        started = time.perf_counter()
        dispatch_due_fabrics(timezone.now())
        wait(lambda: unsettled() == 0, 3600, f"first sync of {N} fabrics", workers, interval=1)
        first_sync_seconds = time.perf_counter() - started
        failed_first = Fabric.objects.exclude(sync_status=SyncStatus.IN_SYNC).count()
        rss = [project.rss_mb()]
        rounds: list[dict[str, Any]] = []
        for number in range(ROUNDS):
            measures: dict[str, Callable[[], Any]] = {"sync": sync_round, "project_noop": project_noops,
                                                      "plain_noop": plain_noops}  # fmt: skip
            order = list(measures)[number % 3 :] + list(measures)[: number % 3]
            result: dict[str, Any] = {"order": order, "load_before": os.getloadavg()[0]}
            for name in order:
                worker = plain if name == "plain_noop" else project
                cpu_before = worker.cpu_seconds()
                result[name] = measures[name]()
                result[f"{name}_worker_cpu_ms_per_task"] = (worker.cpu_seconds() - cpu_before) / N * 1000
            result["load_after"] = os.getloadavg()[0]
            rss.append(project.rss_mb())
            rounds.append(result)
            print(f"round {number + 1}: {json.dumps(result, default=str)}", file=sys.stderr, flush=True)
    finally:
        for worker in workers:
            worker.stop()

    sync_rates = [N / r["sync"]["seconds"] for r in rounds]
    project_rates = [N / r["project_noop"] for r in rounds]
    plain_rates = [N / r["plain_noop"] for r in rounds]
    vs_project = [s / p for s, p in zip(sync_rates, project_rates, strict=True)]
    vs_plain = [s / p for s, p in zip(sync_rates, plain_rates, strict=True)]

    def summary(values: list[float], digits: int = 2) -> dict[str, float]:
        return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
                "max": round(max(values), digits)}  # fmt: skip

    def per_sync(key: str) -> dict[str, float]:
        return summary([r["sync"][key] for r in rounds])

    total_rss = [sum(sizes.values()) for sizes in rss]
    return {
        "fabrics": N,
        "repositories": REPOS,
        "rounds": ROUNDS,
        "first_sync_seconds": round(first_sync_seconds, 1),
        "first_sync_not_in_sync": failed_first,
        "unchanged_syncs_per_second": summary(sync_rates, 1),
        "project_noop_tasks_per_second": summary(project_rates, 1),
        "plain_celery_noop_tasks_per_second": summary(plain_rates, 1),
        "ratio_sync_to_project_noop": summary(vs_project),
        "ratio_sync_to_plain_noop": summary(vs_plain),
        "worker_cpu_ms_per_unchanged_sync": summary([r["sync_worker_cpu_ms_per_task"] for r in rounds]),
        "worker_cpu_ms_per_project_noop": summary([r["project_noop_worker_cpu_ms_per_task"] for r in rounds]),
        "worker_cpu_ms_per_plain_noop": summary([r["plain_noop_worker_cpu_ms_per_task"] for r in rounds]),
        "tick_seconds": per_sync("tick_seconds"),
        "runs_not_unchanged": sum(r["sync"]["not_unchanged"] for r in rounds),
        "redis_commands_per_sync": per_sync("redis_commands_per_sync"),
        "task_meta_keys_added_per_round": [r["sync"]["task_meta_keys_added"] for r in rounds],
        "pg_commits_per_sync": per_sync("pg_commits_per_sync"),
        "pg_sessions_per_sync": per_sync("pg_sessions_per_sync"),
        "worker_rss_mb_after_first_sync_then_each_round": [round(total, 1) for total in total_rss],
        "worker_rss_growth_mb_over_unchanged_syncs": round(total_rss[-1] - total_rss[0], 1),
        "worker_rss_mb_per_process_after_first_sync_and_last_round": [rss[0], rss[-1]],
        "unchanged_syncs_for_rss": N * ROUNDS,
        "load_average_1m_before": round(load_before[0], 2),
        "load_average_1m_per_round": [[round(r["load_before"], 2), round(r["load_after"], 2)] for r in rounds],
        "cores": os.cpu_count(),
    }


if __name__ == "__main__":
    outcome = main()
    print(json.dumps(outcome, indent=2))
    ratio = outcome.get("ratio_sync_to_project_noop", {}).get("median")
    if ratio is not None and ratio < TARGET:
        print(f"FAILED target: unchanged syncs/s should be at least {TARGET}x no-op tasks/s", file=sys.stderr)
        sys.exit(1)
