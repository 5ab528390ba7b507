"""Which sync runs may be deleted (rules for ``core.retention``; docs/architecture.md).

1. Failures and changes (FAILED, RETRYING, LOST, SUCCESS) are kept ``RETENTION_DAYS``.
2. Routine checks (UNCHANGED, SKIPPED) are kept by count: the newest
   ``RETENTION_UNCHANGED_PER_FABRIC`` of each fabric, whatever their age (a system check
   warns when that is less than an hour of a 60 s fabric, the window /metrics reads).
3. Never deleted, however old: a RUNNING run; the latest run of a fabric (what its
   status says); its latest SUCCESS (the run that brought its current commit); and the
   first failure since its last success (the run that began the streak
   ``Fabric.failing_since`` dates).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from itertools import groupby
from operator import itemgetter
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Warning, register
from django.db.models import F, OuterRef, QuerySet, Subquery, Window
from django.db.models.functions import Coalesce, RowNumber

from core.retention import retention_rule
from sync.models import Fabric, RunStatus, SyncRun
from sync.prometheus import DURATION_WINDOW

ROUTINE = (RunStatus.UNCHANGED, RunStatus.SKIPPED)
# The failed statuses: the first of a streak is the run that began it.
FAILED = (RunStatus.FAILED, RunStatus.RETRYING, RunStatus.LOST)
# Fabrics per range: each rule reads one range of fabrics at a time.
FABRIC_CHUNK = 500
SHORTEST_INTERVAL = 60  # Fabric.sync_interval's minimum


@register()
def check_unchanged_runs_kept(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Fewer routine runs than a 60 s fabric makes in an hour would thin out the durations
    /metrics reports (it reads the runs of the last hour)."""
    hour = int(DURATION_WINDOW.total_seconds()) // SHORTEST_INTERVAL
    if hour <= settings.RETENTION_UNCHANGED_PER_FABRIC:
        return []
    return [
        Warning(
            f"RETENTION_UNCHANGED_PER_FABRIC={settings.RETENTION_UNCHANGED_PER_FABRIC} keeps less than an hour "
            f"of a {SHORTEST_INTERVAL} s fabric's runs: /metrics would under-report their sync durations.",
            hint=f"Keep at least {hour}.",
            id="sync.W001",
        )
    ]


def _fabric_ranges() -> Iterator[tuple[int, int]]:
    """Fabric ids as ``(after, up_to]`` ranges of FABRIC_CHUNK fabrics each."""
    pks = list(Fabric.objects.order_by("pk").values_list("pk", flat=True))
    for start in range(0, len(pks), FABRIC_CHUNK):
        yield (pks[start - 1] if start else 0), pks[min(start + FABRIC_CHUNK, len(pks)) - 1]


def _first(runs: QuerySet[SyncRun], *order: str) -> Subquery:
    """The ``started_at`` of the first of ``runs`` of the outer fabric, in ``order``."""
    return Subquery(runs.filter(fabric_id=OuterRef("pk")).order_by(*order).values("started_at")[:1])


@retention_rule("sync_runs_expired", SyncRun, order=10)
def expired_runs(now: datetime, limit: int) -> list[int]:
    """Rule 1 with the exceptions of rule 3: failures and changes older than the retention.

    Per range of fabrics, queries that no table statistics can turn into scans of the
    whole table: each fabric's latest run and where its failure streak starts (an index
    probe each), the range's old failures and changes (a range of syncrun_notable_idx),
    and, for the fabrics among them with an old success, which have a newer one. Among
    those, the latest success (unless a newer one exists), the first failure of the
    streak, the latest run and a RUNNING run stay, and so does any run tied with a
    kept one; the rest go.
    """
    cutoff = now - timedelta(days=settings.RETENTION_DAYS)
    notable = SyncRun.objects.exclude(status__in=ROUTINE).order_by()  # exactly the rows of syncrun_notable_idx
    ids: list[int] = []
    for low, high in _fabric_ranges():
        fabrics = Fabric.objects.filter(pk__gt=low, pk__lte=high).order_by()
        latest_and_streak = {
            fabric: (latest, streak_start)
            for fabric, latest, streak_start in fabrics.annotate(
                latest=_first(SyncRun.objects.all(), "-started_at"), streak_start=Coalesce("last_sync", "created_at")
            ).values_list("pk", "latest", "streak_start")
        }
        old = notable.filter(fabric_id__gt=low, fabric_id__lte=high, started_at__lt=cutoff)
        old_runs = list(old.order_by("fabric_id", "started_at").values_list("fabric_id", "pk", "status", "started_at"))
        with_old_success = {fabric for fabric, _, status, _ in old_runs if status == RunStatus.SUCCESS}
        newer_success = set(
            notable.filter(fabric_id__in=with_old_success, status=RunStatus.SUCCESS, started_at__gte=cutoff)
            .values_list("fabric_id", flat=True)
            .distinct()
            if with_old_success
            else []
        )
        for fabric, rows in groupby(old_runs, key=itemgetter(0)):
            latest, streak_start = latest_and_streak[fabric]
            runs = [(pk, status, started) for _, pk, status, started in rows]
            kept = {latest} | {started for _, status, started in runs if status == RunStatus.RUNNING}
            successes = [started for _, status, started in runs if status == RunStatus.SUCCESS]
            if successes and fabric not in newer_success:
                kept.add(successes[-1])
            streak = [started for _, status, started in runs if status in FAILED and started >= streak_start]
            kept.update(streak[:1])  # an old first failure of the streak is its first failure
            ids += [pk for pk, _, started in runs if started not in kept][: limit - len(ids)]
            if len(ids) >= limit:
                return ids
    return ids


@retention_rule("sync_runs_unchanged", SyncRun, order=20)
def unchanged_beyond_the_newest(now: datetime, limit: int) -> list[int]:
    """Rule 2: routine runs beyond the newest K of their fabric.

    Per range of fabrics, one query numbers the range's routine runs newest first per
    fabric, reading syncrun_routine_idx in its own order (no sort), and returns those
    numbered past K: it stops once it has ``limit``. The cost follows the routine runs
    of the fabrics it reads, never the whole table at once.
    """
    keep = max(1, settings.RETENTION_UNCHANGED_PER_FABRIC)
    routine = SyncRun.objects.filter(status__in=ROUTINE).order_by()  # exactly the rows of syncrun_routine_idx
    ids: list[int] = []
    for low, high in _fabric_ranges():
        ranked = routine.filter(fabric_id__gt=low, fabric_id__lte=high).annotate(
            newest_first=Window(RowNumber(), partition_by=[F("fabric_id")], order_by=F("started_at").desc())
        )
        ids += ranked.filter(newest_first__gt=keep).values_list("pk", flat=True)[: limit - len(ids)]
        if len(ids) >= limit:
            break
    return ids
