"""Many beats, many workers, and operators' "Sync now" at the same instant.

Real: several ``manage.py tick`` processes started together each round (what two or
three beats firing at once do), several worker processes, and the admin's manual-sync
path (``enqueue_manual_syncs``) in yet another process, all on a private stack.

Invariants: the concurrent ticks' claims are disjoint and together cover every due
fabric exactly once; no fabric is synced twice at once; every fabric is synced each
round; nothing is left QUEUED or SYNCING.
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta
from functools import partial

import pytest
from django.utils import timezone

from sync.models import Fabric
from tests.chaos.conftest import make_fabrics
from tests.chaos.invariants import assert_healthy_history, not_synced_since
from tests.chaos.scale import ChaosScale
from tests.chaos.stack import PYTHON, ROOT, ChaosStack
from tests.conftest import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]

BEATS = 3
MANUAL = (
    "from django.utils import timezone; from sync.models import Fabric; "
    "from sync.operations import enqueue_manual_syncs; "
    "o = enqueue_manual_syncs(Fabric.objects.order_by('?')[:{n}], timezone.now()); "
    "print(len(o.enqueued), len(o.busy))"
)


def _all_synced_since(since: datetime) -> bool:
    return not not_synced_since(since)


def test_simultaneous_ticks_and_manual_syncs_never_sync_a_fabric_twice_at_once(
    chaos_stack: ChaosStack, chaos_scale: ChaosScale
) -> None:
    count = chaos_scale.n(30, minimum=10)
    make_fabrics(chaos_stack, count, repos=3, files=10)
    for index in range(chaos_scale.workers):
        chaos_stack.start_worker(f"worker{index}", concurrency=2)

    for _ in range(chaos_scale.rounds):
        with chaos_stack.orm():
            since = timezone.now()
            Fabric.objects.update(next_sync_at=since - timedelta(seconds=1))
        env = chaos_stack.env()
        ticks = [
            subprocess.Popen([PYTHON, "manage.py", "tick"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
            for _ in range(BEATS)
        ]
        manual = subprocess.Popen(
            [PYTHON, "manage.py", "shell", "-c", MANUAL.format(n=count // 3)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        dispatched = 0
        for tick in ticks:
            out, _ = tick.communicate(timeout=120)
            assert tick.returncode == 0
            dispatched += json.loads(out)["metrics"]["sync"]["fabrics_dispatched"]
        out, _ = manual.communicate(timeout=120)
        assert manual.returncode == 0
        enqueued, busy = (int(n) for n in out.split()[-2:])
        # Every due fabric went to exactly one claimer (a tick or the manual path);
        # a manual sync of a fabric a tick holds is refused as busy, or runs after it.
        assert dispatched + enqueued >= count
        assert dispatched <= count  # no fabric claimed by two ticks
        assert enqueued + busy == count // 3
        with chaos_stack.orm():
            wait_for(
                partial(_all_synced_since, since), timeout=chaos_scale.drain(120), message="a fabric was not synced"
            )
            wait_for(lambda: not Fabric.objects.filter(sync_status__in=["queued", "syncing"]).exists(), timeout=60)
            assert_healthy_history()
