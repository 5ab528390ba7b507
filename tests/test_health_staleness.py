"""Staleness is judged when read, not by the tick: old checks show *stale*, a stopped scheduler is recorded once."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connections
from django.utils import timezone
from freezegun import freeze_time

from core.health import HealthCheckResult, HealthStatus, get_check
from core.tick import LAST_TICK_CACHE_KEY
from project.celery_app import app
from resilience import verdict
from resilience.models import ComponentHealth, ComponentType, HealthTransition
from resilience.tracking import record_results

H, U = HealthStatus.HEALTHY, HealthStatus.UNHEALTHY
TICK = timedelta(seconds=settings.TICK_SECONDS)
CHANGELIST = "/admin/resilience/componenthealth/"


@pytest.fixture
def tick_at() -> Iterator[Callable[[datetime], None]]:
    """Set when the last tick ran; the session's summary and cached verdict are put back after."""
    before = cache.get(LAST_TICK_CACHE_KEY)
    cache.delete_many([verdict.VERDICT_KEY, verdict.VERDICT_LOCK_KEY])

    def set_tick(moment: datetime) -> None:
        summary = {"at": moment.isoformat(), "duration_ms": 12.0, "metrics": {}, "steps": {"sync": "ok"}}
        cache.set(LAST_TICK_CACHE_KEY, summary, timeout=None)

    yield set_tick
    if before:
        cache.set(LAST_TICK_CACHE_KEY, before, timeout=None)
    else:
        cache.delete(LAST_TICK_CACHE_KEY)
    cache.delete_many([verdict.VERDICT_KEY, verdict.VERDICT_LOCK_KEY])


@pytest.fixture
def no_worker_ping(monkeypatch) -> None:
    """No broadcast under a frozen clock: the workers check gets an empty answer at once."""
    monkeypatch.setattr(app.control, "ping", lambda *args, **kwargs: [])


def healthy(name: str, kind: ComponentType, at: datetime, message: str = "fine", critical: bool = False) -> None:
    record_results([HealthCheckResult(name, kind, H, message, checked_at=at, critical=critical)])


def row_of(html: str, name: str) -> str:
    """The changelist row of component ``name``."""
    for row in re.findall(r"<tr[^>]*>.*?</tr>", html, flags=re.S):
        if f">{name}</a>" in row:
            return row
    raise AssertionError(f"no row for {name}")


def scheduler_transitions() -> list[tuple[str, str]]:
    """The scheduler's history after its first recorded check (unknown -> healthy)."""
    return list(
        HealthTransition.objects.filter(component__name="scheduler")
        .exclude(from_status=HealthStatus.UNKNOWN)
        .order_by("at", "id")
        .values_list("from_status", "to_status")
    )


@pytest.mark.django_db
def test_a_component_checked_over_two_ticks_ago_shows_stale_in_the_admin_not_healthy(admin_client, tick_at):
    start = timezone.now()
    healthy("disk-of-a-test", ComponentType.DISK, start)

    with freeze_time(start + 2 * TICK - timedelta(seconds=1)):
        tick_at(timezone.now())
        fresh = row_of(admin_client.get(CHANGELIST).content.decode(), "disk-of-a-test")
    with freeze_time(start + 2 * TICK + timedelta(seconds=1)):
        tick_at(timezone.now())
        page = admin_client.get(CHANGELIST).content.decode()
        only_stale = admin_client.get(CHANGELIST + "?freshness=stale").content.decode()

    assert "Healthy" in fresh
    assert "Stale" not in fresh
    stale = row_of(page, "disk-of-a-test")
    assert "Stale" in stale
    assert "(last: Healthy)" in stale
    assert "disk-of-a-test" in only_stale
    assert ComponentHealth.objects.get(name="disk-of-a-test").status == H  # shown stale, not rewritten


@pytest.mark.django_db
def test_the_verdict_shows_a_sweep_only_component_stale_once_its_check_is_two_ticks_old(
    admin_client, tick_at, no_worker_ping
):
    assert get_check("git").live is False  # a sweep-only check: /health/ reads what the sweep recorded
    start = timezone.now()
    source = "git:/srv/fabrics/stale-source.git"
    healthy(source, ComponentType.FABRIC_SOURCE, start, "answers")

    with freeze_time(start + TICK, tick=True):
        tick_at(timezone.now())
        recent = admin_client.get("/health/").json()["components"][source]
    with freeze_time(start + 2 * TICK + timedelta(seconds=5), tick=True):
        tick_at(timezone.now())
        old = admin_client.get("/health/").json()["components"][source]

    assert recent["status"] == "healthy"
    assert old["status"] == verdict.STALE
    assert old["last_status"] == "healthy"
    assert old["message"].startswith("stale: last checked 125 s ago")


