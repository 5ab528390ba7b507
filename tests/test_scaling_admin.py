"""The scaling admin: a changelist that never calls the engine, and audited, permission-checked actions."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.guards import docker_engine
from scaling.models import ScalingEvent, ScalingPolicy
from scaling.service import AutoScalingService
from scaling.tasks import EVALUATE_TASK_NAME
from tests import test_scaling_docker
from tests.test_scaling_docker import broker, make_policy

CHANGELIST = "/admin/scaling/scalingpolicy/"
OBSERVED_AT = timezone.make_aware(datetime(2026, 3, 4, 5, 6, 7))

docker_client = test_scaling_docker.docker_client
service_name = test_scaling_docker.service_name


def staff_client(*codenames: str) -> Client:
    user = get_user_model().objects.create_user(f"op-{'-'.join(codenames)}", password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def policy(service: str, **fields) -> ScalingPolicy:
    return ScalingPolicy.objects.create(service=service, image="fcp-tiny:latest", target_cpu_percent=60.0, **fields)


class SilentEngine:
    """A socket that listens and never answers: any call would connect and then hang."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.sock.setblocking(False)

    def connections(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1


@pytest.fixture
def silent_engine(settings, tmp_path: Path) -> Iterator[SilentEngine]:
    engine = SilentEngine(tmp_path / "docker.sock")
    settings.DOCKER_URL = f"unix://{engine.path}"
    settings.DOCKER_TIMEOUT = 2
    yield engine
    engine.sock.close()


# --- The changelist ------------------------------------------------------------------------


def test_the_changelist_shows_the_last_observed_counts_without_calling_the_engine(admin_client, silent_engine):
    policy("payments", observed_instances=3, observed_at=OBSERVED_AT)
    policy("search")  # never evaluated

    page = admin_client.get(CHANGELIST).content.decode()

    when = timezone.localtime(OBSERVED_AT).strftime("%Y-%m-%d %H:%M:%S")
    assert f"3 at {when}" in page
    assert "not observed yet" in page
    assert "Instances (observed)" in page
    assert silent_engine.connections() == 0


def test_the_changelist_costs_the_same_queries_for_1_and_20_policies(admin_client, silent_engine):
    def queries_for_changelist() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(CHANGELIST).status_code == 200
        return len(captured)

    ScalingPolicy.objects.all().delete()  # the data migration's defaults
    first = policy("svc-0", observed_instances=1, observed_at=OBSERVED_AT)
    ScalingEvent.objects.create(
        service=first.service, policy=first, action="up", from_instances=0, desired_instances=1, to_instances=1,
        reason="r", rule="metric:cpu_percent",
    )  # fmt: skip
    one = queries_for_changelist()
    for n in range(1, 20):
        created = policy(f"svc-{n}", observed_instances=n, observed_at=OBSERVED_AT)
        ScalingEvent.objects.create(
            service=created.service, policy=created, action="none", from_instances=n, desired_instances=n,
            to_instances=n, reason="r", rule="tolerance",
        )  # fmt: skip
    twenty = queries_for_changelist()

    assert ScalingPolicy.objects.count() == 20
    assert one == twenty
    assert silent_engine.connections() == 0


@pytest.mark.docker
def test_an_evaluation_records_what_the_engine_reported_and_keeps_it_while_the_engine_is_down(
    db, admin_client, docker_client, service_name, settings, tmp_path
):
    make_policy(service_name, min_instances=1)
    AutoScalingService().run(service_name)  # starts one instance
    seen = ScalingPolicy.objects.get(service=service_name)
    updated_at = seen.updated_at

    settings.DOCKER_URL = f"unix://{tmp_path}/gone.sock"
    AutoScalingService().run(service_name)
    docker_engine().forget()
    page = admin_client.get(f"{CHANGELIST}?q={service_name}").content.decode()

    after = ScalingPolicy.objects.get(service=service_name)
    assert seen.observed_instances == 1
    assert seen.observed_at is not None
    assert (after.observed_instances, after.observed_at) == (1, seen.observed_at)  # the last thing actually seen
    assert after.updated_at == updated_at  # the operator's "last edited" is not the machine's
    assert f"1 at {timezone.localtime(seen.observed_at):%Y-%m-%d %H:%M:%S}" in page
    assert "engine_unreachable FAILED" in page


# --- Actions: the change permission, and an audit entry per policy ----------------------------


SCALING_QUEUE = "scaling"  # CELERY_TASK_ROUTES sends scaling.* there


def published_evaluations(policy_id: int) -> list[Any]:
    """The evaluation messages for ``policy_id`` waiting in the broker's scaling queue."""
    found = []
    for raw in broker().lrange(SCALING_QUEUE, 0, -1):
        headers = json.loads(raw).get("headers") or {}
        if headers.get("task") == EVALUATE_TASK_NAME and headers.get("argsrepr", "").startswith(f"({policy_id},"):
            found.append(raw)
    return found


@pytest.fixture
def evaluations() -> Iterator[list[int]]:
    """Policy ids whose published evaluations are removed after the test (no worker runs them)."""
    ids: list[int] = []
    yield ids
    for policy_id in ids:
        for raw in published_evaluations(policy_id):
            broker().lrem(SCALING_QUEUE, 0, raw)


def evaluate_now(client: Client, *policies: ScalingPolicy):
    return client.post(
        CHANGELIST,
        {"action": "evaluate_now_dry_run", "_selected_action": [p.pk for p in policies], "index": 0},
        follow=True,
    )


def test_a_view_only_user_cannot_evaluate_now_and_nothing_is_queued_or_logged(db, evaluations):
    target = policy("payments")
    evaluations.append(target.pk)
    client = staff_client("view_scalingpolicy")
    listing = client.get(CHANGELIST)

    evaluate_now(client, target)

    assert listing.status_code == 200  # they can look
    assert "evaluate_now_dry_run" not in listing.content.decode()  # and are not offered the action
    assert published_evaluations(target.pk) == []
    assert not ScalingEvent.objects.exists()
    assert not LogEntry.objects.exists()


def test_a_change_user_evaluates_now_and_leaves_an_audit_entry_per_policy(db, evaluations):
    east, west = policy("east"), policy("west")
    evaluations.extend([east.pk, west.pk])
    client = staff_client("view_scalingpolicy", "change_scalingpolicy")

    page = evaluate_now(client, east, west).content.decode()

    assert "Queued a dry-run evaluation of 2 policies" in page
    assert [len(published_evaluations(p.pk)) for p in (east, west)] == [1, 1]
    entries = LogEntry.objects.order_by("object_repr").values_list(
        "object_repr", "object_id", "content_type__model", "action_flag", "user__username", "change_message"
    )
    who, what = "op-view_scalingpolicy-change_scalingpolicy", "Evaluate now (dry run): evaluation queued"
    assert list(entries) == [
        ("east", str(east.pk), "scalingpolicy", CHANGE, who, what),
        ("west", str(west.pk), "scalingpolicy", CHANGE, who, what),
    ]
