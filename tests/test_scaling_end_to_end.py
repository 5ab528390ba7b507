"""End to end: a backlog on a real Redis queue scales the ``worker`` policy's Celery workers.

Everything is real: the tick publishes the evaluation to Redis, a Celery worker
process evaluates it, the scaler starts containers on the Docker engine, and each
container runs a real ``celery worker`` that consumes the backlog from the test Redis.

The containers use ``fcp-hostpython:latest`` (``scripts/docker-engine.sh``): busybox plus
the /lib links, with the host's /usr, the Python install and this repository
bind-mounted read-only, on the host network. No registry is reachable to pull a Python
image, and the vfs storage driver copies a whole image for every container, so
bind-mounting the interpreter is what makes three worker containers start in seconds.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest

from core.tick import run_tick
from project.celery_app import app
from scaling.decisions import Rule, ScaleDirection
from scaling.docker_backend import hostname_of
from scaling.drain import worker_loads
from scaling.metrics.celery_queues import priority_lists
from scaling.models import ScalingEvent, ScalingPolicy
from scaling.service import AutoScalingService
from tests import test_scaling_docker
from tests.conftest import ROOT, require, wait_for, worker_database_url
from tests.test_scaling_docker import broker, last_event, owned, remove_service_containers
from tests.test_scaling_locks import lock_holder

pytestmark = [pytest.mark.docker, pytest.mark.worker]

HOSTPYTHON_IMAGE = "fcp-hostpython:latest"
HOLD_TASK = "tests.scaling.hold"
STABILISATION_SECONDS = 20  # long enough for three worker containers to boot and drain the backlog
docker_client = test_scaling_docker.docker_client


@app.task(name=HOLD_TASK)
def hold(seconds: float) -> float:
    """A task that keeps its worker busy; the worker containers import it with ``-I``."""
    time.sleep(seconds)
    return seconds


def _read_only_mounts() -> list[str]:
    """The host paths a container needs to run this repository's Python."""
    paths = {Path("/usr"), Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), ROOT.resolve()}
    # Drop paths already inside another mounted path.
    kept = [p for p in paths if not any(other != p and p.is_relative_to(other) for other in paths)]
    return [f"{path}:{path}:ro" for path in sorted(kept)]


def host_python_allowances() -> dict[str, str]:
    """What the worker containers need and the deployment defaults refuse: the host
    network and read-only bind mounts of the host's Python and this repository. The
    tests allow exactly that, as an operator would, in the environment of every process
    that validates or starts them."""
    roots = [mount.split(":")[0] for mount in _read_only_mounts()]
    return {"SCALING_ALLOWED_NETWORKS": "host", "SCALING_ALLOWED_BIND_ROOTS": ",".join(roots)}


@pytest.fixture(autouse=True)
def _allow_host_python(settings) -> None:
    for name, value in host_python_allowances().items():
        setattr(settings, name, value.split(","))


def service_for(queue: str) -> str:
    """A service name of this test's own: the engine is shared with other test sessions,
    and a fixed name would make each count (and clean up) the other's containers."""
    return f"worker-{queue.removeprefix('e2e-')}"


def worker_policy(queue: str, settings) -> ScalingPolicy:
    """A copy of the data migration's ``worker`` policy (when it is still there) under this
    test's own service name, pointed at the test queue and the host Python."""
    fields = {
        "enabled": True,
        "dry_run": False,
        "min_instances": 1,
        "max_instances": 3,
        "target_queue_depth_per_instance": 5.0,
        "target_queue_latency_seconds": None,
        "queues": [queue],
        "celery_worker": True,
        "scale_up_step_limit": 4,
        "scale_down_stabilization_seconds": STABILISATION_SECONDS,
        "cooldown_seconds": 0,
        "image": HOSTPYTHON_IMAGE,
        "command": [
            sys.executable, "-m", "celery", "-A", "project", "worker", "-Q", queue,
            "--pool", "threads", "--concurrency", "2", "--without-mingle", "--without-gossip", "--loglevel", "INFO",
            "--include", __name__,
        ],
        "environment": {
            "DATABASE_URL": worker_database_url(),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "CELERY_RESULT_BACKEND": settings.CELERY_RESULT_BACKEND,
            "CACHE_URL": settings.CACHES["default"]["LOCATION"],
            "CACHE_KEY_PREFIX": settings.CACHES["default"]["KEY_PREFIX"],
            "DJANGO_SECRET_KEY": "end-to-end-test-only",
            "VAR_DIR": "/tmp/fcp-var",
            "PYTHONPATH": str(ROOT),
            "PYTHONDONTWRITEBYTECODE": "1",
        },
        "network": "host",
        "volumes": _read_only_mounts(),
        "working_dir": str(ROOT),
        "stop_timeout": 10,
    }  # fmt: skip
    # A transactional test before this one may have flushed the migration's rows.
    base: dict[str, Any] = dict(ScalingPolicy.objects.filter(service="worker").values().first() or {})
    for generated in ("id", "created_at", "updated_at"):
        base.pop(generated, None)
    policy = ScalingPolicy.objects.create(**{**base, **fields, "service": service_for(queue)})
    policy.full_clean()
    return policy


