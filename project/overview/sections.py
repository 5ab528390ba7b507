"""The overview's sections, each a few queries answering one operator question.

- Fabrics: how many per sync status and per drift status, and which fail since when
  with what error (since ``Fabric.failing_since``, the start of the attempt that began
  the streak, as in the fabric changelist).
- Components: which are not healthy, and which are *stale* (no check for two ticks,
  ``resilience.verdict.display_status``), with when the sweeps last recorded anything.
- Breakers: those not closed, read live from Redis (the snapshot rows when Redis is away).
- Scaling: each policy's current and desired instances, and the latest scale actions.

Lists are capped (``LIST_LIMIT``) with the total alongside, so the page costs the same
for 10 or 10,000 fabrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Case, Count, F, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.urls import reverse

from core.guards import guard_description
from core.health import HealthStatus
from core.redaction import redact
from resilience import verdict
from resilience.models import CircuitBreakerState, ComponentHealth
from scaling.decisions import ScaleDirection
from scaling.models import ScalingEvent, ScalingPolicy
from sync.models import DriftStatus, Fabric, FabricCluster, SyncStatus

logger = logging.getLogger(__name__)

LIST_LIMIT = 20
RECENT_SCALING = 10
ERROR_CHARS = 300
FAILING = (SyncStatus.ERROR, SyncStatus.SUSPENDED)


# --- Fabrics ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FailingFabric:
    id: int
    name: str
    status: str
    status_label: str
    since: datetime | None
    consecutive_failures: int
    last_error: str
    url: str


@dataclass(frozen=True)
class DriftedFabric:
    id: int
    name: str
    counts: dict[str, int]
    compared_at: datetime | None
    last_error: str
    url: str


@dataclass(frozen=True)
class FabricSummary:
    total: int
    disabled: int
    by_status: list[tuple[str, str, int]]  # (status, label, count), every status
    by_drift: list[tuple[str, str, int]]  # fabrics with a cluster only
    failing_total: int
    failing: list[FailingFabric]
    drifted_total: int
    drifted: list[DriftedFabric]


def fabric_summary() -> FabricSummary:
    counts = dict(Fabric.objects.values_list("sync_status").annotate(n=Count("id")).order_by())
    disabled = Fabric.objects.filter(sync_enabled=False).count()
    drift = dict(FabricCluster.objects.values_list("drift_status").annotate(n=Count("id")).order_by())
    failing_rows = Fabric.objects.filter(Q(sync_status__in=FAILING) | Q(consecutive_failures__gt=0))
    failing = [
        FailingFabric(
            id=f.id,
            name=f.name,
            status=f.sync_status,
            status_label=f.get_sync_status_display(),
            since=f.failing_since or f.last_attempt_at,
            consecutive_failures=f.consecutive_failures,
            last_error=redact(f.last_error)[:ERROR_CHARS],
            url=reverse("admin:sync_fabric_change", args=[f.id]),
        )
        for f in failing_rows.order_by(Coalesce("failing_since", "last_attempt_at").asc(nulls_last=True), "name").only(
            "id", "name", "sync_status", "consecutive_failures", "failing_since", "last_error", "last_attempt_at"
        )[:LIST_LIMIT]
    ]
    drifted_rows = FabricCluster.objects.filter(drift_status=DriftStatus.OUT_OF_SYNC).select_related("fabric")
    drifted = [
        DriftedFabric(
            id=c.fabric_id,
            name=c.fabric.name,
            counts={k: int(v) for k, v in (c.drift_counts or {}).items() if k != "in_sync" and v},
            compared_at=c.drift_compared_at,
            last_error=redact(c.last_error)[:ERROR_CHARS],
            url=reverse("admin:sync_fabric_change", args=[c.fabric_id]),
        )
        for c in drifted_rows.defer("live_state", "prune_pending").order_by("fabric__name")[:LIST_LIMIT]
    ]
    return FabricSummary(
        total=sum(counts.values()),
        disabled=disabled,
        by_status=[(s.value, str(s.label), counts.get(s.value, 0)) for s in SyncStatus],
        by_drift=[(s.value, str(s.label), drift.get(s.value, 0)) for s in DriftStatus],
        failing_total=failing_rows.count(),
        failing=failing,
        drifted_total=drift.get(DriftStatus.OUT_OF_SYNC, 0),
        drifted=drifted,
    )


# --- Components ------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentProblem:
    name: str
    component_type: str
    critical: bool
    shown: str  # the display status: a HealthStatus value, or verdict.STALE
    status: str  # what the last check left
    since: datetime
    last_checked_at: datetime | None
    message: str
    needs_attention: bool
    url: str


@dataclass(frozen=True)
class ComponentSummary:
    total: int
    by_shown: dict[str, int]  # display status -> count (stale counted apart from its last status)
    problems_total: int
    problems: list[ComponentProblem]
    last_sweep_at: datetime | None

    def sweep_age(self, now: datetime) -> float | None:
        return None if self.last_sweep_at is None else (now - self.last_sweep_at).total_seconds()


def component_summary(now: datetime) -> ComponentSummary:
    cutoff = now - verdict.stale_after()
    stale = Q(last_checked_at__lt=cutoff)
    rows = ComponentHealth.objects.all()
    by_status = dict(rows.exclude(stale).values_list("status").annotate(n=Count("id")).order_by())
    by_shown = {s.value: by_status.get(s.value, 0) for s in HealthStatus}
    by_shown[verdict.STALE] = rows.filter(stale).count()
    needing = rows.filter(stale | ~Q(status=HealthStatus.HEALTHY) | Q(needs_attention=True))
    # Critical and unhealthy first: the order an operator should look in.
    rank = Case(
        When(status=HealthStatus.UNHEALTHY, then=Value(0)),
        When(status=HealthStatus.DEGRADED, then=Value(1)),
        When(status=HealthStatus.UNKNOWN, then=Value(2)),
        default=Value(3),
    )
    ordered = needing.order_by(F("critical").desc(), rank, "name")
    problems = [
        ComponentProblem(
            name=c.name,
            component_type=c.get_component_type_display(),
            critical=c.critical,
            shown=verdict.display_status(c.status, c.last_checked_at, now),
            status=c.status,
            since=c.status_since,
            last_checked_at=c.last_checked_at,
            message=redact(c.last_message)[:ERROR_CHARS],
            needs_attention=c.needs_attention,
            url=reverse("admin:resilience_componenthealth_change", args=[c.pk]),
        )
        for c in ordered[:LIST_LIMIT]
    ]
    return ComponentSummary(
        total=sum(by_shown.values()),
        by_shown=by_shown,
        problems_total=needing.count(),
        problems=problems,
        last_sweep_at=verdict.last_sweep_at(),
    )


# --- Breakers --------------------------------------------------------------------------


@dataclass(frozen=True)
class BreakerRow:
    name: str
    state: str
    failure_rate: float
    opened_at: datetime | None
    open_until: datetime | None
    guards: str


@dataclass(frozen=True)
class BreakerSummary:
    source: str  # "redis" (live) or "snapshot" (Redis did not answer)
    total: int
    not_closed: list[BreakerRow] = field(default_factory=list)
    refreshed_at: datetime | None = None


def breaker_summary() -> BreakerSummary:
    from resilience.snapshots import read_breakers

    try:
        live = read_breakers()
    except Exception as exc:
        logger.warning("breakers unreadable in Redis (%s): showing the last snapshot", type(exc).__name__)
        rows = list(CircuitBreakerState.objects.all())
        return BreakerSummary(
            source="snapshot",
            total=len(rows),
            not_closed=[
                BreakerRow(r.name, r.state, r.failure_rate, r.opened_at, r.open_until, guard_description(r.name))
                for r in rows
                if r.state != "closed"
            ],
            refreshed_at=max((r.refreshed_at for r in rows), default=None),
        )
    return BreakerSummary(
        source="redis",
        total=len(live),
        not_closed=[
            BreakerRow(m.name, m.state.value, m.failure_rate, m.opened_at, m.open_until, guard_description(m.name))
            for m in sorted(live, key=lambda m: m.name)
            if m.state.value != "closed"
        ],
    )


# --- Scaling ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceInstances:
    service: str
    enabled: bool
    dry_run: bool
    min_instances: int
    max_instances: int
    current: int | None
    observed_at: datetime | None
    desired: int | None
    decided_at: datetime | None
    url: str

    @property
    def off_target(self) -> bool:
        return self.current is not None and self.desired is not None and self.current != self.desired


@dataclass(frozen=True)
class ScalingSummary:
    services: list[ServiceInstances]
    recent: list[ScalingEvent]


def scaling_summary() -> ScalingSummary:
    last = ScalingEvent.objects.filter(service=OuterRef("service")).order_by("-created_at", "-id")
    policies = ScalingPolicy.objects.annotate(
        desired=Subquery(last.values("desired_instances")[:1]),
        decided_at=Subquery(last.values("created_at")[:1]),
    ).order_by("service")
    services = [
        ServiceInstances(
            service=p.service,
            enabled=p.enabled,
            dry_run=p.dry_run,
            min_instances=p.min_instances,
            max_instances=p.max_instances,
            current=p.observed_instances,
            observed_at=p.observed_at,
            desired=p.desired,
            decided_at=p.decided_at,
            url=reverse("admin:scaling_scalingpolicy_change", args=[p.pk]),
        )
        for p in policies
    ]
    recent = list(
        ScalingEvent.objects.exclude(action=ScaleDirection.NONE).order_by("-created_at", "-id")[:RECENT_SCALING]
    )
    return ScalingSummary(services, recent)
