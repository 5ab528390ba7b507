"""Which health history may be deleted (rules for ``core.retention``; docs/architecture.md).

Health transitions and healing attempts are kept ``RETENTION_DAYS``, except, however
old, the latest of each component (since when its status holds, what healing last did;
rows tied at that instant all stay) and an attempt still RUNNING. The healing budget
lives on ``ComponentHealth``, so no attempt row is needed to count it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Exists, OuterRef

from core.retention import retention_rule
from resilience.models import HealingAttempt, HealingOutcome, HealthTransition


@retention_rule("health_transitions_expired", HealthTransition, order=60)
def expired_transitions(now: datetime, limit: int) -> list[int]:
    newer = HealthTransition.objects.filter(at__gt=OuterRef("at"), component_id=OuterRef("component_id"))
    rows = HealthTransition.objects.filter(Exists(newer), at__lt=now - timedelta(days=settings.RETENTION_DAYS))
    return list(rows.order_by().values_list("pk", flat=True)[:limit])


@retention_rule("healing_attempts_expired", HealingAttempt, order=70)
def expired_attempts(now: datetime, limit: int) -> list[int]:
    newer = HealingAttempt.objects.filter(started_at__gt=OuterRef("started_at"), component_id=OuterRef("component_id"))
    rows = HealingAttempt.objects.filter(
        Exists(newer), started_at__lt=now - timedelta(days=settings.RETENTION_DAYS)
    ).exclude(outcome=HealingOutcome.RUNNING)
    return list(rows.order_by().values_list("pk", flat=True)[:limit])
