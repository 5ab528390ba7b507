"""Celery tasks for scaling: thin wrappers that take a policy id and call the service."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings

from scaling.models import ScalingPolicy, ScalingTrigger
from scaling.service import AutoScalingService

EVALUATE_TASK_NAME = "scaling.evaluate_policy"


# No late acks: a scaling decision is only good for the tick that made it. If the worker
# dies, the next tick decides again from fresh metrics instead of Redis redelivering a
# stale one hours later (visibility timeout).
@shared_task(
    name=EVALUATE_TASK_NAME,
    ignore_result=True,
    acks_late=False,
    soft_time_limit=settings.SCALING_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.SCALING_TASK_TIME_LIMIT,
)
def evaluate_policy(policy_id: int, trigger: str = ScalingTrigger.TICK, force_dry_run: bool = False) -> dict[str, Any]:
    """Evaluate and scale one policy's service under its per-service lock."""
    service = ScalingPolicy.objects.filter(pk=policy_id).values_list("service", flat=True).first()
    if service is None:
        return {"policy_id": policy_id, "skipped": "policy deleted"}
    return AutoScalingService().run(service, trigger=trigger, force_dry_run=force_dry_run)
