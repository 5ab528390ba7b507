"""The master tick: its registry, its summary, its query count and its beat entry."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from core.tick import registered_steps, run_tick, tick_step
from project.celery_app import app
from project.schedule import ensure_master_schedule
from project.tasks import MASTER_TASK_NAME
from sync.dispatch import dispatch_due_fabrics
from sync.models import Fabric, SyncStatus
from tests.conftest import tick_with_broker_down, wait_for
from tests.factories import make_fabric


def test_the_sync_step_is_registered_first():
    assert [step.name for step in registered_steps()][:1] == ["sync"]


@pytest.mark.django_db
def test_a_failing_step_is_reported_and_does_not_stop_the_others():
    calls = []

    @tick_step("zz-broken", order=1)
    def broken(now):
        raise RuntimeError("boom")

    @tick_step("zz-after", order=2)
    def after(now):
        calls.append(now)
        return {"after_ran": 1}

    from core import tick

    try:
        summary = run_tick()
    finally:
        tick._steps.pop("zz-broken")
        tick._steps.pop("zz-after")
    assert summary["steps"]["zz-broken"] == "error"
    assert summary["errors"]["zz-broken"] == "RuntimeError: boom"
    assert summary["metrics"]["zz-after"]["after_ran"] == 1
    assert summary["steps"]["sync"] == "ok"


def _tick_queries(fabrics: int) -> int:
    """Run one whole tick over ``fabrics`` due fabrics; return its SQL query count."""
    Fabric.objects.all().delete()
    now = timezone.now()
    Fabric.objects.bulk_create(
        Fabric(name=f"q-{i}", git_url="/x", next_sync_at=now - timedelta(seconds=1)) for i in range(fabrics)
    )
    # The messages stay in this session's own broker database; the next worker's start drops them.
    with CaptureQueriesContext(connection) as queries:
        summary = run_tick(now)
    assert summary["metrics"]["sync"]["fabrics_dispatched"] == fabrics
    return len(queries)


@pytest.mark.django_db
def test_a_whole_tick_issues_the_same_number_of_queries_for_5_or_600_fabrics():
    assert _tick_queries(5) == _tick_queries(600)


@pytest.mark.django_db
def test_the_sync_step_needs_seven_queries_whatever_the_number_of_fabrics(django_assert_num_queries):
    now = timezone.now()
    Fabric.objects.bulk_create(
        Fabric(name=f"s-{i}", git_url="/x", next_sync_at=now - timedelta(seconds=1)) for i in range(300)
    )
    # reap: 3 UPDATEs; the tokens of waiting claims: 1 (their markers are in Redis);
    # claim: COUNT, UPDATE, SELECT of the ids won.
    with django_assert_num_queries(7):
        metrics = dispatch_due_fabrics(now)
    assert metrics["fabrics_dispatched"] == 300


@pytest.mark.django_db
def test_the_master_entry_is_created_once_and_an_operator_can_disable_it():
    PeriodicTask.objects.filter(name=MASTER_TASK_NAME).delete()
    assert ensure_master_schedule() is True
    assert ensure_master_schedule() is False
    entry = PeriodicTask.objects.get(name=MASTER_TASK_NAME)
    assert (entry.task, entry.interval.every, entry.interval.period, entry.enabled) == (
        MASTER_TASK_NAME,
        60,
        "seconds",
        True,
    )
    entry.enabled = False
    entry.save()
    ensure_master_schedule()
    assert PeriodicTask.objects.get(name=MASTER_TASK_NAME).enabled is False


@pytest.mark.django_db
def test_the_tick_command_prints_its_summary(capsys):
    call_command("tick")
    summary = json.loads(capsys.readouterr().out)
    assert summary["metrics"]["sync"]["fabrics_due"] == 0
    assert summary["steps"]["sync"] == "ok"


@pytest.mark.worker
def test_the_master_scheduler_task_runs_a_tick_on_a_real_worker(celery_worker, git_repo):
    repo = git_repo()
    repo.with_switches(1)
    fabric = make_fabric(repo.url)
    result = app.send_task(MASTER_TASK_NAME).get(timeout=30)
    assert result["metrics"]["sync"]["fabrics_dispatched"] == 1
    wait_for(lambda: Fabric.objects.filter(id=fabric.id, sync_status=SyncStatus.IN_SYNC).exists())


@pytest.mark.django_db(transaction=True)
def test_when_the_broker_is_down_the_tick_releases_its_claims_and_says_why():
    """A real fault: the tick runs in a process whose broker URL points at a closed port."""
    fabric = make_fabric()
    out = tick_with_broker_down()
    summary = json.loads(out.stdout)
    assert summary["steps"]["sync"] == "error"
    assert "sync" in summary["errors"]
    fabric.refresh_from_db()
    assert fabric.sync_status == SyncStatus.NEVER_SYNCED
    assert fabric.lease_token == ""
