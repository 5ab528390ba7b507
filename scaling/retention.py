"""Which scaling history may be deleted (rules for ``core.retention``; docs/architecture.md).

1. Events that acted or failed (up, down, any failure) are kept ``RETENTION_DAYS``.
2. "No change" decisions that succeeded are kept by count: the newest
   ``RETENTION_NO_CHANGE_PER_SERVICE`` of each service, whatever their age.
3. Never deleted, however old: the latest event of a service (the admin's last
   decision) and its latest successful scaling, live and dry-run alike (where its
   cooldown starts, ``scaling.planning.last_scaled_at``).
4. Recommendations older than every stabilisation window: ``plan`` prunes those of the
   policies it evaluates; this catches the disabled ones.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import reduce
from operator import or_

from django.conf import settings
from django.db.models import Exists, Max, OuterRef, Q, QuerySet

from core.retention import retention_rule
from scaling.decisions import ScaleDirection
from scaling.models import ScalingEvent, ScalingPolicy, ScalingRecommendation

NO_CHANGE = Q(action=ScaleDirection.NONE, success=True)
SCALED = Q(action__in=[ScaleDirection.UP, ScaleDirection.DOWN], success=True)


def _newer(events: QuerySet[ScalingEvent]) -> QuerySet[ScalingEvent]:
    """Those of ``events`` of the outer event's service recorded after it (strictly: ties both stay)."""
    return events.filter(created_at__gt=OuterRef("created_at"), service=OuterRef("service"))


@retention_rule("scaling_events_expired", ScalingEvent, order=30)
def expired_events(now: datetime, limit: int) -> list[int]:
    """Rule 1 with the exceptions of rule 3."""
    cutoff = now - timedelta(days=settings.RETENTION_DAYS)
    scaled = ScalingEvent.objects.filter(SCALED)
    rows = (
        ScalingEvent.objects.filter(created_at__lt=cutoff)
        .exclude(NO_CHANGE)
        .filter(Exists(_newer(ScalingEvent.objects.all())))
        .exclude(SCALED & ~Exists(_newer(scaled)))
        .exclude(SCALED & Q(dry_run=False) & ~Exists(_newer(scaled.filter(dry_run=False))))
    )
    return list(rows.order_by().values_list("pk", flat=True)[:limit])


@retention_rule("scaling_events_no_change", ScalingEvent, order=40)
def no_change_beyond_the_newest(now: datetime, limit: int) -> list[int]:
    """Rule 2: one query per service for its K-th newest "no change" (services are few), one for the rest."""
    keep = max(1, settings.RETENTION_NO_CHANGE_PER_SERVICE)
    routine = ScalingEvent.objects.filter(NO_CHANGE).order_by()
    older = []
    for service in routine.values_list("service", flat=True).distinct():
        newest = routine.filter(service=service).order_by("-created_at", "-id")
        cut = next(iter(newest.values_list("created_at", flat=True)[keep - 1 : keep]), None)
        if cut is not None:
            older.append(Q(service=service, created_at__lt=cut))
    if not older:
        return []
    return list(routine.filter(reduce(or_, older)).values_list("pk", flat=True)[:limit])


@retention_rule("scaling_recommendations_expired", ScalingRecommendation, order=50)
def expired_recommendations(now: datetime, limit: int) -> list[int]:
    """Rule 4: older than the longest stabilisation window of any policy (and the pruning ``plan`` does)."""
    longest = ScalingPolicy.objects.aggregate(longest=Max("scale_down_stabilization_seconds"))["longest"] or 0
    keep = max(longest, settings.SCALING_RECOMMENDATION_RETENTION)
    rows = ScalingRecommendation.objects.filter(recorded_at__lt=now - timedelta(seconds=keep))
    return list(rows.order_by().values_list("pk", flat=True)[:limit])
