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
