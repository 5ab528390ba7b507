"""/metrics: Prometheus text computed at scrape time, scraped after real syncs and parsed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from core.breaker import CircuitBreaker
from core.health import HealthCheckResult, HealthStatus
from core.tick import LAST_TICK_CACHE_KEY
from project.celery_app import app
from resilience import views
from resilience.models import ComponentHealth, ComponentType
from resilience.snapshots import refresh_snapshots
from resilience.tracking import record_results
from scaling.metrics.celery_queues import priority_lists
from scaling.models import ScalingEvent, ScalingPolicy
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from tests.factories import make_fabric

pytestmark = pytest.mark.django_db
TOKEN = "scrape-token-7f3a9c1e5b2d4f60a8c9e1b3d5f7a9c1"
BAD_YAML = "apiVersion: v1\nkind: Switch\nmetadata:\n  name: leaf1\n  bad: a: b\n"


@pytest.fixture
def token(settings: Any) -> str:
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


@pytest.fixture
def last_tick() -> Iterator[None]:
    """Leave the session's last-tick summary as this test found it."""
    before = cache.get(LAST_TICK_CACHE_KEY)
    yield
    if before:
        cache.set(LAST_TICK_CACHE_KEY, before, timeout=None)
    else:
        cache.delete(LAST_TICK_CACHE_KEY)


