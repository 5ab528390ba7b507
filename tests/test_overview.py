"""The admin's landing page (project/overview): each section, computed when requested."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from freezegun import freeze_time

from core.breaker import CircuitBreaker
from core.health import HealthCheckResult, HealthStatus
from core.tick import LAST_TICK_CACHE_KEY
from project.overview import workers
from project.tasks import MASTER_TASK_NAME
from resilience import verdict
from resilience.models import ComponentHealth, ComponentType, HealthTransition
from resilience.tracking import record_results
from scaling.models import ScalingEvent, ScalingPolicy
from sync import leases
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from sync.runner import run_sync
from tests.factories import make_fabric

pytestmark = pytest.mark.django_db

TICK = timedelta(seconds=settings.TICK_SECONDS)
INDEX = "/admin/"
BEAT_CHANGELIST = "/admin/django_celery_beat/periodictask/"


@pytest.fixture
def tick_at() -> Iterator[Callable[[datetime], None]]:
    """Set when the last tick ran (core.tick's summary in the cache); the session's is put back after."""
    before = cache.get(LAST_TICK_CACHE_KEY)
    cache.delete_many([verdict.VERDICT_KEY, verdict.VERDICT_LOCK_KEY])

    def set_tick(moment: datetime, errors: dict[str, str] | None = None) -> None:
        summary = {"at": moment.isoformat(), "duration_ms": 12.0, "metrics": {}, "steps": {"sync": "ok"}}
        if errors:
            summary["errors"] = errors
        cache.set(LAST_TICK_CACHE_KEY, summary, timeout=None)

    yield set_tick
    if before:
        cache.set(LAST_TICK_CACHE_KEY, before, timeout=None)
    else:
        cache.delete(LAST_TICK_CACHE_KEY)
    cache.delete_many([verdict.VERDICT_KEY, verdict.VERDICT_LOCK_KEY])


@pytest.fixture(autouse=True)
def inspected(monkeypatch) -> Iterator[list[int]]:
    """No broadcast: two workers answer at once (the list counts the broadcasts)."""
    calls: list[int] = []

    def answer(timeout: float = 1.0) -> dict[str, list[str]]:
        calls.append(1)
        return {"celery": ["w1@host", "w2@host"], "sync": ["w1@host"], "tick": ["w2@host"]}

    cache.delete_many([workers.WORKERS_KEY, workers.WORKERS_LOCK_KEY])
    monkeypatch.setattr(workers, "inspect_queues", answer)
    yield calls
    cache.delete_many([workers.WORKERS_KEY, workers.WORKERS_LOCK_KEY])


def staff_client(username: str, *codenames: str) -> Client:
    user = get_user_model().objects.create_user(username, password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def page(client: Client) -> str:
    response = client.get(INDEX)
    assert response.status_code == 200
    return response.content.decode()


def section(html: str, element_id: str) -> str:
    """The module ``<div id=element_id>`` (up to the next module)."""
    match = re.search(
        rf'<div class="module" id="{element_id}">(.*?)(?=<div class="module"|<div class="overview-grid")', html, re.S
    )
    assert match, f"no section {element_id}"
    return match.group(1)


def banner(html: str, element_id: str = "scheduler-banner") -> str:
    match = re.search(rf'<div [^>]*id="{element_id}"[^>]*>(.*?)</div>', html, re.S)
    return match.group(1) if match else ""


def sync_once(fabric: Fabric) -> None:
    """A real sync of ``fabric`` (claim, begin, run) in this process."""
    now = timezone.now()
    token = leases.claim_one(fabric.id, now)
    assert token is not None
    assert leases.begin(fabric.id, token, now, "test").outcome is leases.BeginOutcome.STARTED
    # A failing sync re-raises for Celery; its run and the fabric's state are recorded first.
    with contextlib.suppress(Exception):
        run_sync(fabric.id, token, trigger="manual", worker="test", may_retry=False)


def found(pattern: str, html: str) -> str:
    match = re.search(pattern, html, re.S)
    assert match, f"nothing matches {pattern}"
    return match.group(0)


def chart(html: str, key: str) -> str:
    match = re.search(
        rf'<figure class="overview-chart" id="chart-{key}" data-points="(\d+)">(.*?)</figure>', html, re.S
    )
    assert match, f"no chart {key}"
    return match.group(2)


def dots(svg: str) -> int:
    """Visible data points (pygal draws hidden step corners with r=0)."""
    return len([r for r in re.findall(r'<circle [^>]*r="([\d.]+)"[^>]*class="dot', svg) if float(r) > 0])


# --- access ----------------------------------------------------------------------------


def test_the_admin_index_is_the_overview_and_needs_a_staff_login(client, admin_client):
    assert client.get(INDEX).status_code == 302
    user = get_user_model().objects.create_user("visitor", password="x")
    client.force_login(user)
    assert "/admin/login/" in client.get(INDEX)["Location"]

    html = page(admin_client)
    assert 'id="overview"' in html
    assert 'id="overview-scheduler"' in html
    assert "app-sync" in html  # the usual app list is still there, below


# --- scheduler and banner --------------------------------------------------------------


def test_a_recent_tick_and_an_enabled_entry_show_no_banner(admin_client, tick_at):
    tick_at(timezone.now() - timedelta(seconds=10))
    html = page(admin_client)
    assert banner(html) == ""
    assert "enabled" in section(html, "overview-scheduler")


def test_a_tick_older_than_two_intervals_shows_the_red_banner_with_its_age(admin_client, tick_at):
    start = timezone.now()
    tick_at(start)
    with freeze_time(start + 2 * TICK - timedelta(seconds=1)):
        fresh = page(admin_client)
    with freeze_time(start + 2 * TICK + timedelta(seconds=5)):
        stale = page(admin_client)

    assert banner(fresh) == ""
    reasons = banner(stale)
    assert "The last tick ran 125 s ago, more than two ticks (120 s)" in reasons
    assert "disabled" not in reasons


def test_a_disabled_entry_shows_the_banner_at_once_even_with_a_fresh_tick(admin_client, tick_at):
    tick_at(timezone.now())
    PeriodicTask.objects.filter(name=MASTER_TASK_NAME).update(enabled=False)
    reasons = banner(page(admin_client))
    assert f"The beat entry {MASTER_TASK_NAME} is disabled (Periodic tasks)" in reasons
    assert "last tick ran" not in reasons


def test_a_missing_entry_and_no_tick_are_both_reasons(admin_client, tick_at):
    cache.delete(LAST_TICK_CACHE_KEY)
    PeriodicTask.objects.filter(name=MASTER_TASK_NAME).delete()
    reasons = banner(page(admin_client))
    assert f"The beat entry {MASTER_TASK_NAME} is missing" in reasons
    assert "No tick has been recorded yet" in reasons


def test_failing_tick_steps_show_as_a_warning_not_the_red_banner(admin_client, tick_at):
    tick_at(timezone.now(), errors={"scaling": "could not publish 1 evaluations"})
    html = page(admin_client)
    assert banner(html) == ""
    assert 'scaling: <span class="error">could not publish 1 evaluations' in banner(html, "steps-banner")


def test_the_overview_records_a_stopped_scheduler_as_one_transition(admin_client, tick_at):
    start = timezone.now()
    tick_at(start)
    record_results(
        [
            HealthCheckResult(
                "scheduler", ComponentType.SCHEDULER, HealthStatus.HEALTHY, "ok", checked_at=start, critical=True
            )
        ]
    )

    with freeze_time(start + timedelta(seconds=settings.HEALTH_BEAT_MAX_AGE + 30)):
        first = page(admin_client)
        page(admin_client)

    transitions = HealthTransition.objects.filter(component__name="scheduler", to_status=HealthStatus.UNHEALTHY)
    assert transitions.count() == 1
    row = re.search(r'<tr class="component-problem" data-component="scheduler".*?</tr>', first, re.S)
    assert row
    assert "unhealthy" in row.group(0)
    assert "no tick for" in row.group(0)


# --- audit of the scheduler switch -----------------------------------------------------


def test_stopping_and_starting_from_the_overview_is_audited(tick_at):
    tick_at(timezone.now())
    operator = staff_client("operator", "view_periodictask", "change_periodictask")
    assert 'id="stop-scheduler"' in page(operator)

    operator_id = get_user_model().objects.get(username="operator").pk
    operator.post("/admin/overview/scheduler/", {"enabled": "0"})
    stopped = page(operator)
    operator.post("/admin/overview/scheduler/", {"enabled": "1"})

    assert "is disabled (Periodic tasks)" in banner(stopped)
    assert 'id="start-scheduler"' in stopped
    assert PeriodicTask.objects.get(name=MASTER_TASK_NAME).enabled is True
    entries = LogEntry.objects.filter(object_repr__startswith=MASTER_TASK_NAME).order_by("id")
    assert [(e.user_id, e.change_message) for e in entries] == [
        (operator_id, "Stopped the master scheduler (ticks stop) from the overview"),
        (operator_id, "Started the master scheduler (ticks resume) from the overview"),
    ]


def test_a_staff_user_without_the_change_permission_cannot_stop_the_scheduler():
    viewer = staff_client("viewer", "view_periodictask")
    assert 'id="stop-scheduler"' not in page(viewer)
    assert viewer.post("/admin/overview/scheduler/", {"enabled": "0"}).status_code == 403
    viewer.post(BEAT_CHANGELIST, {"action": "disable_tasks", "_selected_action": [master().pk], "index": 0})

    assert master().enabled is True
    assert not LogEntry.objects.exists()


def master() -> PeriodicTask:
    return PeriodicTask.objects.get(name=MASTER_TASK_NAME)


@pytest.mark.parametrize(
    ("action", "enabled_before", "message"),
    [
        ("disable_tasks", True, "Disabled the master scheduler (Periodic tasks action)"),
        ("enable_tasks", False, "Enabled the master scheduler (Periodic tasks action)"),
        ("toggle_tasks", True, "Disabled (toggled) the master scheduler (Periodic tasks action)"),
        ("toggle_tasks", False, "Enabled (toggled) the master scheduler (Periodic tasks action)"),
    ],
)
def test_switching_the_entry_with_a_periodic_tasks_action_is_audited(admin_client, action, enabled_before, message):
    PeriodicTask.objects.filter(pk=master().pk).update(enabled=enabled_before)
    admin_client.post(BEAT_CHANGELIST, {"action": action, "_selected_action": [master().pk], "index": 0})

    assert master().enabled is not enabled_before
    assert list(LogEntry.objects.values_list("object_repr", "change_message")) == [(str(master()), message)]


def test_switching_the_entry_in_its_change_form_is_audited_by_the_admin(admin_client):
    entry = master()
    form = admin_client.get(f"{BEAT_CHANGELIST}{entry.pk}/change/").context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k != "enabled"}
    data.update({"regtask": entry.task, "interval": entry.interval_id, "args": "[]", "kwargs": "{}", "headers": "{}"})
    data = {
        k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in data.items() if not isinstance(v, (list, dict))
    }
    response = admin_client.post(f"{BEAT_CHANGELIST}{entry.pk}/change/", data)

    assert response.status_code == 302, response.content.decode()[:2000]
    assert master().enabled is False
    assert "Enabled" in LogEntry.objects.get().get_change_message()


# --- workers ---------------------------------------------------------------------------


def test_workers_are_shown_per_queue_and_a_queue_without_any_is_flagged(admin_client, inspected):
    html = section(page(admin_client), "overview-workers")
    sync_row = found(r'<tr class="queue" data-queue="sync">.*?</tr>', html)
    scaling_row = found(r'<tr class="queue" data-queue="scaling">.*?</tr>', html)
    assert "1 online" in sync_row
    assert "w1@host" in sync_row
    assert "no worker" in scaling_row


def test_the_worker_broadcast_is_asked_once_for_many_requests_and_again_when_old(admin_client, inspected):
    start = timezone.now()
    with freeze_time(start):
        for _ in range(3):
            page(admin_client)
    with freeze_time(start + timedelta(seconds=workers.FRESH_SECONDS + 1)):
        page(admin_client)
    assert len(inspected) == 2


def test_an_unreachable_broker_is_said_and_the_page_still_renders(admin_client, monkeypatch):
    def refuse(timeout: float = 1.0) -> dict[str, list[str]]:
        raise ConnectionRefusedError("no broker")

    monkeypatch.setattr(workers, "inspect_queues", refuse)
    html = section(page(admin_client), "overview-workers")
    assert "broker unreachable (ConnectionRefusedError)" in html


# --- fabrics ---------------------------------------------------------------------------


def test_a_failing_fabric_is_listed_with_since_when_and_its_last_error(admin_client, git_repo):
    broken = git_repo()
    broken.write("manifests/bad.yaml", "kind: [unclosed\n")
    broken.commit()
    fine = git_repo()
    fine.with_switches(2)
    failing, healthy = make_fabric(broken.url, name="broken-fabric"), make_fabric(fine.url, name="fine-fabric")
    sync_once(failing)
    sync_once(healthy)

    html = section(page(admin_client), "overview-fabrics")

    failing.refresh_from_db()
    assert failing.sync_status == SyncStatus.ERROR
    assert re.search(r'data-status="error">.*?<strong>1</strong>', html, re.S)
    assert re.search(r'data-status="in_sync">.*?<strong>1</strong>', html, re.S)
    rows = re.findall(r'<tr class="failing-fabric">.*?</tr>', html, re.S)
    assert len(rows) == 1
    assert "broken-fabric" in rows[0]
    assert "fine-fabric" not in rows[0]
    assert "Error" in rows[0]
    assert "ago" in rows[0]  # failing since: its first failed run
    assert failing.last_error[:40] in rows[0].replace("&#x27;", "'").replace("&quot;", '"')


# --- components ------------------------------------------------------------------------


def test_a_component_checked_over_two_ticks_ago_shows_stale_not_healthy(admin_client, tick_at):
    start = timezone.now()
    record_results(
        [HealthCheckResult("disk-overview", ComponentType.DISK, HealthStatus.HEALTHY, "fine", checked_at=start)]
    )
    record_results(
        [
            HealthCheckResult(
                "cache-overview",
                ComponentType.CACHE,
                HealthStatus.UNHEALTHY,
                "down",
                checked_at=start,
                failure_threshold=1,
            )
        ]
    )

    with freeze_time(start + TICK):
        tick_at(timezone.now())
        recent = page(admin_client)
    with freeze_time(start + 2 * TICK + timedelta(seconds=1)):
        tick_at(timezone.now())
        old = page(admin_client)

    assert 'data-component="disk-overview"' not in recent  # healthy and fresh: not a problem
    assert 'data-component="cache-overview" data-shown="unhealthy"' in recent
    assert 'data-component="disk-overview" data-shown="stale"' in old
    assert "(last: healthy)" in old
    assert ComponentHealth.objects.get(name="disk-overview").status == HealthStatus.HEALTHY  # shown, not rewritten
    assert "Health sweeps stopped" in banner(old, "sweep-banner")
    assert banner(recent, "sweep-banner") == ""


# --- breakers --------------------------------------------------------------------------


def test_a_breaker_that_is_not_closed_is_listed_from_its_live_state(admin_client):
    name = "git:overview-test.invalid"  # forgotten after the test (tests/conftest.py)
    breaker = CircuitBreaker(name)
    breaker.call(lambda: None)  # a breaker is known once it admitted a call
    breaker.force_open()
    html = section(page(admin_client), "overview-breakers")
    row = found(rf'<tr class="open-breaker"><td>{re.escape(name)}.*?</tr>', html)
    assert "forced_open" in row


# --- scaling ---------------------------------------------------------------------------


def record_event(service: str, action: str, before: int, after: int, desired: int, at: datetime) -> None:
    ScalingEvent.objects.create(
        service=service, action=action, from_instances=before, desired_instances=desired, to_instances=after,
        reason="test", rule="metric:cpu", created_at=at,
    )  # fmt: skip


def test_each_service_shows_current_and_desired_instances_and_recent_actions(admin_client):
    now = timezone.now()
    ScalingPolicy.objects.create(
        service="api",
        enabled=True,
        image="fcp-tiny:latest",
        target_cpu_percent=50.0,
        observed_instances=2,
        observed_at=now,
    )
    record_event("api", "up", 1, 2, 2, now - timedelta(minutes=3))
    record_event("api", "none", 2, 2, 3, now - timedelta(minutes=1))  # decided 3, not there yet

    html = section(page(admin_client), "overview-scaling")

    row = found(r'<tr class="scaling-service" data-service="api">.*?</tr>', html)
    assert re.search(r'<td class="current">2</td>', row)
    assert re.search(r'<td class="desired"><span class="pill warn">3</span>', row)
    events = re.findall(r'<tr class="scaling-event">.*?</tr>', html, re.S)
    assert len(events) == 1  # "no change" decisions are not scale actions
    assert "Scale up" in events[0]
    assert "1 → 2" in events[0]


# --- charts ----------------------------------------------------------------------------


def test_the_sync_charts_carry_one_point_per_bucket_of_real_runs(admin_client, git_repo):
    repo = git_repo()
    repo.with_switches(2)
    fabric = make_fabric(repo.url, name="charted")
    start = timezone.now().replace(second=0, microsecond=0)
    for minute in range(3):  # three real syncs, a minute apart: three one-minute buckets
        with freeze_time(start + timedelta(minutes=minute, seconds=5)):
            sync_once(fabric)
    with freeze_time(start + timedelta(minutes=3, seconds=5)):
        html = page(admin_client)

    runs = list(SyncRun.objects.filter(fabric=fabric).order_by("started_at"))
    assert [r.status for r in runs] == [RunStatus.SUCCESS, RunStatus.UNCHANGED, RunStatus.UNCHANGED]
    outcomes = chart(html, "sync-outcomes")
    values = [int(v) for v in re.findall(r'<desc class="value">(\d+)</desc>', outcomes)]
    assert sum(values) == 3  # every run counted once
    assert "Success" in outcomes
    assert "Unchanged (same commit)" in outcomes
    lag = chart(html, "sync-lag")
    # Three durations, and two lags (the first run has no earlier success to measure from).
    assert dots(lag) == 5
    lags = [float(v) for v in re.findall(r'<desc class="value">[^<]*: ([\d.]+)</desc>', lag)]
    assert any(55 <= value <= 65 for value in lags)  # a minute between successes


def test_the_health_timeline_marks_each_recorded_transition(admin_client):
    start = timezone.now() - timedelta(minutes=30)
    for minutes, status in ((0, HealthStatus.HEALTHY), (5, HealthStatus.UNHEALTHY), (10, HealthStatus.HEALTHY)):
        at = start + timedelta(minutes=minutes)
        check = HealthCheckResult("db-timeline", ComponentType.DATABASE, status, str(status), checked_at=at)
        record_results([replace(check, failure_threshold=1, success_threshold=1)])

    svg = chart(page(admin_client), "health")

    assert (
        HealthTransition.objects.filter(component__name="db-timeline").count() == 3
    )  # unknown→healthy→unhealthy→healthy
    assert "db-timeline" in svg
    assert dots(svg) == 3


def test_the_instances_chart_draws_each_service_and_marks_its_scale_actions(admin_client):
    now = timezone.now()
    record_event("api", "up", 1, 3, 3, now - timedelta(minutes=20))
    record_event("api", "none", 3, 3, 3, now - timedelta(minutes=10))
    record_event("api", "down", 3, 2, 2, now - timedelta(minutes=2))

    svg = chart(page(admin_client), "instances")

    assert "api" in svg
    assert "scaled up" in svg
    assert "scaled down" in svg
    assert dots(svg) == 3 + 2  # three decisions on the line, two actions marked


def test_without_history_the_charts_say_so(admin_client):
    html = page(admin_client)
    for key in ("sync-lag", "sync-outcomes", "instances", "health"):
        assert "No data yet" in chart(html, key)