def tick_and_wait_for_event(service: str, log: str) -> ScalingEvent:
    """One tick, then the event its evaluation recorded on the worker."""
    before = ScalingEvent.objects.filter(service=service).count()
    summary = run_tick()
    assert summary["metrics"]["scaling"]["scaling_dispatched"] == 1, summary
    wait_for(lambda: ScalingEvent.objects.filter(service=service).count() > before, timeout=60, message=log)
    # The event is written under the lock: let it go before the next tick.
    wait_for(lambda: lock_holder(service) is None, timeout=10)
    return last_event(service)


@pytest.fixture
def e2e_queue(docker_client):
    try:
        docker_client.images.get(HOSTPYTHON_IMAGE)
    except docker.errors.ImageNotFound:
        require(False, f"needs the {HOSTPYTHON_IMAGE} image: run `bash scripts/docker-engine.sh`")
    queue = f"e2e-{uuid.uuid4().hex[:8]}"
    remove_service_containers(docker_client, service_for(queue))
    yield queue
    remove_service_containers(docker_client, service_for(queue))
    broker().delete(*priority_lists(queue))


def test_a_backlog_scales_real_celery_workers_up_and_down_after_the_stabilisation_window(
    worker_factory, docker_client, e2e_queue, settings
):
    scaler = worker_factory(
        concurrency=1, SCALING_WORKER_SOFT_TIME_LIMIT="10", SCALING_DRAIN_POLL_SECONDS="0.2", **host_python_allowances()
    )
    policy = worker_policy(e2e_queue, settings)
    backlog = [app.send_task("celery.accumulate", args=[n], queue=e2e_queue) for n in range(12)]

    up = tick_and_wait_for_event(service_for(e2e_queue), scaler.log())

    assert (up.action, up.from_instances, up.to_instances, up.rule) == (ScaleDirection.UP, 0, 3, "metric:queue_depth")
    assert up.success, up.error
    assert up.metrics["queue_depth"]["value"] == 12
    assert len(owned(docker_client, service_for(e2e_queue))) == 3
    # The containers' Celery workers consume the backlog for real.
    assert [result.get(timeout=90) for result in backlog] == [[n] for n in range(12)]
    wait_for(lambda: broker().llen(e2e_queue) == 0, timeout=10)

    after_backlog = []
    while True:
        event = tick_and_wait_for_event(service_for(e2e_queue), scaler.log())
        if event.action != ScaleDirection.NONE:
            break
        after_backlog.append(event)
        assert (event.created_at - up.created_at).total_seconds() <= STABILISATION_SECONDS + 1
        # Real time on purpose: the window is judged by the worker process's clock,
        # which freezegun cannot move (decisions.py's window is time-travel tested).
        # One tick a second walks through the window without flooding the event log.
        time.sleep(1)

    assert after_backlog, "the first tick after the backlog must still be inside the window"
    assert {(e.rule, e.to_instances) for e in after_backlog} == {(str(Rule.STABILIZATION), 3)}
    down = event
    assert (down.action, down.from_instances, down.to_instances, down.success) == (ScaleDirection.DOWN, 3, 1, True)
    assert (down.created_at - up.created_at).total_seconds() >= STABILISATION_SECONDS
    assert [d["drained"] for d in down.details["drained"]] == [True, True]
    assert len(down.details["stopped"]) == 2
    assert down.details["stop_timeout"] == 10
    assert len(owned(docker_client, service_for(e2e_queue))) == 1
    assert policy.min_instances == 1


def test_scale_down_stops_the_idle_worker_and_never_a_busy_one(db, docker_client, e2e_queue, settings):
    settings.SCALING_WORKER_SOFT_TIME_LIMIT = 10
    policy = worker_policy(e2e_queue, settings)
    ScalingPolicy.objects.filter(pk=policy.pk).update(min_instances=0)
    scaler = AutoScalingService()
    started = scaler.scale_to(service_for(e2e_queue), 2)
    assert started is not None
    assert started.to_instances == 2
    hostnames = [hostname_of(c) for c in owned(docker_client, service_for(e2e_queue))]
    wait_for(lambda: all(load.node for load in worker_loads(app, hostnames).values()), timeout=60)

    busy_task = hold.apply_async((6,), queue=e2e_queue)

    def busy_hosts() -> list[str]:
        return [host for host, load in worker_loads(app, hostnames).items() if load.active]

    [busy_host] = wait_for(busy_hosts, timeout=20)
    event = scaler.scale_to(service_for(e2e_queue), 0)
    assert event is not None

    assert (event.action, event.from_instances, event.to_instances) == (ScaleDirection.DOWN, 2, 1)
    assert (event.rule, event.success) == (str(Rule.BUSY_WORKERS), True)
    assert event.details["busy_workers"] == 1
    assert [hostname_of(c) for c in owned(docker_client, service_for(e2e_queue))] == [busy_host]
    assert busy_task.get(timeout=30) == 6  # finished, not killed
