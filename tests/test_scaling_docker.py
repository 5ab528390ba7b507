"""Scaling against a real Docker engine (``scripts/docker-engine.sh``): start, count, stop, refuse.

Containers run ``fcp-tiny:latest`` (busybox). Every test uses its own service name and
removes every container carrying that service label afterwards, ours or not.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import redis
from django.core.management import CommandError, call_command

from core.guards import docker_engine
from project.celery_app import app
from scaling.decisions import Rule, ScaleDirection
from scaling.docker_backend import OWNER_LABEL, SERVICE_LABEL, DockerBackend
from scaling.metrics.celery_queues import broker_client, priority_lists
from scaling.metrics.docker_stats import gather_usage
from scaling.models import ScalingEvent, ScalingPolicy
from scaling.service import AutoScalingService
from tests.conftest import ROOT, require, wait_for

pytestmark = pytest.mark.docker

TINY_IMAGE = "fcp-tiny:latest"
# Exits on SIGTERM at once (busybox sleep as PID 1 would ignore it until SIGKILL).
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


def engine_client(url: str | None = None) -> docker.DockerClient | None:
    try:
        client = docker.DockerClient(base_url=url or os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
        client.ping()
        return client
    except Exception:
        return None


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    client = engine_client()
    if client is None:
        require(False, "needs a Docker engine: run `bash scripts/docker-engine.sh`")
    assert client is not None
    try:
        client.images.get(TINY_IMAGE)
    except docker.errors.ImageNotFound:
        require(False, f"needs the {TINY_IMAGE} image: run `bash scripts/docker-engine.sh`")
    return client


def remove_service_containers(client: docker.DockerClient, service: str) -> None:
    for container in client.containers.list(all=True, filters={"label": f"{SERVICE_LABEL}={service}"}):
        container.remove(force=True)


@pytest.fixture
def service_name(docker_client: docker.DockerClient) -> Iterator[str]:
    name = f"t{uuid.uuid4().hex[:8]}"
    yield name
    remove_service_containers(docker_client, name)


def owned(client: docker.DockerClient, service: str) -> list:
    filters = {"label": [f"{OWNER_LABEL}=true", f"{SERVICE_LABEL}={service}"], "status": "running"}
    return client.containers.list(filters=filters)


def make_policy(service: str, **fields) -> ScalingPolicy:
    defaults = {
        "service": service,
        "enabled": True,
        "min_instances": 1,
        "max_instances": 3,
        "target_queue_depth_per_instance": 10.0,
        "queues": [f"{service}-q"],
        "scale_down_stabilization_seconds": 0,
        "cooldown_seconds": 0,
        "image": TINY_IMAGE,
        "command": SLEEPER,
        "stop_timeout": 5,
    }
    defaults.update(fields)
    policy = ScalingPolicy(**defaults)
    policy.full_clean()
    policy.save()
    return policy


@pytest.fixture
def backlog():
    """Publish ``n`` messages to a queue nobody consumes; the queue is deleted afterwards."""
    used: list[str] = []

    def publish(queue: str, n: int) -> None:
        used.append(queue)
        for i in range(n):
            app.send_task("celery.accumulate", args=[i], queue=queue)

    yield publish
    for queue in used:
        broker().delete(*priority_lists(queue))


def last_event(service: str) -> ScalingEvent:
    event = ScalingEvent.objects.filter(service=service).first()
    assert event is not None, f"no scaling event for {service}"
    return event


def broker() -> redis.Redis:
    client = broker_client()
    assert client is not None, "these tests need a Redis broker"
    return client


def test_a_backlog_scales_a_service_from_one_to_three_and_back_to_one(db, docker_client, service_name, backlog):
    policy = make_policy(service_name)
    scaler = AutoScalingService()

    scaler.run(service_name)  # nothing runs yet: the minimum comes first
    assert len(owned(docker_client, service_name)) == 1
    assert (last_event(service_name).action, last_event(service_name).rule) == (
        ScaleDirection.UP,
        "limit:min_instances",
    )
    first = owned(docker_client, service_name)[0]

    backlog(policy.queues[0], 25)  # 25 waiting / 10 per instance -> 3
    scaler.run(service_name)
    up = last_event(service_name)
    assert (up.action, up.from_instances, up.to_instances, up.rule) == (ScaleDirection.UP, 1, 3, "metric:queue_depth")
    assert up.success
    assert up.metrics["queue_depth"]["value"] == 25
    assert len(up.details["started"]) == 2
    assert len(owned(docker_client, service_name)) == 3

    broker().delete(*priority_lists(policy.queues[0]))  # the backlog is gone
    scaler.run(service_name)
    down = last_event(service_name)
    assert (down.action, down.from_instances, down.to_instances) == (ScaleDirection.DOWN, 3, 1)
    assert down.success
    remaining = owned(docker_client, service_name)
    assert [c.id for c in remaining] == [first.id]  # the newest instances went first
    assert sorted(down.details["stopped"]) == sorted(up.details["started"])
    assert docker_client.containers.list(all=True, filters={"label": f"{SERVICE_LABEL}={service_name}"}) == remaining

    history = scaler.get_scaling_history(3, service=service_name)
    status = next(s for s in scaler.get_current_status()["services"] if s["service"] == service_name)
    assert [(e["action"], e["from"], e["to"]) for e in history] == [("down", 3, 1), ("up", 1, 3), ("up", 0, 1)]
    assert status["instances"] == 1
    assert status["thresholds"] == {"queue_depth": 10.0}
    assert status["last_event"]["id"] == down.pk


def test_a_look_alike_container_without_the_ownership_label_is_never_touched(db, docker_client, service_name, backlog):
    look_alike = docker_client.containers.run(
        TINY_IMAGE, SLEEPER, detach=True, labels={SERVICE_LABEL: service_name, "service": service_name}
    )
    policy = make_policy(service_name, min_instances=0)
    scaler = AutoScalingService()

    scaler.run(service_name)
    assert last_event(service_name).from_instances == 0  # not counted
    backlog(policy.queues[0], 15)
    scaler.run(service_name)
    assert last_event(service_name).to_instances == 2
    broker().delete(*priority_lists(policy.queues[0]))
    scaler.run(service_name)
    down = last_event(service_name)
    manual = scaler.scale_to(service_name, 0)
    assert manual is not None

    assert (down.action, down.to_instances) == (ScaleDirection.DOWN, 0)
    assert (manual.action, manual.from_instances, manual.to_instances) == (ScaleDirection.NONE, 0, 0)
    with DockerBackend() as backend:
        refused = backend.stop_instance(look_alike, service_name, timeout=1)  # even when handed it directly
    look_alike.reload()
    assert (refused.ok, refused.error) == (False, "refused: not an owned instance of this service")
    assert look_alike.status == "running"
    assert look_alike.labels == {SERVICE_LABEL: service_name, "service": service_name}
    assert owned(docker_client, service_name) == []
    assert [c.id for c in docker_client.containers.list(filters={"label": f"service={service_name}"})] == [
        look_alike.id
    ]


def test_manual_scaling_is_recorded_and_respects_min_and_max(db, docker_client, service_name, capsys):
    make_policy(service_name, min_instances=1, max_instances=2)

    call_command("scale", service_name, "--to", "5")
    up = last_event(service_name)
    call_command("scale", service_name, "--to", "0")
    down = last_event(service_name)

    assert (up.trigger, up.action, up.to_instances, up.rule) == ("manual", ScaleDirection.UP, 2, "limit:max_instances")
    assert (down.trigger, down.action, down.to_instances, down.rule) == (
        "manual",
        ScaleDirection.DOWN,
        1,
        "limit:min_instances",
    )
    assert len(owned(docker_client, service_name)) == 1
    out = capsys.readouterr().out
    assert f"{service_name}: up 0 → 2 (limit:max_instances)" in out


def test_a_failed_start_is_recorded_and_leaves_nothing_behind(db, docker_client, service_name):
    make_policy(service_name, image="fcp-not-built-here:latest")

    result = AutoScalingService().run(service_name)

    event = last_event(service_name)
    assert result["success"] is False
    assert (event.action, event.to_instances, event.success) == (ScaleDirection.UP, 0, False)
    assert "failed to start" in event.error
    assert "fcp-not-built-here" in event.error
    assert docker_client.containers.list(all=True, filters={"label": f"{SERVICE_LABEL}={service_name}"}) == []


def test_stats_for_many_containers_take_about_as_long_as_one(db, docker_client, service_name):
    backend = DockerBackend()
    policy = make_policy(service_name)
    from scaling.actions import template_for

    for _ in range(6):
        assert backend.start_instance(service_name, template_for(policy)).ok
    containers = backend.list_instances(service_name)

    def timed(batch: list) -> tuple[float, list]:
        started = time.perf_counter()
        result = gather_usage(batch, max_workers=32)
        return time.perf_counter() - started, result

    # Medians of three runs each, interleaved: one slow sample on a loaded machine
    # must not decide. Each stats call takes about 1 s (the engine waits for a second
    # CPU sample), so six in turn would take about six times one.
    ones, sixes = [], []
    for _ in range(3):
        ones.append(timed(containers[:1])[0])
        elapsed, usages = timed(containers)
        sixes.append(elapsed)
    one, six = statistics.median(ones), statistics.median(sixes)
    backend.close()

    assert len(usages) == 6
    assert all(u.cpu_percent is not None and u.memory_percent is not None for u in usages), usages
    assert six < one * 2.5, f"6 containers took {six:.2f} s, one took {one:.2f} s: not concurrent"


# --- The engine stops -----------------------------------------------------------------------


@pytest.fixture
def private_engine(docker_client) -> Iterator[tuple[str, Path]]:
    """A second, private engine this test may stop without disturbing anyone else."""
    root = Path(tempfile.mkdtemp(prefix="fcp-eng-", dir="/tmp"))

    def start() -> None:
        subprocess.run(["bash", str(ROOT / "scripts/docker-engine.sh"), "--private", str(root)], check=True, timeout=90)

    start()
    url = f"unix://{root}/docker.sock"
    yield url, root
    stop_engine(root)
    shutil.rmtree(root, ignore_errors=True)
    docker_engine().forget()  # the failures it counted were this engine's, not the shared one's


def stop_engine(root: Path) -> None:
    pidfile = root / "docker.pid"
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text().strip())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=30, message="dockerd did not stop")


def test_a_stopped_engine_gives_a_clean_engine_unreachable_event_and_no_crash(db, private_engine, settings):
    url, root = private_engine
    settings.DOCKER_URL = url
    make_policy("engine-test", min_instances=0, target_queue_depth_per_instance=None, target_cpu_percent=50.0)
    scaler = AutoScalingService()
    scaler.run("engine-test")
    before = last_event("engine-test")

    stop_engine(root)
    result = scaler.run("engine-test")
    status = scaler.get_current_status()
    with pytest.raises(CommandError, match="engine unreachable"):
        call_command("scale", "engine-test", "--to", "1")

    assert before.success
    assert before.metrics["cpu_percent"]["note"] == "no running instances to read CPU from"
    assert result["success"] is False
    event = ScalingEvent.objects.filter(service="engine-test", trigger="tick").first()
    assert event is not None
    assert (event.action, event.rule, event.from_instances, event.to_instances) == (
        ScaleDirection.NONE,
        str(Rule.ENGINE_UNREACHABLE),
        0,
        0,
    )
    assert event.error.startswith(f"Docker engine unreachable at {url}")
    assert "no action taken" in event.reason
    assert status["engine"]["reachable"] is False
    assert next(s for s in status["services"] if s["service"] == "engine-test")["instances"] is None

    # And once the engine is back, scaling carries on.
    subprocess.run(["bash", str(ROOT / "scripts/docker-engine.sh"), "--private", str(root)], check=True, timeout=90)
    assert scaler.run("engine-test")["success"] is True
