"""Healing through a real Docker engine: a managed container killed behind its check comes back.

The engine and the ``fcp-tiny:latest`` image come from ``scripts/docker-engine.sh``
(shared with the scaling tests). The sweep and the heal run in a real Celery worker.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

from resilience.models import ComponentHealth, HealingAttempt, HealingOutcome, HealthStatus, HealthTransition
from resilience.tasks import run_check
from tests.conftest import require, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.worker]
IMAGE = "fcp-tiny:latest"


def _docker() -> Any:
    try:
        import docker

        client = docker.DockerClient(base_url=settings.DOCKER_URL, timeout=10)  # the engine healing uses
        client.ping()
        client.images.get(IMAGE)
        return client
    except Exception as exc:
        require(False, f"needs a Docker engine with {IMAGE} at DOCKER_URL (bash scripts/docker-engine.sh): {exc}")


@pytest.fixture
def managed_container() -> Iterator[Any]:
    client = _docker()
    container = client.containers.run(
        IMAGE,
        ["sleep", "600"],
        name=f"fcp-heal-test-{uuid.uuid4().hex[:8]}",
        labels={settings.HEALTH_CONTAINER_LABEL: "true"},
        network_mode="none",
        detach=True,
    )
    yield container
    container.remove(force=True)
    client.close()


def _sweep() -> dict[str, Any]:
    return run_check.delay("container").get(timeout=60)


def test_a_killed_managed_container_is_restarted_by_healing_through_the_engine(worker_factory, managed_container):
    component = f"container:{managed_container.name}"
    worker = worker_factory(concurrency=2, HEAL_AFTER_FAILURES="1")

    assert _sweep()["statuses"][component] == "healthy"
    managed_container.kill()
    managed_container.reload()
    assert managed_container.status == "exited"

    # Two failing sweeps (the container check's threshold) make it UNHEALTHY; the heal follows.
    assert _sweep()["statuses"][component] == "unhealthy"
    assert _sweep()["heal_due"] == 1

    attempt = wait_for(
        lambda: (
            HealingAttempt.objects.filter(component__name=component).exclude(outcome=HealingOutcome.RUNNING).first()
        ),
        timeout=60,
        message=worker.log(),
    )
    assert attempt.action == "restart_container"
    assert attempt.outcome == HealingOutcome.SUCCEEDED, attempt.message
    managed_container.reload()
    assert managed_container.status == "running"
    assert managed_container.attrs["State"]["StartedAt"] > managed_container.attrs["State"]["FinishedAt"]

    for _ in range(2):  # the check's success threshold
        assert _sweep()["statuses"][component] == "healthy"
    state = ComponentHealth.objects.get(name=component)
    assert state.status == HealthStatus.HEALTHY
    history = list(
        HealthTransition.objects.filter(component=state).order_by("at").values_list("from_status", "to_status")
    )
    assert history == [("unknown", "healthy"), ("healthy", "unhealthy"), ("unhealthy", "healthy")]
    assert HealingAttempt.objects.filter(component=state).count() == 1
