"""The overview's charts: SVG rendered on the server by pygal from the stored history.

Each chart is drawn from rows real work wrote (``SyncRun``, ``ScalingEvent``,
``HealthTransition``), over the last ``CHART_HOURS`` and at most a bounded number of
the newest rows (read newest first along the primary key, so the cost does not grow
with the history). Points are grouped into time buckets: the smallest of
``BUCKET_SECONDS`` that gives at most ``MAX_BUCKETS`` of them over the span shown.

1. Sync lag and duration: for each finished run, the lag is the time since that
   fabric's previous success among the runs read (for a success, the gap it closed;
   for a failure, how long the fabric has gone without one). Per bucket: the largest
   lag and the mean duration.
2. Sync outcomes: runs per bucket (by start) and outcome, stacked.
3. Instances per service: the instances after the last decision in each bucket, with
   each scale up or down marked at the moment it happened.
4. Health timeline: each component's status as a step line, one level per status,
   from its transitions (components not healthy now, then the most changeable first).

pygal's own script (tooltips loaded from its website) is left out: the page loads
nothing from elsewhere, and the values stay readable in each point's ``<desc>``.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from copy import copy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pygal
from django.utils.safestring import SafeString, mark_safe
from pygal.style import Style

from core.health import HealthStatus
from resilience.models import ComponentHealth, HealthTransition
from scaling.decisions import ScaleDirection
from scaling.models import ScalingEvent
from sync.models import RunStatus, SyncRun

CHART_HOURS = 24
RUN_LIMIT = 2000
EVENT_LIMIT = 2000
TRANSITION_LIMIT = 1000
MARKER_LIMIT = 200
TIMELINE_COMPONENTS = 12
MAX_BUCKETS = 48
BUCKET_SECONDS = (60, 300, 900, 1800, 3600)
SUCCESSES = (RunStatus.SUCCESS, RunStatus.UNCHANGED)
# A step line needs a number per status; stale shows as unknown (the check says nothing).
LEVELS = {HealthStatus.UNHEALTHY: 0, HealthStatus.UNKNOWN: 1, HealthStatus.DEGRADED: 2, HealthStatus.HEALTHY: 3}
LEVEL_NAMES = {level: str(status.label) for status, level in LEVELS.items()}
OUTCOME_COLOURS = {
    RunStatus.SUCCESS: "#15803d",
    RunStatus.UNCHANGED: "#86efac",
    RunStatus.RUNNING: "#2563eb",
    RunStatus.RETRYING: "#f59e0b",
    RunStatus.SKIPPED: "#a16207",
    RunStatus.FAILED: "#b91c1c",
    RunStatus.LOST: "#7f1d1d",
}
STYLE = Style(
    background="transparent",
    plot_background="#ffffff",
    foreground="#333333",
    foreground_strong="#111111",
    foreground_subtle="#666666",
    colors=("#2563eb", "#b45309", "#15803d", "#b91c1c", "#6d28d9", "#0f766e", "#be185d", "#4d7c0f"),
    font_family="-apple-system, 'Segoe UI', system-ui, Roboto, sans-serif",
    title_font_size=14,
    legend_font_size=11,
    label_font_size=10,
    major_label_font_size=10,
)
_SCRIPT = re.compile(r"<script\b.*?</script>", re.S)


@dataclass(frozen=True)
class Chart:
    key: str
    title: str
    svg: SafeString
    points: int  # data points drawn (0: the chart says "No data")


def bucket_seconds(start: datetime, end: datetime) -> int:
    span = max((end - start).total_seconds(), 1.0)
    return next((size for size in BUCKET_SECONDS if span / size <= MAX_BUCKETS), BUCKET_SECONDS[-1])


def bucket_of(moment: datetime, size: int) -> datetime:
    seconds = int(moment.timestamp())
    return datetime.fromtimestamp(seconds - seconds % size, tz=UTC)


def _buckets(start: datetime, end: datetime, size: int) -> list[datetime]:
    first, last = bucket_of(start, size), bucket_of(end, size)
    return [first + timedelta(seconds=size * i) for i in range(int((last - first).total_seconds()) // size + 1)]


def _label(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M")


def _config(title: str, **options: Any) -> dict[str, Any]:
    return {
        "title": title,
        "js": [],
        "disable_xml_declaration": True,
        "style": STYLE,
        "width": 800,
        "height": 280,
        "explicit_size": False,
        "legend_at_bottom": True,
        "legend_at_bottom_columns": 3,
        "truncate_legend": 32,
        "show_y_guides": True,
        "dots_size": 3,
        "no_data_text": "No data yet",
        "x_value_formatter": _label,
        **options,
    }


def _svg(chart: Any) -> SafeString:
    # pygal escapes every label and value (ElementTree); only its script element is dropped.
    return mark_safe(_SCRIPT.sub("", chart.render(is_unicode=True)))  # noqa: S308


# --- 1 and 2: sync runs ---------------------------------------------------------------


@dataclass(frozen=True)
class RunRow:
    fabric_id: int
    status: str
    started_at: datetime
    finished_at: datetime | None
    duration_ms: int | None


def recent_runs(now: datetime) -> list[RunRow]:
    since = now - timedelta(hours=CHART_HOURS)
    rows = SyncRun.objects.order_by("-id").values_list(
        "fabric_id", "status", "started_at", "finished_at", "duration_ms"
    )[:RUN_LIMIT]
    return sorted((RunRow(*row) for row in rows if row[2] >= since), key=lambda r: r.started_at)


def lag_points(runs: Iterable[RunRow]) -> list[tuple[datetime, float]]:
    """(finished_at, seconds since the fabric's previous success) for each finished run that has one."""
    last_success: dict[int, datetime] = {}
    points = []
    for run in sorted((r for r in runs if r.finished_at is not None), key=lambda r: r.finished_at or r.started_at):
        assert run.finished_at is not None
        if (previous := last_success.get(run.fabric_id)) is not None:
            points.append((run.finished_at, (run.finished_at - previous).total_seconds()))
        if run.status in SUCCESSES:
            last_success[run.fabric_id] = run.finished_at
    return points


def sync_lag_chart(runs: list[RunRow], now: datetime) -> Chart:
    lags = lag_points(runs)
    durations = [(r.finished_at, r.duration_ms / 1000) for r in runs if r.finished_at and r.duration_ms is not None]
    chart = pygal.DateTimeLine(**_config("Sync lag and duration (seconds)", x_label_rotation=0))
    drawn = 0
    if lags or durations:
        size = bucket_seconds(min(t for t, _ in [*lags, *durations]), now)
        worst: dict[datetime, float] = {}
        for at, lag in lags:
            key = bucket_of(at, size)
            worst[key] = max(worst.get(key, 0.0), lag)
        total: dict[datetime, list[float]] = defaultdict(list)
        for at, seconds in durations:
            total[bucket_of(at, size)].append(seconds)
        chart.add("max lag since previous success", [(k, round(v, 1)) for k, v in sorted(worst.items())])
        chart.add("mean duration", [(k, round(sum(v) / len(v), 2)) for k, v in sorted(total.items())])
        drawn = len(worst) + len(total)
    return Chart("sync-lag", "Sync lag and duration", _svg(chart), drawn)


def sync_outcomes_chart(runs: list[RunRow], now: datetime) -> Chart:
    counts: Counter[tuple[datetime, str]] = Counter()
    buckets: list[datetime] = []
    if runs:
        size = bucket_seconds(runs[0].started_at, now)
        buckets = _buckets(runs[0].started_at, now, size)
        counts = Counter((bucket_of(r.started_at, size), r.status) for r in runs)
    present = [status for status in RunStatus if any(key[1] == status.value for key in counts)]
    # One colour per outcome, in the order the series are added (green success, red failure).
    style = copy(STYLE)
    style.colors = tuple(OUTCOME_COLOURS.get(status, "#6b7280") for status in present) or STYLE.colors
    chart = pygal.StackedBar(
        **_config("Sync runs by outcome", x_label_rotation=30, show_minor_x_labels=False, style=style)
    )
    if buckets:
        chart.x_labels = [_label(b) for b in buckets]
        chart.x_labels_major = chart.x_labels[:: max(1, len(buckets) // 12)]
    for status in present:
        chart.add(str(status.label), [counts.get((b, status.value)) or None for b in buckets])
    drawn = len(counts)
    return Chart("sync-outcomes", "Sync outcomes", _svg(chart), drawn)


# --- 3: instances per service ----------------------------------------------------------


def instances_chart(now: datetime) -> Chart:
    since = now - timedelta(hours=CHART_HOURS)
    rows = ScalingEvent.objects.order_by("-id").values_list(
        "service", "action", "to_instances", "success", "created_at"
    )[:EVENT_LIMIT]
    events = sorted((row for row in rows if row[4] >= since), key=lambda row: row[4])
    chart = pygal.DateTimeLine(**_config("Instances per service (markers: scale actions)"))
    drawn = 0
    if events:
        size = bucket_seconds(events[0][4], now)
        per_service: dict[str, dict[datetime, int]] = defaultdict(dict)
        for service, _action, to_instances, _ok, at in events:
            per_service[service][bucket_of(at, size)] = to_instances  # the last decision of the bucket
        for service, points in sorted(per_service.items()):
            chart.add(service, sorted(points.items()))
            drawn += len(points)
        for action, label in ((ScaleDirection.UP, "scaled up"), (ScaleDirection.DOWN, "scaled down")):
            marks = [(at, to) for service, act, to, ok, at in events if act == action and ok][-MARKER_LIMIT:]
            if marks:
                chart.add(label, marks, stroke=False, dots_size=6)
                drawn += len(marks)
    return Chart("instances", "Instances per service", _svg(chart), drawn)


# --- 4: health timeline ----------------------------------------------------------------


def health_timeline_chart(now: datetime) -> Chart:
    since = now - timedelta(hours=CHART_HOURS)
    rows = list(
        HealthTransition.objects.filter(at__gte=since)
        .order_by("-at", "-id")
        .values_list("component_id", "from_status", "to_status", "at")[:TRANSITION_LIMIT]
    )
    by_component: dict[int, list[tuple[str, str, datetime]]] = defaultdict(list)
    for component_id, before, after, at in reversed(rows):
        by_component[component_id].append((before, after, at))
    components = {c.pk: c for c in ComponentHealth.objects.filter(pk__in=by_component).only("name", "status")}
    chosen = sorted(
        components.values(),
        key=lambda c: (c.status == HealthStatus.HEALTHY, -len(by_component[c.pk]), c.name),
    )[:TIMELINE_COMPONENTS]
    chart = pygal.DateTimeLine(
        **_config(
            "Health status per component",
            range=(0, 3),
            value_formatter=lambda level: LEVEL_NAMES.get(level, ""),
            # pygal cannot place fixed labels on an empty chart.
            **({"y_labels": sorted(LEVELS.values())} if chosen else {}),
        )
    )
    # The line starts a little before the first transition shown, not a day back.
    first_at = min((by_component[c.pk][0][2] for c in chosen), default=now)
    start = max(since, first_at - max((now - first_at) / 10, timedelta(minutes=1)))
    drawn = 0
    for component in sorted(chosen, key=lambda c: c.name):
        transitions = by_component[component.pk]
        first_from = transitions[0][0]
        points: list[Any] = [{"value": (start, LEVELS[HealthStatus(first_from)]), "node": {"r": 0}}]
        for before, after, at in transitions:
            points.append({"value": (at, LEVELS[HealthStatus(before)]), "node": {"r": 0}})
            points.append((at, LEVELS[HealthStatus(after)]))  # the transition itself: a dot
        points.append({"value": (now, LEVELS[HealthStatus(component.status)]), "node": {"r": 0}})
        chart.add(component.name, points)
        drawn += len(transitions)
    return Chart("health", "Health timeline", _svg(chart), drawn)


def all_charts(now: datetime) -> list[Chart]:
    runs = recent_runs(now)
    return [sync_lag_chart(runs, now), sync_outcomes_chart(runs, now), instances_chart(now), health_timeline_chart(now)]