def scrape(client, token: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by (sample name, labels)."""
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.content.decode())
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def sync(*names: str) -> None:
    call_command("sync", *names, stdout=StringIO(), stderr=StringIO())


def fail_sync(name: str) -> None:
    with pytest.raises(CommandError):
        call_command("sync", name, stdout=StringIO(), stderr=StringIO())


# --- after real syncs ----------------------------------------------------------------


def test_a_scrape_after_real_syncs_reports_last_success_failures_status_and_durations(client, token, git_repo):
    good = git_repo("east")
    good.with_switches(3)
    make_fabric(good.url, name="east")
    bad = git_repo("broken")
    bad.write("manifests/bad.yaml", BAD_YAML)
    bad.commit()
    make_fabric(bad.url, name="broken")

    sync("east")
    sync("east")  # the same commit again: a second, faster run
    fail_sync("broken")
    fail_sync("broken")

    samples = scrape(client, token)
    east, broken = Fabric.objects.get(name="east"), Fabric.objects.get(name="broken")
    assert east.last_sync is not None
    assert broken.last_sync is None
    assert broken.last_attempt_at is not None
    assert value(samples, "fcp_fabric_last_success_timestamp_seconds", fabric="east") == east.last_sync.timestamp()
    assert ("fcp_fabric_last_success_timestamp_seconds", frozenset({("fabric", "broken")})) not in samples
    assert value(samples, "fcp_fabric_last_attempt_timestamp_seconds", fabric="broken") == (
        broken.last_attempt_at.timestamp()
    )
    assert value(samples, "fcp_fabric_consecutive_failures", fabric="broken") == 2
    assert value(samples, "fcp_fabric_consecutive_failures", fabric="east") == 0
    assert broken.failing_since is not None
    assert value(samples, "fcp_fabric_failing_since_timestamp_seconds", fabric="broken") == (
        broken.failing_since.timestamp()
    )
    assert ("fcp_fabric_failing_since_timestamp_seconds", frozenset({("fabric", "east")})) not in samples
    assert value(samples, "fcp_fabric_status", fabric="broken", status=SyncStatus.ERROR) == 1
    assert value(samples, "fcp_fabric_status", fabric="east", status=SyncStatus.IN_SYNC) == 1
    assert value(samples, "fcp_fabrics", status=SyncStatus.IN_SYNC) == 1
    assert value(samples, "fcp_fabrics", status=SyncStatus.ERROR) == 1
    assert value(samples, "fcp_fabric_sync_interval_seconds", fabric="east") == 300

    runs = list(SyncRun.objects.filter(fabric=east))
    assert sorted(r.status for r in runs) == [RunStatus.SUCCESS, RunStatus.UNCHANGED]
    assert value(samples, "fcp_fabric_sync_duration_seconds_count", fabric="east") == 2
    assert value(samples, "fcp_fabric_sync_duration_seconds_bucket", fabric="east", le="+Inf") == 2
    assert value(samples, "fcp_fabric_sync_duration_seconds_sum", fabric="east") == pytest.approx(
        sum(r.duration_ms for r in runs if r.duration_ms is not None) / 1000
    )
    assert value(samples, "fcp_fabric_sync_duration_seconds_count", fabric="broken") == 2
    longest = max(r.duration_ms or 0 for r in runs) / 1000
    for bound in ("0.1", "1.0", "10.0", "300.0"):
        expected = sum(1 for r in runs if (r.duration_ms or 0) / 1000 <= float(bound))
        assert value(samples, "fcp_fabric_sync_duration_seconds_bucket", fabric="east", le=bound) == expected
    assert longest < 300
    assert value(samples, "fcp_metrics_section_up", section="fabrics") == 1


def test_runs_older_than_the_window_leave_the_histogram(client, token):
    fabric = make_fabric(name="old-runs")
    long_ago = timezone.now() - timedelta(hours=2)
    SyncRun.objects.create(
        fabric=fabric,
        trigger="schedule",
        status=RunStatus.SUCCESS,
        started_at=long_ago,
        finished_at=long_ago,
        duration_ms=700,
    )
    samples = scrape(client, token)
    assert ("fcp_fabric_sync_duration_seconds_count", frozenset({("fabric", "old-runs")})) not in samples


def test_the_due_backlog_counts_due_unleased_enabled_fabrics(client, token):
    now = timezone.now()
    make_fabric(name="due-1", next_sync_at=now - timedelta(minutes=1))
    make_fabric(name="due-2", next_sync_at=now - timedelta(minutes=1))
    make_fabric(name="later", next_sync_at=now + timedelta(hours=1))
    make_fabric(name="off", next_sync_at=now - timedelta(minutes=1), sync_enabled=False)
    make_fabric(name="leased", next_sync_at=now, lease_token="x", lease_expires_at=now + timedelta(minutes=5))
    samples = scrape(client, token)
    assert value(samples, "fcp_sync_due_fabrics") == 2
    assert value(samples, "fcp_fabric_sync_enabled", fabric="off") == 0


def test_drift_counts_appear_for_a_fabric_with_a_cluster(client, token):
    try:
        cluster_model = apps.get_model("sync", "FabricCluster")
    except LookupError:
        pytest.skip("this sync app records no drift yet")
    from core.models import Credential

    credential = Credential(name="k8s-metrics", kind=Credential.Kind.BEARER_TOKEN)
    credential.set_secret("not-used")
    credential.save()
    fabric = make_fabric(name="drifting")
    compared = timezone.now()
    cluster_model.objects.create(
        fabric=fabric,
        server_url="https://127.0.0.1:6443",
        token=credential,
        drift_status="out_of_sync",
        drift_counts={"in_sync": 15, "drifted": 2, "missing": 1},
        drift_compared_at=compared,
    )
    samples = scrape(client, token)
    assert value(samples, "fcp_fabric_drift_status", fabric="drifting", status="out_of_sync") == 1
    assert value(samples, "fcp_fabric_drift_objects", fabric="drifting", state="drifted") == 2
    assert value(samples, "fcp_fabric_drift_objects", fabric="drifting", state="in_sync") == 15
    assert value(samples, "fcp_fabric_drift_compared_timestamp_seconds", fabric="drifting") == compared.timestamp()
    assert value(samples, "fcp_metrics_section_up", section="drift") == 1


# --- the tick, scaling, health, breakers, queues -------------------------------------------


def test_the_tick_age_duration_and_failing_steps_come_from_the_last_summary(client, token, last_tick):
    at = timezone.now() - timedelta(seconds=90)
    summary = {
        "at": at.isoformat(),
        "duration_ms": 250.0,
        "metrics": {},
        "steps": {"sync": "ok", "health": "error"},
        "errors": {"health": "broker down"},
    }
    cache.set(LAST_TICK_CACHE_KEY, summary, timeout=None)
    samples = scrape(client, token)
    assert value(samples, "fcp_tick_last_timestamp_seconds") == at.timestamp()
    assert 90 <= value(samples, "fcp_tick_age_seconds") < 120
    assert value(samples, "fcp_tick_duration_seconds") == 0.25
    assert value(samples, "fcp_tick_step_ok", step="sync") == 1
    assert value(samples, "fcp_tick_step_ok", step="health") == 0
    assert value(samples, "fcp_scheduler_enabled") == 1  # created by migrate (project/schedule.py)


def test_instances_desired_instances_and_decisions_per_service(client, token):
    policy = ScalingPolicy.objects.create(
        service="metrics-web", image="busybox:1", target_cpu_percent=50, observed_instances=3, max_instances=6
    )
    now = timezone.now()
    for minutes, action, desired in ((3, "up", 3), (2, "none", 3), (1, "up", 5)):
        ScalingEvent.objects.create(
            service=policy.service,
            policy=policy,
            action=action,
            from_instances=3,
            desired_instances=desired,
            to_instances=desired,
            reason="test",
            rule="test",
            created_at=now - timedelta(minutes=minutes),
        )
    samples = scrape(client, token)
    assert value(samples, "fcp_scaling_instances", service="metrics-web") == 3
    assert value(samples, "fcp_scaling_desired_instances", service="metrics-web") == 5  # the latest decision
    assert value(samples, "fcp_scaling_max_instances", service="metrics-web") == 6
    assert value(samples, "fcp_scaling_decisions_total", service="metrics-web", action="up") == 2
    assert value(samples, "fcp_scaling_decisions_total", service="metrics-web", action="none") == 1


def test_components_show_their_status_and_a_check_older_than_two_ticks_shows_stale(client, token, settings):
    now = timezone.now()
    record_results(
        [
            HealthCheckResult("metrics-fresh", ComponentType.DISK, HealthStatus.UNHEALTHY, "full", failure_threshold=1),
            HealthCheckResult(
                "metrics-old",
                ComponentType.DISK,
                HealthStatus.HEALTHY,
                "fine, once",
                checked_at=now - timedelta(seconds=2 * settings.TICK_SECONDS + 5),
            ),
        ]
    )
    samples = scrape(client, token)
    fresh = {"component": "metrics-fresh", "type": "disk", "critical": "false"}
    assert value(samples, "fcp_component_status", **fresh, status="unhealthy") == 1
    old = {"component": "metrics-old", "type": "disk", "critical": "false"}
    assert value(samples, "fcp_component_status", **old, status="stale") == 1
    assert ("fcp_component_status", frozenset({**old, "status": "healthy"}.items())) not in samples
    assert value(samples, "fcp_component_consecutive_failures", component="metrics-fresh") == 1
    checked = ComponentHealth.objects.get(name="metrics-fresh").last_checked_at
    assert checked is not None
    assert value(samples, "fcp_component_last_check_timestamp_seconds", component="metrics-fresh") == (
        checked.timestamp()
    )


def test_a_breaker_forced_open_is_one_in_its_state_set_with_its_opening_time(client, token):
    name = f"metrics-{uuid.uuid4().hex[:8]}"
    breaker = CircuitBreaker(name)
    breaker.call(lambda: None)
    breaker.force_open()
    try:
        refresh_snapshots()
        samples = scrape(client, token)
    finally:
        breaker.forget()
    assert value(samples, "fcp_breaker_state", breaker=name, state="forced_open") == 1
    assert value(samples, "fcp_breaker_state", breaker=name, state="closed") == 0
    assert value(samples, "fcp_breaker_calls_total", breaker=name) == 1
    assert ("fcp_breaker_opened_timestamp_seconds", frozenset({("breaker", name)})) in samples


def test_queue_depth_and_latency_are_read_from_the_broker(client, token, settings):
    queue = f"metrics-{uuid.uuid4().hex[:8]}"
    ScalingPolicy.objects.create(
        service="metrics-worker", image="busybox:1", target_queue_depth_per_instance=5, queues=[queue]
    )
    for _ in range(3):
        app.send_task("metrics.never-run", queue=queue)
    try:
        samples = scrape(client, token)
    finally:
        from scaling.metrics.celery_queues import broker_client

        client_ = broker_client()
        assert client_ is not None
        client_.delete(*priority_lists(queue))
    assert value(samples, "fcp_celery_queue_depth", queue=queue) == 3
    assert 0 <= value(samples, "fcp_celery_queue_latency_seconds", queue=queue) < 60
    assert ("fcp_celery_queue_depth", frozenset({("queue", settings.CELERY_TASK_DEFAULT_QUEUE)})) in samples


def test_a_broker_that_does_not_answer_takes_out_its_section_only(client, token, monkeypatch):
    from redis import Redis

    from scaling.metrics import celery_queues

    monkeypatch.setattr(celery_queues, "broker_client", lambda: Redis.from_url("redis://127.0.0.1:1/0"))
    make_fabric(name="still-reported")
    samples = scrape(client, token)
    assert value(samples, "fcp_metrics_section_up", section="queues") == 0
    assert value(samples, "fcp_metrics_section_up", section="fabrics") == 1
    assert value(samples, "fcp_fabric_consecutive_failures", fabric="still-reported") == 0


# --- cost ---------------------------------------------------------------------------------


def _populate(fabrics: int) -> None:
    now = timezone.now()
    first = Fabric.objects.count()
    created = Fabric.objects.bulk_create(
        Fabric(name=f"bulk-{i}", git_url="/nonexistent/repo", next_sync_at=now, last_sync=now)
        for i in range(first, first + fabrics)
    )
    SyncRun.objects.bulk_create(
        SyncRun(fabric=f, trigger="schedule", status=RunStatus.SUCCESS, started_at=now, finished_at=now, duration_ms=i)
        for i, f in enumerate(created)
    )
    record_results(
        [HealthCheckResult(f"bulk:{f.name}", ComponentType.FABRIC_SOURCE, HealthStatus.HEALTHY) for f in created]
    )


def _queries_of_one_scrape(client) -> int:
    with CaptureQueriesContext(connection) as queries:
        scrape(client, TOKEN)
    return len(queries.captured_queries)


def test_a_scrape_costs_the_same_queries_for_2_or_50_fabrics(client, token):
    _populate(2)
    few = _queries_of_one_scrape(client)
    _populate(48)
    many = _queries_of_one_scrape(client)
    assert Fabric.objects.count() == 50
    assert few == many
    assert many <= 15


# --- who may scrape -------------------------------------------------------------------------


def test_an_anonymous_scrape_is_refused_with_a_bearer_challenge(client, token):
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"fcp_" not in response.content


def test_a_logged_in_user_who_is_not_staff_is_forbidden(client, token):
    client.force_login(User.objects.create_user("viewer", password="x"))
    assert client.get("/metrics").status_code == 403


def test_staff_may_scrape(admin_client):
    response = admin_client.get("/metrics")
    assert response.status_code == 200
    assert b"# TYPE fcp_fabrics gauge" in response.content


def test_the_metrics_token_and_the_health_token_both_open_it_compared_in_constant_time(
    client, token, settings, monkeypatch
):
    settings.HEALTH_TOKEN = "health-token-0123456789abcdef0123456789"
    compared: list[tuple[bytes, bytes]] = []
    real = views.hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(views.hmac, "compare_digest", compare_digest)
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {settings.HEALTH_TOKEN}").status_code == 200
    assert len(compared) == 4  # both tokens compared on every request, never ==


@pytest.mark.parametrize("header", [f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer "])
def test_a_wrong_or_malformed_token_is_refused(client, token, header):
    assert client.get("/metrics", HTTP_AUTHORIZATION=header).status_code == 401


def test_without_any_configured_token_no_bearer_header_opens_it(client, settings):
    settings.METRICS_TOKEN = ""
    settings.HEALTH_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer anything").status_code == 401
