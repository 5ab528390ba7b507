"""Setting a new secret on a credential retries its failing fabrics at once (sync.credential_rotation)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from freezegun import freeze_time

from core.models import Credential
from sync.models import Fabric, SyncStatus
from tests.factories import make_fabric

pytestmark = pytest.mark.django_db

HOUR = timedelta(hours=1)


def _credential(name: str = "git-host") -> Credential:
    credential = Credential(name=name, username="deploy")
    credential.set_secret("first-s3cret")
    credential.save()
    return credential


def _failing(credential: Credential, **fields: Any) -> Fabric:
    fields = {"sync_status": SyncStatus.ERROR, "consecutive_failures": 3, **fields}
    return make_fabric("https://git.example.com/fabric.git", git_credential=credential,
                       next_sync_at=timezone.now() + HOUR, **fields)  # fmt: skip


def test_a_rotated_secret_makes_the_failing_fabrics_that_use_it_due_now_and_nothing_else():
    with freeze_time("2026-12-03 10:00:00") as clock:
        credential, other = _credential(), _credential("other")
        failing = _failing(credential)
        suspended = _failing(credential, sync_status=SyncStatus.SUSPENDED, consecutive_failures=10)
        healthy = make_fabric(
            "https://git.example.com/fabric.git", git_credential=credential, next_sync_at=timezone.now() + HOUR
        )
        elsewhere = _failing(other)
        backoff_ends = timezone.now() + HOUR

        clock.tick(timedelta(minutes=5))  # the operator notices and sets the new token
        credential.set_secret("second-s3cret")
        credential.save()

        due = {fabric.name: fabric.next_sync_at for fabric in Fabric.objects.all()}
        assert due[failing.name] == timezone.now()
        assert due[suspended.name] == backoff_ends  # an operator lifts a suspension, not a rotation
        assert due[healthy.name] == backoff_ends  # not failing: its schedule is right as it is
        assert due[elsewhere.name] == backoff_ends
        failing.refresh_from_db()
        assert failing.consecutive_failures == 3  # the count says what happened; the next outcome resets it


@freeze_time("2026-12-03 10:00:00")
def test_saving_a_credential_without_a_new_secret_changes_no_schedule():
    credential = _credential()
    failing = _failing(credential)

    credential.description = "the deploy token of the fabric repositories"
    credential.save()

    failing.refresh_from_db()
    assert failing.next_sync_at == timezone.now() + HOUR


def test_a_rotated_cluster_token_brings_forward_the_fabrics_whose_live_step_it_failed():
    from sync.models import FabricCluster

    with freeze_time("2026-12-03 10:00:00") as clock:
        token = Credential(name="k8s", kind=Credential.Kind.BEARER_TOKEN)
        token.set_secret("first-t0ken")
        token.save()
        later = timezone.now() + HOUR

        def with_cluster(name: str, last_error: str) -> Fabric:
            fabric = make_fabric("https://git.example.com/fabric.git", name=name, next_sync_at=later)
            FabricCluster.objects.create(
                fabric=fabric, server_url="https://kube.example.com:6443", token=token, last_error=last_error
            )
            return fabric

        rejected = with_cluster("rejected", "the cluster kube.example.com:6443 rejected the bearer token (401)")
        comparing = with_cluster("comparing", "")

        clock.tick(timedelta(minutes=5))
        token.set_secret("second-t0ken")
        token.save()

        due = {fabric.name: fabric.next_sync_at for fabric in Fabric.objects.all()}
        assert due[rejected.name] == timezone.now()  # its drift is unknown: compare again now
        assert due[comparing.name] == later  # its live step works: its schedule is right as it is
        rejected.refresh_from_db()
        assert rejected.consecutive_failures == 0  # a live error never failed the Git sync
