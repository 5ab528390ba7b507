"""The health sweep end to end: the tick's group on real workers, a broker outage, a PostgreSQL outage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections

from core.breaker import CircuitBreaker
from core.health import get_check, registered_checks, run_checks
from core.tick import run_tick
from project.embedded import free_port
from resilience.models import CircuitBreakerState, ComponentHealth, HealthStatus, HealthTransition
from resilience.tracking import record_results
from resilience.verdict import get_system_health
from tests.conftest import ROOT, wait_for, worker_database_url
from tests.pgcluster import PostgresCluster, use_as_default_database

H, U, UNKNOWN = HealthStatus.HEALTHY, HealthStatus.UNHEALTHY, HealthStatus.UNKNOWN


def _statuses(*names: str) -> dict[str, str]:
    return dict(ComponentHealth.objects.filter(name__in=names).values_list("name", "status"))


@pytest.mark.worker
def test_a_tick_runs_the_checks_as_a_group_on_real_workers_and_snapshots_the_breakers(worker_factory) -> None:
    breaker_name = f"test-sweep-{uuid.uuid4().hex[:8]}"
    breaker = CircuitBreaker(breaker_name)
    breaker.call(lambda: None)
    breaker.force_open()
    worker = worker_factory(concurrency=2)

    summary = run_tick()

    assert summary["steps"]["health"] == "ok"
    assert summary["metrics"]["health"]["health_checks_dispatched"] == len(registered_checks())
    wanted = {"database": H, "cache": H, "broker": H, "workers": H, "scheduler": H}
    wait_for(lambda: _statuses(*wanted) == wanted, timeout=60, message=worker.log())
    snapshot = wait_for(lambda: CircuitBreakerState.objects.filter(name=breaker_name).first(), timeout=30)
    assert snapshot.state == "forced_open"
    breaker_component = wait_for(lambda: ComponentHealth.objects.filter(name=f"breaker:{breaker_name}").first())
    assert breaker_component.status == HealthStatus.DEGRADED
    assert breaker_component.critical is False
    workers = ComponentHealth.objects.get(name="workers")
    assert workers.last_details["workers"]  # the worker that answered the ping
    breaker.forget()


@pytest.mark.django_db(transaction=True)
def test_the_health_step_fails_with_its_reason_when_the_broker_is_down(tmp_path: Path) -> None:
    """A real fault: the tick runs in a process whose broker address has nothing listening."""
    env = {
        **os.environ,
        "DATABASE_URL": worker_database_url(),
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
        "CELERY_RESULT_BACKEND": settings.CELERY_RESULT_BACKEND,
        "CACHE_URL": settings.REDIS_URL,
        "PYTHONPATH": str(ROOT),
    }
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "manage.py", "tick"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["steps"]["health"] == "error"
    assert summary["errors"]["health"].startswith("could not dispatch the health sweep")
    assert summary["metrics"]["health"]["health_checks_dispatched"] == 0
    # Generous on purpose: the publish gives up within seconds (CELERY_TASK_PUBLISH_RETRY_POLICY); the
    # bound only has to tell that from Celery's default retries, which would stall for minutes.
    assert time.monotonic() - started < 60


@pytest.fixture
def database_on_a_private_server(postgres_only: None, postgres_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    """Django's default database, migrated, on a PostgreSQL server this test may stop.

    The machine's server is shared with other test sessions: stopping it would fail
    their tests, so the outage happens on a cluster of this test's own.
    """
    postgres_cluster.create_database("fcp_outage")
    with use_as_default_database(postgres_cluster, "fcp_outage"):
        call_command("migrate", verbosity=0)
        yield postgres_cluster


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_stopping_postgres_turns_the_database_unhealthy_and_restarting_it_heals_the_record(
    database_on_a_private_server: PostgresCluster,
) -> None:
    server = database_on_a_private_server
    database = get_check("database")
    record_results(run_checks([database]))
    assert ComponentHealth.objects.get(name="database").status == H

    try:
        server.stop()
        during = []
        for _ in range(database.failure_threshold):
            during.extend(run_checks([database]))
            assert record_results(during[-1:]) == []  # the database cannot take them: they wait in Redis
        live = get_system_health(["database"])
    finally:
        if not server.is_running():
            server.start()
        connections.close_all()

    assert [r.status for r in during] == [U] * database.failure_threshold
    assert live.overall_status == U  # critical
    assert "OperationalError" in live.components[0].message

    for _ in range(database.success_threshold):
        record_results(run_checks([database]))
    component = ComponentHealth.objects.get(name="database")
    assert component.status == H
    history = list(
        HealthTransition.objects.filter(component=component)
        .order_by("at")
        .values_list("from_status", "to_status", "at")
    )
    assert [(a, b) for a, b, _ in history] == [(UNKNOWN, H), (H, U), (U, H)]
    assert history[1][2] == during[-1].checked_at  # the outage is dated when it happened, not when recorded
