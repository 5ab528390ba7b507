"""History retention (issue 12): what each rule keeps and prunes, the per-tick cap and
batches, one run per interval across ticks, and the counts in the tick summary.

History is generated with ``bulk_create`` (thousands of rows); every test states the
exact set of rows that must be left.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.db.models import OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from freezegun import freeze_time

from core import periodic, retention
from core.health import ComponentType, HealthStatus
from core.models import PeriodicStep
from core.retention import prune_history, retention_rule
from core.tick import StepFailed, run_tick
from resilience.models import ComponentHealth, HealingAttempt, HealingOutcome, HealthTransition
from scaling.decisions import ScaleDirection
from scaling.models import ScalingEvent, ScalingPolicy, ScalingRecommendation
from sync import retention as sync_retention
from sync.models import Fabric, RunStatus, SyncRun
from tests.factories import make_fabric

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=timezone.get_current_timezone())
MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
RULE_KEYS = {rule.name for rule in retention.registered_rules()}


@pytest.fixture(autouse=True)
def _policy(settings):
    settings.RETENTION_ENABLED = True
    settings.RETENTION_DAYS = 30
    settings.RETENTION_UNCHANGED_PER_FABRIC = 5
    settings.RETENTION_NO_CHANGE_PER_SERVICE = 100
    settings.RETENTION_INTERVAL_SECONDS = 3600
    settings.RETENTION_BATCH_SIZE = 500
    settings.RETENTION_MAX_ROWS_PER_TICK = 100_000
    settings.RETENTION_TIME_BUDGET_SECONDS = 15.0


def every(step: timedelta, count: int, ending: datetime) -> list[datetime]:
    """``count`` times ``step`` apart, the last one at ``ending``."""
    return [ending - step * (count - 1 - i) for i in range(count)]


def runs(fabric: Fabric, status: str, starts: Iterable[datetime]) -> list[int]:
    created = SyncRun.objects.bulk_create(
        (SyncRun(fabric=fabric, trigger="schedule", status=status, started_at=t, finished_at=t) for t in starts),
        batch_size=2000,
    )
    return [run.pk for run in created]


def events(service: str, starts: Iterable[datetime], action: str = ScaleDirection.NONE, **fields) -> list[int]:
    created = ScalingEvent.objects.bulk_create(
        (
            ScalingEvent(
                service=service, action=action, from_instances=1, desired_instances=1, to_instances=1,
                reason="test", created_at=t, **{"rule": "test", **fields},
            )
            for t in starts
        ),
        batch_size=2000,
    )  # fmt: skip
    return [event.pk for event in created]


def left(model) -> set[int]:
    return set(model.objects.values_list("pk", flat=True))


def fabric(**fields) -> Fabric:
    return make_fabric(sync_enabled=False, **fields)  # no tick ever dispatches it


def due_gate(at: datetime = NOW) -> None:
    PeriodicStep.objects.update_or_create(name=retention.STEP_NAME, defaults={"next_run_at": at})


# --- Sync runs --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_unchanged_runs_beyond_the_newest_k_of_each_fabric_are_pruned_whatever_their_age():
    busy, young, old_only = fabric(), fabric(), fabric()
    # 2,000 unchanged checks and a few skipped ones: only the newest 5 routine runs stay.
    unchanged = runs(busy, RunStatus.UNCHANGED, every(5 * MINUTE, 2000, NOW - 2 * HOUR))
    skipped = runs(busy, RunStatus.SKIPPED, every(MINUTE, 3, NOW - 90 * MINUTE))
    failure = runs(busy, RunStatus.FAILED, [NOW - 3 * DAY])  # not routine: kept for the retention days
    recent = runs(young, RunStatus.UNCHANGED, every(MINUTE, 300, NOW))
    few_and_old = runs(old_only, RunStatus.UNCHANGED, every(DAY, 3, NOW - 60 * DAY))

    metrics, errors = retention.prune(NOW)

    assert errors == {}
    assert left(SyncRun) == set(unchanged[-2:] + skipped + failure + recent[-5:] + few_and_old)
    assert metrics["sync_runs_unchanged"] == 1998 + 295
    assert metrics["deleted"] == metrics["sync_runs_unchanged"]


@pytest.mark.django_db
def test_the_rules_read_fabrics_range_by_range_and_stop_reading_once_they_have_enough(monkeypatch):
    monkeypatch.setattr(sync_retention, "FABRIC_CHUNK", 2)
    fabrics = [fabric() for _ in range(6)]
    newest = {f.pk: runs(f, RunStatus.UNCHANGED, every(5 * MINUTE, 20, NOW - HOUR))[-5:] for f in fabrics}
    with CaptureQueriesContext(connection) as queries:
        some = sync_retention.unchanged_beyond_the_newest(NOW, 20)
    assert len(some) == 20
    first_range = {fabrics[0].pk, fabrics[1].pk}
    assert set(SyncRun.objects.filter(pk__in=some).values_list("fabric_id", flat=True)) == first_range
    assert len(queries) == 2  # the fabric ids, then the first range only: it already had 20

    everything = sync_retention.unchanged_beyond_the_newest(NOW, 1000)
    SyncRun.objects.filter(pk__in=everything).delete()
    assert len(everything) == 6 * 15
    assert left(SyncRun) == {pk for kept in newest.values() for pk in kept}


@pytest.mark.django_db
def test_failures_and_changes_are_kept_for_the_retention_days_and_then_pruned():
    f = fabric()
    failures = runs(f, RunStatus.FAILED, every(HOUR, 24 * 40, NOW - 12 * HOUR))  # 40 days, hourly
    retries = runs(f, RunStatus.RETRYING, every(DAY, 40, NOW - 13 * HOUR))
    lost = runs(f, RunStatus.LOST, every(DAY, 40, NOW - 14 * HOUR))
    successes = runs(f, RunStatus.SUCCESS, every(DAY, 40, NOW - 11 * HOUR))
    at_cutoff = runs(f, RunStatus.FAILED, [NOW - 30 * DAY])
    Fabric.objects.filter(pk=f.pk).update(last_sync=NOW - 11 * HOUR)
    everything = dict(SyncRun.objects.values_list("pk", "started_at"))
    assert len(everything) == len(failures + retries + lost + successes + at_cutoff) > 1000
    within = {pk for pk, started in everything.items() if started >= NOW - 30 * DAY}

    metrics, _ = retention.prune(NOW)

    assert left(SyncRun) == within
    assert set(at_cutoff) <= within  # the cutoff itself is still inside the retention
    assert metrics["sync_runs_expired"] == len(everything) - len(within) == 251 + 3 * 10


@pytest.mark.django_db
def test_the_latest_run_the_latest_success_a_running_run_and_the_first_failure_of_a_streak_are_never_pruned():
    f = fabric()
    old_success = runs(f, RunStatus.SUCCESS, [NOW - 120 * DAY])
    failed_before = runs(f, RunStatus.FAILED, [NOW - 100 * DAY])
    last_success = runs(f, RunStatus.SUCCESS, [NOW - 90 * DAY])
    first_failure = runs(f, RunStatus.FAILED, [NOW - 89 * DAY])
    streak = runs(f, RunStatus.FAILED, every(DAY, 40, NOW - 40 * DAY))
    running = runs(f, RunStatus.RUNNING, [NOW - 35 * DAY])
    latest = runs(f, RunStatus.LOST, [NOW - 31 * DAY])
    Fabric.objects.filter(pk=f.pk).update(last_sync=NOW - 90 * DAY)
    # Never synced: its streak starts when it was created.
    never = fabric()
    Fabric.objects.filter(pk=never.pk).update(created_at=NOW - 200 * DAY)
    before_created = runs(never, RunStatus.FAILED, [NOW - 201 * DAY])
    first_of_never = runs(never, RunStatus.FAILED, [NOW - 150 * DAY])
    later_of_never = runs(never, RunStatus.FAILED, every(DAY, 50, NOW - 60 * DAY))
    recent_of_never = runs(never, RunStatus.FAILED, [NOW - DAY])
    failing_since_before = failing_since()

    metrics, _ = retention.prune(NOW)

    assert left(SyncRun) == set(last_success + first_failure + running + latest + first_of_never + recent_of_never)
    assert metrics["sync_runs_expired"] == 2 + len(streak) + 1 + len(later_of_never)
    assert len(old_success + failed_before + before_created) == 3
    assert failing_since() == failing_since_before  # the run that began each streak is still there


def failing_since() -> dict[str, datetime | None]:
    """Per fabric, the run that began its streak: the first failure since its last success."""
    first_failure = (
        SyncRun.objects.filter(
            fabric=OuterRef("pk"),
            status__in=sync_retention.FAILED,
            started_at__gte=Coalesce(OuterRef("last_sync"), OuterRef("created_at")),
        )
        .order_by("started_at")
        .values("started_at")[:1]
    )
    return dict(Fabric.objects.annotate(since=Subquery(first_failure)).values_list("name", "since"))


# --- Scaling ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_no_change_decisions_beyond_the_newest_k_per_service_are_pruned_whatever_their_age():
    web = events("web", every(MINUTE, 3000, NOW - MINUTE))
    # Few, and old: kept, because this rule counts rather than ages.
    quiet = events("quiet", every(DAY, 40, NOW - 50 * DAY))
    metrics, _ = retention.prune(NOW)
    assert left(ScalingEvent) == set(web[-100:] + quiet)
    assert metrics["scaling_events_no_change"] == 2900


@pytest.mark.django_db
def test_old_scaling_actions_and_failures_are_pruned_except_the_cooldown_start_and_the_last_decision():
    older_live = events("api", [NOW - 60 * DAY], ScaleDirection.UP)
    last_live = events("api", [NOW - 50 * DAY], ScaleDirection.UP)
    last_dry_run = events("api", [NOW - 45 * DAY], ScaleDirection.DOWN, dry_run=True)
    failed = events("api", every(HOUR, 500, NOW - 31 * DAY), ScaleDirection.UP, success=False)
    unreachable = events("api", [NOW - 35 * DAY], rule="engine_unreachable", success=False)
    recent_failure = events("api", [NOW - 10 * DAY], ScaleDirection.UP, success=False)
    # A service that stopped long ago: its last decision (a failure) stays.
    gone_before = events("gone", [NOW - 80 * DAY], ScaleDirection.DOWN, success=False)
    gone_last = events("gone", [NOW - 70 * DAY], ScaleDirection.DOWN, success=False)

    metrics, _ = retention.prune(NOW)

    assert left(ScalingEvent) == set(last_live + last_dry_run + recent_failure + gone_last)
    assert metrics["scaling_events_expired"] == len(older_live + failed + unreachable + gone_before)


@pytest.mark.django_db
def test_recommendations_older_than_every_stabilisation_window_are_pruned():
    policy = ScalingPolicy.objects.create(
        service="web", image="nginx:1", target_cpu_percent=50, scale_down_stabilization_seconds=2 * 3600
    )
    times = every(MINUTE, 600, NOW)  # ten hours
    ScalingRecommendation.objects.bulk_create(
        ScalingRecommendation(policy=policy, recommended_instances=1, recorded_at=t) for t in times
    )
    metrics, _ = retention.prune(NOW)
    kept = ScalingRecommendation.objects.values_list("recorded_at", flat=True)
    assert min(kept) == NOW - 2 * HOUR
    assert metrics["scaling_recommendations_expired"] == 600 - 121


# --- Health -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_old_health_transitions_and_healing_attempts_are_pruned_except_the_latest_and_running_ones():
    db = ComponentHealth.objects.create(name="database", component_type=ComponentType.DATABASE)
    cache = ComponentHealth.objects.create(name="cache", component_type=ComponentType.CACHE)
    healthy, unhealthy = HealthStatus.HEALTHY, HealthStatus.UNHEALTHY
    flaps = HealthTransition.objects.bulk_create(
        HealthTransition(component=db, from_status=healthy, to_status=unhealthy, at=t)
        for t in every(HOUR, 24 * 60, NOW - HOUR)  # 60 days of hourly flapping
    )
    cache_only = HealthTransition.objects.create(
        component=cache, from_status=unhealthy, to_status=healthy, at=NOW - 90 * DAY
    )

    def attempt(component: ComponentHealth, at: datetime, outcome: str) -> int:
        row = HealingAttempt.objects.create(
            component=component, action="restart", attempt=1, backoff_seconds=10, started_at=at, outcome=outcome
        )
        return row.pk

    healed_long_ago = attempt(db, NOW - 50 * DAY, HealingOutcome.SUCCEEDED)
    still_running = attempt(db, NOW - 40 * DAY, HealingOutcome.RUNNING)
    last_of_db = attempt(db, NOW - 35 * DAY, HealingOutcome.FAILED)
    last_of_cache = attempt(cache, NOW - 90 * DAY, HealingOutcome.NOT_HEALED)

    metrics, _ = retention.prune(NOW)

    cutoff = NOW - 30 * DAY
    assert left(HealthTransition) == {t.pk for t in flaps if t.at >= cutoff} | {cache_only.pk}
    assert metrics["health_transitions_expired"] == sum(1 for t in flaps if t.at < cutoff)
    assert left(HealingAttempt) == {still_running, last_of_db, last_of_cache}
    assert metrics["healing_attempts_expired"] == 1
    assert healed_long_ago not in left(HealingAttempt)


# --- The step: cap, batches, interval, summary ------------------------------------------------


@pytest.mark.django_db
def test_a_tick_deletes_at_most_the_cap_in_bounded_statements_and_the_next_ticks_catch_up(settings):
    settings.RETENTION_MAX_ROWS_PER_TICK = 1200
    f = fabric()
    runs(f, RunStatus.UNCHANGED, every(5 * MINUTE, 5000, NOW - 2 * HOUR))  # 4,995 to prune
    due_gate()
    with freeze_time(NOW) as clock:
        with CaptureQueriesContext(connection) as queries:
            first = prune_history(timezone.now())
        assert deleted_per_statement(queries) == [500, 500, 200]
        assert (first["ran"], first["sync_runs_unchanged"], first["deleted"], first["backlog"]) == (1, 1200, 1200, 1)
        assert SyncRun.objects.count() == 5000 - 1200

        deleted = [first["deleted"]]
        while True:  # one tick a minute: a backlog does not wait for the interval
            clock.tick(MINUTE)
            metrics = prune_history(timezone.now())
            assert metrics["ran"] == 1
            deleted.append(metrics["deleted"])
            if not metrics["backlog"]:
                break
        assert deleted == [1200, 1200, 1200, 1200, 195]
        assert SyncRun.objects.count() == 5

        clock.tick(MINUTE)
        assert prune_history(timezone.now()) == {"ran": 0}  # caught up: back to once per interval


@pytest.mark.django_db
def test_a_rule_that_fills_the_cap_leaves_a_backlog_even_as_the_last_rule(settings):
    settings.RETENTION_MAX_ROWS_PER_TICK = 100
    runs(fabric(), RunStatus.UNCHANGED, every(5 * MINUTE, 250, NOW - 2 * HOUR))
    only = [rule for rule in retention.registered_rules() if rule.name == "sync_runs_unchanged"]
    assert [(m["sync_runs_unchanged"], m["backlog"]) for m in (retention.prune(NOW, only)[0] for _ in range(3))] == [
        (100, 1),
        (100, 1),
        (45, 0),
    ]


@pytest.mark.django_db
def test_every_delete_statement_removes_at_most_the_batch_size(settings):
    settings.RETENTION_BATCH_SIZE = 700
    runs(fabric(), RunStatus.UNCHANGED, every(5 * MINUTE, 3000, NOW - 2 * HOUR))
    with CaptureQueriesContext(connection) as queries:
        metrics, _ = retention.prune(NOW)
    assert metrics["sync_runs_unchanged"] == 2995
    assert deleted_per_statement(queries) == [700, 700, 700, 700, 195]


def deleted_per_statement(queries: CaptureQueriesContext) -> list[int]:
    """How many ids each captured ``DELETE ... WHERE id IN (...)`` named."""
    sizes = []
    for query in queries.captured_queries:
        if query["sql"].startswith("DELETE"):
            ids = re.search(r"IN \(([^)]*)\)", query["sql"])
            assert ids is not None, query["sql"]
            sizes.append(len(ids.group(1).split(",")))
    return sizes


@pytest.mark.django_db
def test_a_spent_time_budget_stops_after_one_statement_and_leaves_a_backlog(settings):
    settings.RETENTION_TIME_BUDGET_SECONDS = 0
    runs(fabric(), RunStatus.UNCHANGED, every(5 * MINUTE, 2000, NOW - 2 * HOUR))
    with freeze_time(NOW):
        metrics, _ = retention.prune(NOW)
    assert (metrics["sync_runs_unchanged"], metrics["backlog"]) == (500, 1)


@pytest.mark.django_db
def test_the_step_runs_once_per_interval_however_many_ticks_come():
    f = fabric()
    with freeze_time(NOW) as clock:
        # The first tick that sees the step schedules it an interval later: no work at start-up.
        assert prune_history(timezone.now()) == {"ran": 0}
        runs(f, RunStatus.UNCHANGED, every(5 * MINUTE, 100, NOW - 2 * HOUR))
        clock.tick(MINUTE)
        assert prune_history(timezone.now()) == {"ran": 0}
        clock.move_to(NOW + HOUR)
        assert prune_history(timezone.now())["sync_runs_unchanged"] == 95
        # A second tick at the same moment (another host, a manual tick) does not run it again.
        assert prune_history(timezone.now()) == {"ran": 0}
        runs(f, RunStatus.UNCHANGED, every(MINUTE, 10, NOW - 61 * MINUTE))
        clock.tick(59 * MINUTE)
        assert prune_history(timezone.now()) == {"ran": 0}
        clock.tick(MINUTE)
        assert prune_history(timezone.now())["sync_runs_unchanged"] == 10
    gate = PeriodicStep.objects.get(name=retention.STEP_NAME)
    assert gate.next_run_at == NOW + 3 * HOUR
    assert gate.last_metrics["sync_runs_unchanged"] == 10


@pytest.mark.django_db(transaction=True)
def test_of_two_hosts_claiming_at_once_exactly_one_runs_the_step():
    due_gate()
    barrier = threading.Barrier(2)
    won: list[bool] = []

    def host() -> None:
        try:
            barrier.wait()
            won.append(periodic.claim(retention.STEP_NAME, NOW, 3600))
        finally:
            connection.close()

    threads = [threading.Thread(target=host) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [False, True]


@pytest.mark.django_db
def test_the_tick_summary_reports_what_the_step_pruned():
    now = timezone.now()
    f = fabric()
    runs(f, RunStatus.UNCHANGED, every(5 * MINUTE, 1000, now - 2 * HOUR))
    runs(f, RunStatus.FAILED, every(DAY, 10, now - 31 * DAY))
    events("web", every(MINUTE, 150, now))
    due_gate(now)

    summary = run_tick(now)

    assert summary["steps"]["retention"] == "ok"
    reported = summary["metrics"]["retention"]
    assert set(reported) == {"ran", "deleted", "backlog", "duration_ms", *RULE_KEYS}
    assert (reported["ran"], reported["backlog"]) == (1, 0)
    assert (reported["sync_runs_unchanged"], reported["sync_runs_expired"]) == (995, 10)
    assert reported["scaling_events_no_change"] == 50
    assert reported["deleted"] == 995 + 10 + 50
    assert PeriodicStep.objects.get(name=retention.STEP_NAME).last_metrics == reported


@pytest.mark.django_db
def test_a_failing_rule_fails_the_step_after_the_other_rules_pruned():
    runs(fabric(), RunStatus.UNCHANGED, every(5 * MINUTE, 20, NOW - 2 * HOUR))
    due_gate()

    @retention_rule("zz_broken", SyncRun, order=15)
    def broken(now, limit):
        raise RuntimeError("no such table")

    try:
        with pytest.raises(StepFailed, match="zz_broken: RuntimeError: no such table") as failed:
            prune_history(NOW)
    finally:
        retention._rules.pop("zz_broken")
    assert failed.value.metrics["sync_runs_unchanged"] == 15
    assert failed.value.metrics["zz_broken"] == 0


@pytest.mark.django_db
def test_nothing_is_pruned_when_retention_is_disabled(settings):
    settings.RETENTION_ENABLED = False
    runs(fabric(), RunStatus.UNCHANGED, every(5 * MINUTE, 20, NOW - 2 * HOUR))
    due_gate()
    assert prune_history(NOW) == {"ran": 0}
    assert SyncRun.objects.count() == 20
