"""The database side of a decision: history and cooldown in, the new recommendation out.

``decide`` is pure; this module feeds it what other processes recorded (the
recommendations of the stabilisation window, the last successful scaling action)
and records this tick's recommendation for the ticks after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from django.conf import settings

from scaling.decisions import Decision, MetricReading, PolicySpec, ScaleDirection, decide
from scaling.models import ScalingEvent, ScalingPolicy, ScalingRecommendation


def spec_for(policy: ScalingPolicy) -> PolicySpec:
    return PolicySpec(
        service=policy.service,
        min_instances=policy.min_instances,
        max_instances=policy.max_instances,
        targets=policy.targets(),
        tolerance=policy.tolerance,
        scale_up_step_limit=policy.scale_up_step_limit,
        stabilization_seconds=policy.scale_down_stabilization_seconds,
        cooldown_seconds=policy.cooldown_seconds,
        stale_after_seconds=settings.SCALING_METRIC_STALE_SECONDS,
    )


def last_scaled_at(policy: ScalingPolicy) -> datetime | None:
    """When the service last scaled successfully: the start of its cooldown.

    Dry-run events count only for a policy in dry-run mode, so that a dry run of a live
    policy (the admin's "Evaluate now") never delays real scaling.
    """
    events = ScalingEvent.objects.filter(
        service=policy.service, success=True, action__in=[ScaleDirection.UP, ScaleDirection.DOWN]
    )
    if not policy.dry_run:
        events = events.filter(dry_run=False)
    return events.order_by("-created_at").values_list("created_at", flat=True).first()


def recent_recommendations(policy: ScalingPolicy, now: datetime) -> list[tuple[datetime, int]]:
    since = now - timedelta(seconds=policy.scale_down_stabilization_seconds)
    rows = ScalingRecommendation.objects.filter(policy=policy, recorded_at__gte=since, recorded_at__lte=now)
    return list(rows.values_list("recorded_at", "recommended_instances"))


def plan(policy: ScalingPolicy, current: int, readings: Mapping[str, MetricReading], now: datetime) -> Decision:
    """Decide for ``policy`` now, and record the recommendation for the stabilisation window."""
    decision = decide(
        spec_for(policy), current, readings, recent_recommendations(policy, now), last_scaled_at(policy), now
    )
    ScalingRecommendation.objects.create(policy=policy, recommended_instances=decision.recommended, recorded_at=now)
    keep = max(policy.scale_down_stabilization_seconds, settings.SCALING_RECOMMENDATION_RETENTION)
    ScalingRecommendation.objects.filter(policy=policy, recorded_at__lt=now - timedelta(seconds=keep)).delete()
    return decision


def cooldown_remaining(policy: ScalingPolicy, now: datetime) -> float:
    last = last_scaled_at(policy)
    if last is None or policy.cooldown_seconds <= 0:
        return 0.0
    return max(0.0, (last + timedelta(seconds=policy.cooldown_seconds) - now).total_seconds())
