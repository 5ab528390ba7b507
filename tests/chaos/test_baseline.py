"""Without a fault, the private stack syncs every due fabric once: the yardstick for the rest."""

from __future__ import annotations

import pytest
from django.utils import timezone

from sync.models import Fabric, SyncStatus
from tests.chaos.conftest import make_fabrics
from tests.chaos.invariants import assert_healthy_history, not_synced_since
from tests.chaos.scale import ChaosScale
from tests.chaos.stack import ChaosStack
from tests.conftest import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]


def test_one_tick_syncs_every_due_fabric_once_through_real_workers(
    chaos_stack: ChaosStack, chaos_scale: ChaosScale
) -> None:
    make_fabrics(chaos_stack, chaos_scale.fabrics)
    chaos_stack.start_worker(concurrency=2)
    with chaos_stack.orm():
        since = timezone.now()
    summary = chaos_stack.tick()
    assert summary["metrics"]["sync"]["fabrics_dispatched"] == chaos_scale.fabrics, summary

    with chaos_stack.orm():
        wait_for(lambda: not not_synced_since(since), timeout=chaos_scale.drain(120), message="not every fabric synced")
        assert set(Fabric.objects.values_list("sync_status", flat=True)) == {SyncStatus.IN_SYNC}
        assert_healthy_history()
