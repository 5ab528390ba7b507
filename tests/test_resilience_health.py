"""Health checks: the concurrent runner, thresholds and history, the verdict, HTTP and CLI."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from core.breaker import CircuitBreaker
from core.health import (
    HealthCheck,
    HealthCheckResult,
    Report,
    get_check,
    overall_status,
    run_checks,
)
from resilience.models import ComponentHealth, ComponentType, HealthStatus, HealthTransition
from resilience.tracking import next_status, record_results
from resilience.verdict import get_system_health

H, D, U, UNKNOWN = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY, HealthStatus.UNKNOWN


def sleeper(seconds: float, status: HealthStatus = H):
    def check() -> Report:
        time.sleep(seconds)
        return Report(status, f"slept {seconds}")

    return check


def result(name: str, status: HealthStatus, at, critical: bool = False, thresholds: int = 2) -> HealthCheckResult:
    return HealthCheckResult(
        component=name,
        component_type=ComponentType.SERVICE,
        status=status,
        message=f"{status} at {at.isoformat()}",
        checked_at=at,
        critical=critical,
        failure_threshold=thresholds,
        success_threshold=thresholds,
    )


# --- The runner --------------------------------------------------------------------


@pytest.mark.django_db
def test_a_hanging_check_times_out_without_delaying_the_others() -> None:
    release = threading.Event()

    def hang() -> Report:
        release.wait(60)
        return Report(H, "released")

    checks = [
        HealthCheck("hangs", ComponentType.SERVICE, hang, timeout=0.6),
        HealthCheck("slowish", ComponentType.SERVICE, sleeper(0.5), timeout=5),
        HealthCheck("quick", ComponentType.SERVICE, sleeper(0.0), timeout=5),
        get_check("database"),
    ]
    started = time.monotonic()
    try:
        results = {r.component: r for r in run_checks(checks)}
    finally:
        elapsed = time.monotonic() - started
        release.set()
    # Concurrent: about the hanging check's own timeout (0.6 s). In turn the four would
    # take at least 1.1 s (0.6 + 0.5): the bound sits at that sequential floor, so a
    # loaded machine cannot fail it while a sequential runner still cannot pass it.
    assert 0.6 <= elapsed < 1.1
    assert results["hangs"].status == U
    assert results["hangs"].message == "timed out after 0.6 s"
    assert results["slowish"].status == H
    assert results["slowish"].latency_ms >= 500  # measured, not guessed; an upper bound would only time the machine
    assert results["quick"].status == H
    assert results["database"].status == H


def test_a_check_that_raises_is_unhealthy_with_its_reason_and_no_secrets() -> None:
    def broken() -> Report:
        raise ConnectionError("cannot reach https://deploy:hunter2@git.example.com/fabric.git")

    (outcome,) = run_checks([HealthCheck("git-ish", ComponentType.FABRIC_SOURCE, broken, critical=True)])
    assert outcome.status == U
    assert outcome.critical
    assert outcome.message.startswith("check failed: ConnectionError: cannot reach https://deploy:***@")
    assert "hunter2" not in outcome.message


# --- Thresholds and history ---------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "failures", "successes", "raw", "expected"),
    [
        (H, 0, 5, U, (H, 1, 0)),  # one failure is a blip
        (H, 1, 0, U, (U, 2, 0)),  # the second in a row is not
        (U, 2, 0, H, (U, 0, 1)),  # one success does not clear it
        (U, 0, 1, D, (D, 0, 2)),  # the second does (to what the check said)
        (H, 0, 3, D, (D, 0, 4)),  # DEGRADED is not a failure: it applies at once
        (U, 3, 0, UNKNOWN, (U, 3, 0)),  # a skipped check changes nothing
        (UNKNOWN, 0, 0, H, (H, 0, 1)),  # a new component is healthy at once
    ],
)
def test_the_threshold_rule(current, failures, successes, raw, expected) -> None:
    smoothed = next_status(current, failures, successes, raw, failure_threshold=2, success_threshold=2)
    assert (smoothed.status, smoothed.consecutive_failures, smoothed.consecutive_successes) == expected


@pytest.mark.django_db
def test_recorded_results_change_status_only_past_the_thresholds_and_keep_the_history() -> None:
    name = f"svc-{uuid.uuid4().hex[:6]}"
    t0 = timezone.now()
    sequence = [H, U, H, U, U, H, U, H, H]
    for i, status in enumerate(sequence):
        record_results([result(name, status, t0 + timedelta(seconds=60 * i))])
    component = ComponentHealth.objects.get(name=name)
    assert component.status == H
    assert component.status_since == t0 + timedelta(seconds=60 * 8)
    history = list(
        HealthTransition.objects.filter(component=component)
        .order_by("at")
        .values_list("from_status", "to_status", "at")
    )
    assert history == [
        (UNKNOWN, H, t0),
        (H, U, t0 + timedelta(seconds=240)),
        (U, H, t0 + timedelta(seconds=480)),
    ]


@pytest.mark.django_db
def test_a_result_older_than_the_last_recorded_one_is_ignored() -> None:
    name = f"svc-{uuid.uuid4().hex[:6]}"
    now = timezone.now()
    record_results([result(name, H, now)])
    record_results([result(name, U, now - timedelta(seconds=5), thresholds=1)])
    assert ComponentHealth.objects.get(name=name).status == H


# --- The verdict --------------------------------------------------------------------


def test_a_critical_failure_makes_the_system_unhealthy_and_any_other_failure_degraded() -> None:
    now = timezone.now()
    fine = result("db", H, now, critical=True)
    assert overall_status([fine, result("git:x", U, now)]) == D
    assert overall_status([fine, result("disk", D, now, critical=True)]) == D
    assert overall_status([fine, result("broker", U, now, critical=True), result("git:x", D, now)]) == U
    assert overall_status([fine, result("scheduler", UNKNOWN, now, critical=True)]) == H


def test_an_open_breaker_degrades_its_component_but_never_fails_the_system() -> None:
    name = f"test-health-{uuid.uuid4().hex[:8]}"
    breaker = CircuitBreaker(name)
    breaker.call(lambda: None)
    breaker.force_open()
    results = {r.component: r for r in run_checks([get_check("breaker"), get_check("cache")])}
    assert results[f"breaker:{name}"].status == D
    assert results[f"breaker:{name}"].message.startswith("forced_open")
    assert overall_status(results.values()) == D
    breaker.reset()
    results = {r.component: r for r in run_checks([get_check("breaker")])}
    assert results[f"breaker:{name}"].status == H
    breaker.forget()
    assert f"breaker:{name}" not in {r.component for r in run_checks([get_check("breaker")])}


# --- HTTP and the command -------------------------------------------------------------


@pytest.mark.django_db
def test_liveness_and_readiness_answer_without_login(client) -> None:
    live = client.get("/health/live")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "healthy"}  # components: staff and token only (test_health_endpoint.py)


@pytest.mark.django_db
def test_full_health_is_503_without_workers_and_leaks_no_secrets(admin_client, private_broker) -> None:
    record_results(
        [
            HealthCheckResult(
                component="git:https://deploy:***@git.example.com/fabric.git",
                component_type=ComponentType.FABRIC_SOURCE,
                status=U,
                message="fatal: Authentication failed for 'https://deploy:***@git.example.com/fabric.git/'",
                failure_threshold=1,
            )
        ]
    )
    response = admin_client.get("/health/")
    # No Celery worker runs in this test, and the session's broker is its own (private_broker), so no
    # other session's worker can answer the ping: a critical failure.
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["components"]["workers"]["status"] == "unhealthy"
    assert body["components"]["database"]["status"] == "healthy"
    assert body["components"]["git:https://deploy:***@git.example.com/fabric.git"]["status"] == "unhealthy"
    text = response.content.decode()
    assert settings.SECRET_KEY not in text
    assert settings.CELERY_BROKER_URL not in text
    assert response["Cache-Control"].startswith("max-age=0")


@pytest.mark.django_db
def test_the_health_command_prints_a_table_and_exits_non_zero_when_unhealthy(capsys, private_broker) -> None:
    with pytest.raises(SystemExit) as exited:
        call_command("health")
    assert exited.value.code == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["COMPONENT", "TYPE", "STATUS", "CRITICAL", "MS", "MESSAGE"]
    assert "no Celery worker answered a ping" in out
    assert "overall: unhealthy" in out

    call_command("health", "--check", "database", "--check", "cache")  # returns: exit status 0
    assert "overall: healthy" in capsys.readouterr().out


def test_system_checks_reject_a_check_timeout_the_sweep_task_would_cut_short(settings) -> None:
    from resilience.checks import check_resilience_settings

    assert check_resilience_settings() == []
    settings.HEALTH_CHECK_TIMEOUT = settings.HEALTH_TASK_SOFT_TIME_LIMIT
    ids = sorted(str(message.id) for message in check_resilience_settings())
    assert ids == ["resilience.E001"]


@pytest.mark.django_db(transaction=True)
def test_each_fabric_git_source_is_checked_once_per_url_with_credentials_masked(git_repo) -> None:
    from tests.factories import make_fabric

    repo = git_repo("reachable")
    repo.write("manifests/a.yaml", "kind: Switch\n")
    repo.commit()
    make_fabric(repo.url, name="east")
    make_fabric(repo.url, name="west")
    make_fabric(f"{repo.path.parent}/missing-repo", name="north")
    results = {r.component: r for r in run_checks([get_check("git")])}
    assert results[f"git:{repo.url}"].status == H
    assert results[f"git:{repo.url}"].details == {"fabrics": ["east", "west"]}
    missing = results[f"git:{repo.path.parent}/missing-repo"]
    assert missing.status == U
    assert missing.details == {"fabrics": ["north"]}
    assert "git" not in get_system_health().as_dict()["components"]  # sweep-only: not run on demand