@pytest.mark.django_db
def test_a_stopped_scheduler_is_noticed_by_health_requests_and_recorded_as_one_transition(
    client, admin_client, tick_at, no_worker_ping
):
    start = timezone.now()
    tick_at(start)
    healthy("scheduler", ComponentType.SCHEDULER, start, "last tick 0 s ago", critical=True)
    limit = timedelta(seconds=settings.HEALTH_BEAT_MAX_AGE)

    with freeze_time(start + limit - timedelta(seconds=5), tick=True):
        assert client.get("/health/").status_code in (200, 503)  # no worker answers: 503 either way
    assert scheduler_transitions() == []

    with freeze_time(start + limit + timedelta(seconds=10), tick=True):
        assert client.get("/health/").status_code == 503
        for _ in range(3):  # noticed again by every kind of request: still one transition
            client.get("/health/")
            admin_client.get("/health/")
            admin_client.get(CHANGELIST)

    assert scheduler_transitions() == [(H, U)]
    scheduler = ComponentHealth.objects.get(name="scheduler")
    assert scheduler.status == U
    assert re.fullmatch(r"no tick for \d+ s \(limit \d+ s\), noticed at request time", scheduler.last_message)
    transition = HealthTransition.objects.get(component=scheduler, to_status=U)
    # Noticed by the first request past the limit (the frozen clock ticks on while it runs).
    assert timedelta(0) <= transition.at - (start + limit + timedelta(seconds=10)) < timedelta(seconds=5)


@pytest.mark.django_db
def test_the_admin_list_shows_a_stopped_scheduler_unhealthy_without_waiting_for_a_sweep(admin_client, tick_at):
    start = timezone.now()
    tick_at(start)
    healthy("scheduler", ComponentType.SCHEDULER, start, "last tick 0 s ago", critical=True)

    with freeze_time(start + timedelta(seconds=settings.HEALTH_BEAT_MAX_AGE + 60)):
        row = row_of(admin_client.get(CHANGELIST).content.decode(), "scheduler")

    assert "Unhealthy" in row
    assert "no tick for" in row
    assert scheduler_transitions() == [(H, U)]


@pytest.mark.django_db
def test_when_ticks_resume_the_sweep_brings_the_scheduler_back_with_its_transition(tick_at):
    start = timezone.now()
    tick_at(start)
    healthy("scheduler", ComponentType.SCHEDULER, start, critical=True)
    outage = start + timedelta(seconds=settings.HEALTH_BEAT_MAX_AGE + 1)
    assert verdict.notice_stale_scheduler(outage) is True

    back = outage + TICK
    tick_at(back)
    assert verdict.notice_stale_scheduler(back) is False
    for seconds in (1, 2):  # the scheduler check's success threshold
        healthy("scheduler", ComponentType.SCHEDULER, back + timedelta(seconds=seconds), critical=True)

    assert ComponentHealth.objects.get(name="scheduler").status == H
    assert scheduler_transitions() == [(H, U), (U, H)]


@pytest.mark.django_db
def test_without_any_tick_recorded_nothing_is_recorded(tick_at):
    cache.delete(LAST_TICK_CACHE_KEY)
    assert verdict.notice_stale_scheduler(timezone.now()) is False
    assert not ComponentHealth.objects.filter(name="scheduler").exists()


@pytest.mark.django_db(transaction=True)
def test_eight_requests_noticing_the_outage_at_once_record_it_once(tick_at):
    now = timezone.now()
    tick_at(now - timedelta(seconds=settings.HEALTH_BEAT_MAX_AGE + 30))
    healthy("scheduler", ComponentType.SCHEDULER, now - timedelta(minutes=5), critical=True)
    barrier = threading.Barrier(8)
    recorded: list[bool] = []

    def notice() -> None:
        try:
            barrier.wait()
            recorded.append(verdict.notice_stale_scheduler(now))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=notice) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(recorded) == [False] * 7 + [True]
    assert scheduler_transitions() == [(H, U)]
