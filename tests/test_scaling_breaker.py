"""Every Engine API call of the scaler goes through the shared ``docker:engine`` breaker.

Against the real engine (``scripts/docker-engine.sh``) and against a stopped one (a
socket nobody listens on): an open breaker is an ``engine_unreachable`` event and no
engine call; a dead engine trips it; 404 and 409 are answers, not failures. Every test
forgets the breaker before and after, so no other test inherits its state.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests
from docker.errors import APIError

from core.breaker import CircuitBreaker
from core.breaker_core import Outcome, State
from core.guards import docker_engine
from scaling.actions import template_for
from scaling.decisions import Rule, ScaleDirection
from scaling.docker_backend import DockerBackend, EngineUnreachable, engine_outcome
from scaling.models import ScalingEvent
from scaling.service import AutoScalingService
from tests import test_scaling_docker
from tests.test_scaling_docker import last_event, make_policy, owned

pytestmark = pytest.mark.docker

docker_client = test_scaling_docker.docker_client
service_name = test_scaling_docker.service_name


@pytest.fixture
def engine_breaker() -> Iterator[CircuitBreaker]:
    breaker = docker_engine()
    breaker.forget()
    yield breaker
    breaker.forget()


@pytest.fixture
def stopped_engine_url(tmp_path: Path) -> str:
    """A socket file whose engine is gone: connecting is refused, as after dockerd stopped."""
    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))  # bound, never listening, then closed: connect() is refused
    return f"unix://{path}"


def test_an_open_breaker_is_an_engine_unreachable_event_and_no_engine_call(
    db, docker_client, service_name, engine_breaker
):
    make_policy(service_name, min_instances=1)  # a healthy engine would start one instance
    engine_breaker.force_open()
    before = engine_breaker.metrics

    result = AutoScalingService().run(service_name)

    engine_breaker.flush()
    after = engine_breaker.metrics
    event = last_event(service_name)
    assert result["success"] is False
    assert (event.action, event.rule, event.from_instances, event.to_instances) == (
        ScaleDirection.NONE,
        str(Rule.ENGINE_UNREACHABLE),
        0,
        0,
    )
    assert event.error == "Docker engine unavailable (breaker forced open until an operator resets it)"
    assert event.reason.endswith("; no action taken")
    assert after.total_calls == before.total_calls  # nothing reached the engine
    assert after.rejected_calls == before.rejected_calls + 1
    assert owned(docker_client, service_name) == []


def test_a_stopped_engine_trips_the_breaker_and_then_costs_no_call(db, settings, stopped_engine_url, engine_breaker):
    settings.DOCKER_URL = stopped_engine_url
    make_policy("stopped-engine", min_instances=0, target_queue_depth_per_instance=None, target_cpu_percent=50.0)
    scaler = AutoScalingService()

    failing = [scaler.run("stopped-engine") for _ in range(5)]  # five refused connections in a row
    tripped = scaler.run("stopped-engine")

    engine_breaker.flush()
    metrics = engine_breaker.metrics
    errors = list(ScalingEvent.objects.filter(service="stopped-engine").order_by("id").values_list("error", flat=True))
    assert [r["success"] for r in [*failing, tripped]] == [False] * 6
    assert all(error.startswith(f"Docker engine unreachable at {stopped_engine_url}") for error in errors[:5])
    assert errors[5].startswith("Docker engine unavailable (breaker open until ")
    assert errors[5].endswith(" UTC)")
    assert last_event("stopped-engine").rule == str(Rule.ENGINE_UNREACHABLE)
    assert (metrics.state, metrics.failed_calls, metrics.rejected_calls) == (State.OPEN, 5, 1)


def test_not_found_and_conflict_are_answers_that_keep_the_breaker_closed(
    db, docker_client, service_name, engine_breaker
):
    policy = make_policy(service_name)
    with DockerBackend() as backend:
        assert backend.start_instance(service_name, template_for(policy)).ok
        [container] = backend.list_instances(service_name)
        with pytest.raises(APIError) as conflict:
            backend.call(container.remove)  # a running container: 409
        assert backend.stop_instance(container, service_name, timeout=1).ok
        gone = backend.stop_instance(container, service_name, timeout=1)  # 404

    engine_breaker.flush()
    metrics = engine_breaker.metrics
    assert conflict.value.status_code == 409
    assert (gone.ok, gone.error) == (True, "already gone")
    assert (metrics.state, metrics.failed_calls) == (State.CLOSED, 0)
    assert metrics.successful_calls >= 6  # version, run, list, the 409, stop and remove, the 404


def test_a_pull_the_registry_refuses_does_not_count_against_the_engine(db, docker_client, service_name, engine_breaker):
    make_policy(service_name, image="fcp-not-built-here:latest")

    AutoScalingService().run(service_name)

    engine_breaker.flush()
    event = last_event(service_name)
    assert "failed to start" in event.error
    assert engine_breaker.metrics.failed_calls == 0
    assert docker_client.containers.list(all=True, filters={"name": f"fcp-{service_name}-"}) == []


def _api_error(status: int) -> APIError:
    response = requests.Response()
    response.status_code = status
    return APIError(f"{status} error", response=response)


@pytest.mark.parametrize(
    ("exc", "pulling", "outcome"),
    [
        (_api_error(404), False, Outcome.SUCCESS),
        (_api_error(409), False, Outcome.SUCCESS),
        (_api_error(400), False, Outcome.SUCCESS),
        (_api_error(500), False, Outcome.FAILURE),
        (_api_error(503), False, Outcome.FAILURE),
        (_api_error(500), True, Outcome.IGNORED),  # the registry failed, the engine answered
        (requests.ConnectionError("refused"), False, Outcome.FAILURE),
        (requests.ReadTimeout("slow"), False, Outcome.FAILURE),
        (docker.errors.DockerException("Error while fetching server API version"), False, Outcome.FAILURE),
        (ConnectionRefusedError(), True, Outcome.FAILURE),
        (KeyError("our own bug"), False, Outcome.IGNORED),
    ],
)
def test_what_a_failed_call_tells_the_breaker(exc, pulling, outcome):
    assert engine_outcome(exc, pulling=pulling) is outcome


def test_no_answer_is_engine_unreachable_and_counted(db, settings, stopped_engine_url, engine_breaker):
    settings.DOCKER_URL = stopped_engine_url

    with pytest.raises(EngineUnreachable, match=f"^Docker engine unreachable at {stopped_engine_url}: "):
        DockerBackend().list_instances("anything")

    engine_breaker.flush()
    assert engine_breaker.metrics.failed_calls == 1


def test_the_client_keeps_a_pool_as_large_as_the_parallel_stats_calls(settings, docker_client, engine_breaker):
    settings.SCALING_STATS_WORKERS = 32
    with DockerBackend() as backend:
        adapter = backend.client.api.get_adapter("http+docker://localhost/")
        engine_breaker.flush()
        built = engine_breaker.metrics

    assert adapter.max_pool_size == 32
    assert built.successful_calls == 1  # building the client asked the engine its version, through the breaker
