"""The container checks and healing talk to the engine at ``DOCKER_URL`` through its shared breaker.

Against the real engine of ``scripts/docker-engine.sh`` (and a socket path where no
engine listens, for a dead one). The checks run in the test process here; the whole
path through a worker is in ``test_resilience_docker_healing.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import docker
import pytest
from django.conf import settings
from django.utils import timezone

from core.breaker import CircuitBreaker
from core.breaker_core import State
from core.guards import docker_engine, forget_handles
from core.health import HealthStatus, get_check, registered_checks
from resilience.engine import EngineUnavailable
from resilience.heal_actions import restart_container
from resilience.models import ComponentHealth, ComponentType
from resilience.sweep import sweep
from tests.conftest import require

pytestmark = pytest.mark.docker
IMAGE = "fcp-tiny:latest"
H, D, U, UNKNOWN = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY, HealthStatus.UNKNOWN


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    try:
        client = docker.DockerClient(base_url=settings.DOCKER_URL, timeout=10)
        client.ping()
        client.images.get(IMAGE)
    except Exception as exc:
        require(False, f"needs a Docker engine with {IMAGE} at DOCKER_URL (bash scripts/docker-engine.sh): {exc}")
    require("docker" in {c.name for c in registered_checks()}, "the docker checks are off (HEALTH_DOCKER_ENABLED)")
    yield client
    client.close()


@pytest.fixture
def breaker() -> Iterator[CircuitBreaker]:
    """The shared ``docker:engine`` breaker, from a clean state, forgotten afterwards."""
    forget_handles()
    handle = docker_engine()
    handle.forget()
    yield handle
    handle.forget()
    forget_handles()


@pytest.fixture
def managed(engine: docker.DockerClient) -> Iterator[Any]:
    container = engine.containers.run(
        IMAGE,
        ["sleep", "600"],
        name=f"fcp-engine-test-{uuid.uuid4().hex[:8]}",
        labels={settings.HEALTH_CONTAINER_LABEL: "true"},
        network_mode="none",
        detach=True,
    )
    yield container
    container.remove(force=True)


def check_docker() -> Any:
    return get_check("docker").function()


def container_results() -> dict[str, Any]:
    results = get_check("container").function()
    assert isinstance(results, list)
    return {r.component: r for r in results}


def settled(handle: CircuitBreaker) -> Any:
    handle.flush()
    return handle.metrics


def test_the_docker_check_asks_the_engine_at_docker_url_and_counts_a_success(engine, breaker) -> None:
    report = check_docker()
    assert report.status == H
    assert report.message.startswith("Docker engine ")
    metrics = settled(breaker)
    assert (metrics.successful_calls, metrics.failed_calls) == (1, 0)


def test_the_docker_check_follows_docker_url_not_the_environment(engine, breaker, settings, tmp_path) -> None:
    settings.DOCKER_URL = f"unix://{tmp_path}/no-engine.sock"  # DOCKER_HOST and the default socket still work
    with pytest.raises(docker.errors.DockerException):
        check_docker()
    assert settled(breaker).consecutive_failures == 1


def test_a_dead_engine_opens_the_breaker_and_then_the_check_answers_without_calling_it(
    engine, breaker, settings, tmp_path
) -> None:
    real_engine = settings.DOCKER_URL
    settings.DOCKER_URL = f"unix://{tmp_path}/no-engine.sock"
    for _ in range(breaker.config.consecutive_failures):
        with pytest.raises(docker.errors.DockerException):
            check_docker()
    metrics = settled(breaker)
    assert metrics.state is State.OPEN

    # The engine is back at the URL, but the breaker decides: no call until its wait is over.
    settings.DOCKER_URL = real_engine
    report = check_docker()
    assert report.status == U
    assert report.message.startswith("Docker engine unavailable (breaker open until ")
    assert report.message.endswith(f"{metrics.open_until:%Y-%m-%d %H:%M:%S} UTC)")
    after = settled(breaker)
    assert after.rejected_calls == metrics.rejected_calls + 1
    assert after.total_calls == metrics.total_calls


def test_a_breaker_forced_open_by_an_operator_degrades_the_docker_check(engine, breaker) -> None:
    breaker.force_open()
    report = check_docker()
    assert (report.status, report.message) == (D, "Docker engine unavailable (breaker forced open by an operator)")
    assert settled(breaker).successful_calls == 0


@pytest.mark.django_db(transaction=True)
def test_while_the_breaker_is_open_containers_are_skipped_and_not_healed(engine, breaker, managed) -> None:
    component = f"container:{managed.name}"
    assert container_results()[component].status == H
    ComponentHealth.objects.create(
        name=component,
        component_type=ComponentType.CONTAINER,
        status=U,
        status_since=timezone.now() - timedelta(minutes=5),
        consecutive_failures=settings.HEAL_AFTER_FAILURES,
        last_checked_at=timezone.now() - timedelta(minutes=1),
    )
    breaker.force_open()

    skipped = container_results()[component]
    assert skipped.status == UNKNOWN
    assert skipped.message == "skipped: Docker engine unavailable (breaker forced open by an operator)"
    healed: list[int] = []
    summary = sweep(["container"], heal=healed.append)
    assert (summary["heal_due"], healed) == (0, [])
    row = ComponentHealth.objects.get(name=component)
    assert (row.status, row.consecutive_failures) == (U, settings.HEAL_AFTER_FAILURES)  # UNKNOWN changes nothing
    assert row.last_message.startswith("skipped: Docker engine unavailable")


def test_restart_container_restarts_a_killed_container_through_the_engine_at_docker_url(breaker, managed) -> None:
    managed.kill()
    message = restart_container(f"container:{managed.name}")
    managed.reload()
    assert managed.status == "running"
    assert message == f"restarted container {managed.name}: now running"
    assert settled(breaker).successful_calls == 1


def test_restart_container_does_not_call_the_engine_while_the_breaker_is_open(breaker, managed) -> None:
    managed.kill()
    breaker.force_open()
    with pytest.raises(EngineUnavailable, match=r"breaker forced open by an operator"):
        restart_container(f"container:{managed.name}")
    managed.reload()
    assert managed.status == "exited"


def test_a_container_that_is_gone_is_the_engine_answering_not_failing(engine, breaker) -> None:
    with pytest.raises(docker.errors.NotFound):
        restart_container(f"container:fcp-never-existed-{uuid.uuid4().hex[:8]}")
    metrics = settled(breaker)
    assert (metrics.successful_calls, metrics.failed_calls, metrics.consecutive_failures) == (1, 0, 0)
