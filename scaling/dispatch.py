"""The scaling step of the master tick: one evaluation task per enabled policy, as a group.

The step only selects ids and publishes; the work (engine calls, ~1 s stats, drains)
happens in the tasks, each under its service's lock, so a slow or broken service never
delays the others or the tick. A database or broker failure fails the step with its
reason (``StepFailed``); the tick records it and runs the other steps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from celery import group
from django.conf import settings

from core.tick import StepFailed, tick_step
from scaling.models import ScalingPolicy, ScalingTrigger

logger = logging.getLogger(__name__)


def publish_evaluations(
    policy_ids: Sequence[int], trigger: str = ScalingTrigger.TICK, force_dry_run: bool = False
) -> int:
    """Publish one evaluation per policy; each expires when the next tick would redo it."""
    from scaling.tasks import evaluate_policy

    if not policy_ids:
        return 0
    group(
        evaluate_policy.si(policy_id, trigger, force_dry_run).set(expires=settings.TICK_SECONDS)
        for policy_id in policy_ids
    ).apply_async()
    return len(policy_ids)


@tick_step("scaling", order=20)
def dispatch_scaling(now: datetime) -> dict[str, int]:
    try:
        policy_ids = list(ScalingPolicy.objects.filter(enabled=True).order_by("id").values_list("id", flat=True))
    except Exception as exc:
        raise StepFailed(f"could not read the scaling policies: {type(exc).__name__}: {exc}") from exc
    try:
        dispatched = publish_evaluations(policy_ids)
    except Exception as exc:
        raise StepFailed(
            f"could not publish {len(policy_ids)} evaluations: {type(exc).__name__}: {exc}",
            {"scaling_policies": len(policy_ids), "scaling_dispatched": 0},
        ) from exc
    return {"scaling_policies": len(policy_ids), "scaling_dispatched": dispatched}
