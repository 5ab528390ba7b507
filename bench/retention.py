"""Benchmark: history retention over simulated days of 10,000 fabrics, vs one plain DELETE (issue 12).

Run with ``make bench`` (or alone, with the same ``DATABASE_URL`` as ``make bench``:
``.venv/bin/python bench/retention.py``). In one process, on a clock that travels:

1. Create N fabrics synced every 300 s: ``BENCH_RETENTION_FABRICS``, default 2,000 so
   ``make bench`` stays within minutes; docs/benchmarks.md reports 10,000.
2. Every simulated hour, for ``BENCH_RETENTION_DAYS`` days (default 3): ``bulk_create``
   the hour's runs, 12 per fabric (mostly UNCHANGED; 1 % FAILED, 0.5 % SUCCESS; one
   fabric in 100 stops syncing after the first day, like a disabled one), then run the
   sync retention rules as the tick would (``core.retention.prune``, the cap and batches
   of the settings), again a simulated minute later while they report a backlog. The
   policy: the default newest-K unchanged runs per fabric, failures and changes kept
   ``BENCH_RETENTION_KEEP_DAYS`` (default 1, so the age rule works within the run).
3. Baseline, on the same generated runs: each simulated hour, one
   ``DELETE ... WHERE started_at < now - keep days`` (age only, no exceptions).
4. Print the table size after each day, the pruning time per tick (median, max), the
   longest single DELETE statement, and the fabrics left without any run (the stopped
   ones lose their whole history, last run included, under the baseline).

Only fabrics named ``bench-retention-*`` are touched; the run refuses a database that
holds other fabrics (the rules prune every fabric's runs). It publishes nothing.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from core import retention  # noqa: E402
from sync.models import Fabric, RunStatus, SyncRun  # noqa: E402

N = int(os.environ.get("BENCH_RETENTION_FABRICS", "2000"))
DAYS = int(os.environ.get("BENCH_RETENTION_DAYS", "3"))
KEEP_DAYS = int(os.environ.get("BENCH_RETENTION_KEEP_DAYS", "1"))
INTERVAL = 300
PREFIX = "bench-retention-"
START = datetime(2030, 1, 1, tzinfo=UTC)
HOUR, MINUTE = timedelta(hours=1), timedelta(minutes=1)
tick_seconds: list[float] = []  # every pruning tick of the current simulation


class StatementTimer:
    """The duration of every DELETE the pruning issues (a statement's locks last that long)."""

    def __init__(self) -> None:
        self.durations: list[float] = []

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            if sql.lstrip().upper().startswith("DELETE"):
                self.durations.append(time.perf_counter() - started)


def refuse_foreign_fabrics() -> None:
    foreign = Fabric.objects.exclude(name__startswith=PREFIX).count()
    if foreign:
        sys.exit(f"refusing: the database holds {foreign} other fabrics whose runs the rules would prune")


def create_fabrics() -> list[int]:
    Fabric.objects.filter(name__startswith=PREFIX).delete()
    Fabric.objects.bulk_create(
        (Fabric(name=f"{PREFIX}{i:05}", git_url="/srv/repos/bench", sync_enabled=False) for i in range(N)),
        batch_size=5000,
    )
    return list(Fabric.objects.filter(name__startswith=PREFIX).order_by("pk").values_list("pk", flat=True))


def hour_of_runs(fabric_ids: list[int], hour_start: datetime, rng: random.Random) -> Iterator[tuple]:
    """Each fabric's 12 runs of the hour, at its own offset in the 300 s interval:
    ``(fabric_id, status, started_at)``."""
    for index, fabric_id in enumerate(fabric_ids):
        offset = timedelta(seconds=index * INTERVAL / len(fabric_ids))
        for slot in range(3600 // INTERVAL):
            roll = rng.random()
            status = RunStatus.FAILED if roll < 0.01 else RunStatus.SUCCESS if roll < 0.015 else RunStatus.UNCHANGED
            yield fabric_id, str(status), hour_start + offset + timedelta(seconds=slot * INTERVAL)


def insert_hour(fabric_ids: list[int], hour_start: datetime, rng: random.Random) -> float:
    """The hour's runs through ``bulk_create``; on PostgreSQL the same rows through COPY
    (several times faster, so 10,000 fabrics over days fit in minutes), every other
    column with the model default ``bulk_create`` would write."""
    started = time.perf_counter()
    runs = hour_of_runs(fabric_ids, hour_start, rng)
    if connection.vendor != "postgresql":
        SyncRun.objects.bulk_create(
            (
                SyncRun(fabric_id=fabric_id, trigger="schedule", status=status, started_at=at, finished_at=at)
                for fabric_id, status, at in runs
            ),
            batch_size=5000,
        )
        return time.perf_counter() - started
    fields = [f for f in SyncRun._meta.concrete_fields if f.column != "id"]
    row = [f.get_db_prep_save(f.get_default(), connection) for f in fields]
    position = {f.column: i for i, f in enumerate(fields)}
    row[position["trigger"]] = "schedule"
    copy_sql = f"COPY {SyncRun._meta.db_table} ({', '.join(f.column for f in fields)}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(copy_sql) as copy:
        for fabric_id, status, at in runs:
            row[position["fabric_id"]], row[position["status"]] = fabric_id, status
            row[position["started_at"]] = row[position["finished_at"]] = at
            copy.write_row(row)
    return time.perf_counter() - started


def sync_rules() -> list[retention.RetentionRule]:
    return [rule for rule in retention.registered_rules() if rule.model is SyncRun]


def prune_ours(now: datetime) -> tuple[float, int, int]:
    """One tick, and more a minute apart while there is a backlog: (seconds, rows deleted, ticks)."""
    seconds, deleted, ticks = 0.0, 0, 0
    while True:
        started = time.perf_counter()
        metrics, errors = retention.prune(now, sync_rules())
        seconds += time.perf_counter() - started
        assert not errors, errors
        deleted, ticks, now = deleted + metrics["deleted"], ticks + 1, now + MINUTE
        tick_seconds.append(time.perf_counter() - started)
        if not metrics["backlog"]:
            return seconds, deleted, ticks


def prune_baseline(now: datetime) -> tuple[float, int, int]:
    started = time.perf_counter()
    deleted = SyncRun.objects.filter(started_at__lt=now - timedelta(days=KEEP_DAYS))._raw_delete(connection.alias)
    elapsed = time.perf_counter() - started
    tick_seconds.append(elapsed)
    return elapsed, deleted, 1


def simulate(prune, label: str) -> dict[str, object]:
    fabric_ids = create_fabrics()
    rng = random.Random(12)  # the same runs for both strategies
    timer = StatementTimer()
    tick_seconds.clear()
    rows_by_day: list[int] = []
    insert_seconds = prune_seconds = 0.0
    deleted = extra_ticks = 0
    with connection.execute_wrapper(timer):
        for hour in range(24 * DAYS):
            now = START + HOUR * hour
            syncing = fabric_ids if hour < 24 else [f for i, f in enumerate(fabric_ids) if i % 100]
            insert_seconds += insert_hour(syncing, now, rng)
            seconds, rows, ticks = prune(now + HOUR)
            prune_seconds += seconds
            deleted += rows
            extra_ticks += ticks - 1
            if (hour + 1) % 24 == 0:
                rows_by_day.append(SyncRun.objects.count())
                print(f"  {label}: day {len(rows_by_day)}: {rows_by_day[-1]:,} runs", file=sys.stderr)
    end = START + HOUR * 24 * DAYS
    result: dict[str, object] = {
        "rows_after_each_day": rows_by_day,
        "rows_per_fabric_at_end": round(rows_by_day[-1] / N, 1),
        "rows_deleted": deleted,
        "prune_seconds_per_tick_median": round(statistics.median(tick_seconds), 3),
        "prune_seconds_per_tick_max": round(max(tick_seconds), 3),
        "prune_seconds_total": round(prune_seconds, 1),
        "catch_up_ticks": extra_ticks,
        "delete_statements": len(timer.durations),
        "longest_delete_statement_seconds": round(max(timer.durations, default=0.0), 3),
        "insert_seconds_total": round(insert_seconds, 1),
        "fabrics_without_any_run": Fabric.objects.filter(name__startswith=PREFIX, runs__isnull=True).count(),
        "failures_of_the_last_day_kept": SyncRun.objects.filter(
            status=RunStatus.FAILED, started_at__gte=end - timedelta(days=KEEP_DAYS)
        ).count(),
    }
    Fabric.objects.filter(name__startswith=PREFIX).delete()
    return result


def main() -> None:
    refuse_foreign_fabrics()
    settings.RETENTION_DAYS = KEEP_DAYS
    ours = simulate(prune_ours, "retention rules")
    baseline = simulate(prune_baseline, "baseline")
    result = {
        "fabrics": N,
        "simulated_days": DAYS,
        "runs_per_day": N * 86400 // INTERVAL,
        "database": connection.vendor,
        "policy": {
            "failures_and_changes_days": KEEP_DAYS,
            "unchanged_per_fabric": settings.RETENTION_UNCHANGED_PER_FABRIC,
            "batch_size": settings.RETENTION_BATCH_SIZE,
            "max_rows_per_tick": settings.RETENTION_MAX_ROWS_PER_TICK,
        },
        "retention_rules": ours,
        f"baseline_delete_older_than_{KEEP_DAYS}_days": baseline,
    }
    print(json.dumps(result, indent=2))
    rows = ours["rows_after_each_day"]
    assert isinstance(rows, list)
    if len(rows) >= 3 and rows[-1] > rows[1] * 1.1:
        print("FAILED target: the table should stop growing after the first days", file=sys.stderr)
        sys.exit(1)
    if ours["fabrics_without_any_run"]:
        print("FAILED: retention left a fabric without its latest run", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
