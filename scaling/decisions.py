"""How many instances a service should run: a pure function of its metrics, limits and history.

Nothing here does I/O or reads a clock: the caller hands in the readings, the
recommendations recorded during the stabilisation window, the time of the last
successful scaling action, and ``now``. That makes every rule testable as a table
and under property tests, and lets several worker processes reach the same answer
from the same database rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from django.db import models


class ScaleDirection(models.TextChoices):
    UP = "up", "Scale up"
    DOWN = "down", "Scale down"
    NONE = "none", "No change"


class MetricName(StrEnum):
    CPU = "cpu_percent"
    MEMORY = "memory_percent"
    DB_CONNECTIONS = "db_connections"
    RESPONSE_TIME = "response_time_ms"
    QUEUE_LATENCY = "queue_latency_seconds"
    QUEUE_DEPTH = "queue_depth"


# Metrics whose value is a total for the whole service (Kubernetes' "AverageValue"
# targets): the target is per instance, so desired = ceil(total / target). The other
# metrics are averages over the instances: desired = ceil(current * value / target).
TOTAL_METRICS = frozenset({MetricName.DB_CONNECTIONS, MetricName.QUEUE_DEPTH})

# Floating-point noise must not add an instance: 3 * 0.7 / 0.7 is 3.0000000000000004.
_CEIL_SLACK = 1e-9


class Rule(StrEnum):
    """Which rule or limit had the last word; recorded on every ScalingEvent."""

    METRIC = "metric"  # recorded as "metric:<name>", the metric with the largest proposal
    ALL_METRICS_MISSING = "all_metrics_missing"
    MISSING_BLOCKS_SCALE_DOWN = "missing_metric_blocks_scale_down"
    MIN_INSTANCES = "limit:min_instances"
    MAX_INSTANCES = "limit:max_instances"
    STEP_LIMIT = "limit:scale_up_step"
    STABILIZATION = "stabilization_window"
    COOLDOWN = "cooldown"
    # Set outside ``decide`` by the service:
    ENGINE_UNREACHABLE = "engine_unreachable"
    INVALID_POLICY = "invalid_policy"
    EVALUATION_ERROR = "evaluation_error"
    MANUAL = "manual"
    BUSY_WORKERS = "limit:busy_workers"


@dataclass(frozen=True)
class MetricReading:
    """One measurement with the time it was taken, or ``missing`` with the reason why."""

    value: float | None
    observed_at: datetime | None
    missing_reason: str = ""

    @classmethod
    def present(cls, value: float, observed_at: datetime) -> MetricReading:
        return cls(value=float(value), observed_at=observed_at)

    @classmethod
    def missing(cls, reason: str) -> MetricReading:
        return cls(value=None, observed_at=None, missing_reason=reason or "missing")

    @property
    def is_missing(self) -> bool:
        return self.value is None or self.observed_at is None


@dataclass(frozen=True)
class PolicySpec:
    """The numbers of a ScalingPolicy that the decision needs (no ORM object)."""

    service: str
    min_instances: int
    max_instances: int
    targets: Mapping[str, float]
    tolerance: float = 0.1
    scale_up_step_limit: int = 4
    stabilization_seconds: int = 300
    cooldown_seconds: int = 0
    stale_after_seconds: float = 120.0


@dataclass(frozen=True)
class MetricVote:
    """One metric's line in the snapshot: what it read, against what, and what it proposed."""

    name: str
    target: float
    value: float | None
    proposal: int | None
    age_seconds: float | None
    status: str  # "ok", "stale" or "missing"
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "value": None if self.value is None else round(self.value, 4),
            "target": self.target,
            "proposal": self.proposal,
            "age_seconds": None if self.age_seconds is None else round(self.age_seconds, 3),
            "status": self.status,
            "note": self.note,
        }


@dataclass(frozen=True)
class Decision:
    service: str
    direction: ScaleDirection
    current: int
    recommended: int  # what the metrics want, clamped to [min, max]; kept for stabilisation
    target: int  # what to scale to now, after step limit, stabilisation and cooldown
    rule: str
    reason: str
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    cooldown_remaining: float = 0.0


def direction_between(current: int, target: int) -> ScaleDirection:
    if target > current:
        return ScaleDirection.UP
    return ScaleDirection.DOWN if target < current else ScaleDirection.NONE


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - _CEIL_SLACK))


def _propose(name: str, value: float, target: float, current: int, tolerance: float) -> tuple[int, str]:
    """HPA's per-metric formula, with the tolerance band that avoids flapping near target."""
    if name in TOTAL_METRICS:
        if current == 0:
            return _ceil(value / target), "no instances: ceil(total / target)"
        ratio = (value / current) / target
        if abs(ratio - 1.0) <= tolerance:
            return current, f"within ±{tolerance:g} of target"
        return _ceil(value / target), f"ceil({value:g} / {target:g})"
    ratio = value / target
    if abs(ratio - 1.0) <= tolerance:
        return current, f"within ±{tolerance:g} of target"
    if current == 0:
        # Nothing to multiply: one instance if the metric is over target, none otherwise.
        return (1 if ratio > 1.0 else 0), "no instances: 1 if over target"
    return _ceil(current * ratio), f"ceil({current} * {value:g} / {target:g})"


def vote(
    name: str, target: float, reading: MetricReading | None, current: int, spec: PolicySpec, now: datetime
) -> MetricVote:
    """One metric's proposal. Stale readings may only vote up; missing ones not at all."""
    if reading is None or reading.is_missing:
        reason = reading.missing_reason if reading is not None else "not collected"
        return MetricVote(name, target, None, None, None, "missing", reason)
    assert reading.value is not None
    assert reading.observed_at is not None
    value = reading.value
    if not math.isfinite(value) or value < 0:
        return MetricVote(name, target, None, None, None, "missing", f"unusable value {value!r}")
    age = max(0.0, (now - reading.observed_at).total_seconds())
    proposal, note = _propose(name, value, target, current, spec.tolerance)
    if age > spec.stale_after_seconds:
        note = f"stale ({age:.0f} s old > {spec.stale_after_seconds:.0f} s): may only vote up"
        return MetricVote(name, target, value, proposal if proposal > current else None, age, "stale", note)
    return MetricVote(name, target, value, proposal, age, "ok", note)


def decide(
    spec: PolicySpec,
    current: int,
    readings: Mapping[str, MetricReading],
    history: Iterable[tuple[datetime, int]],
    last_scaled_at: datetime | None,
    now: datetime,
) -> Decision:
    """Decide the instance count for one service.

    1. Each configured metric proposes ``ceil(current * value / target)`` (for totals such
       as queue depth: ``ceil(total / target per instance)``), or ``current`` when the
       value is within ±tolerance of target. Missing metrics do not vote; stale ones
       (older than ``stale_after_seconds``, two ticks) only vote when they say "up".
    2. The largest proposal wins. If no metric voted, hold. If any metric is missing or
       stale and the winner says "down", hold: we cannot know the silent metric agrees.
    3. Clamp to [min, max]: this is the *recommendation*, which the caller records for
       the stabilisation window.
    4. An instance count outside [min, max] (an operator changed the limits, or
       instances died) is corrected first, regardless of metrics and cooldown.
    5. Scale up by at most ``scale_up_step_limit`` instances per tick.
    6. Scale down only to the highest recommendation of the stabilisation window
       (this one included), so one quiet minute does not undo a busy hour.
    7. Within the cooldown after the last successful scaling action, hold.
    """
    votes = [vote(name, target, readings.get(name), current, spec, now) for name, target in spec.targets.items()]
    snapshot = {v.name: v.as_dict() for v in votes}
    voting = [v for v in votes if v.proposal is not None]
    uncertain = [v.name for v in votes if v.status != "ok"]

    # Steps 1-2: combine the votes.
    if not voting:
        proposal, rule = current, str(Rule.ALL_METRICS_MISSING)
        reason = "every metric is missing or stale: holding (" + _missing_summary(votes) + ")"
    else:
        winner = max(voting, key=lambda v: v.proposal or 0)
        proposal = winner.proposal or 0
        rule = f"{Rule.METRIC}:{winner.name}"
        reason = f"{winner.name} {winner.value:g} vs target {winner.target:g} proposes {proposal} ({winner.note})"
        if proposal < current and uncertain:
            reason = f"{reason}; not scaling down while {', '.join(uncertain)} is missing or stale"
            proposal, rule = current, str(Rule.MISSING_BLOCKS_SCALE_DOWN)

    # Step 3: the recommendation.
    recommended = min(max(proposal, spec.min_instances), spec.max_instances)
    if recommended != proposal and voting:
        rule = str(Rule.MIN_INSTANCES if recommended > proposal else Rule.MAX_INSTANCES)
        reason = f"{reason}; clamped to [{spec.min_instances}, {spec.max_instances}]"

    def done(target: int, rule: str, reason: str, cooldown_remaining: float = 0.0) -> Decision:
        return Decision(
            spec.service,
            direction_between(current, target),
            current,
            recommended,
            target,
            rule,
            reason,
            snapshot,
            cooldown_remaining,
        )

    # Step 4: limits come first.
    if current < spec.min_instances:
        target = max(spec.min_instances, min(recommended, current + spec.scale_up_step_limit))
        if target == spec.min_instances:
            return done(
                target, str(Rule.MIN_INSTANCES), f"{current} instances is below min {spec.min_instances}; {reason}"
            )
        # The metrics want more than the minimum: they decide, within the step limit.
        if target < recommended:
            rule, reason = str(Rule.STEP_LIMIT), f"{reason}; at most +{spec.scale_up_step_limit} per tick"
        return done(target, rule, f"{reason} (from {current}, below min {spec.min_instances})")
    if current > spec.max_instances:
        return done(
            spec.max_instances,
            str(Rule.MAX_INSTANCES),
            f"{current} instances is above max {spec.max_instances}; {reason}",
        )

    target = current
    if recommended > current:
        # Step 5: bounded scale-up.
        target = min(recommended, current + spec.scale_up_step_limit)
        if target < recommended:
            rule = str(Rule.STEP_LIMIT)
            reason = f"{reason}; at most +{spec.scale_up_step_limit} per tick"
    elif recommended < current:
        # Step 6: stabilised scale-down.
        window_start = now - timedelta(seconds=spec.stabilization_seconds)
        in_window = [r for at, r in history if window_start <= at <= now]
        highest = min(max([recommended, *in_window]), spec.max_instances)
        target = min(current, max(highest, spec.min_instances))
        if highest > recommended:
            rule = str(Rule.STABILIZATION)
            reason = f"{reason}; highest recommendation in the last {spec.stabilization_seconds} s is {highest}" + (
                ": holding" if target == current else f": scaling down to {target} only"
            )

    # Step 7: cooldown.
    if target != current and last_scaled_at is not None and spec.cooldown_seconds > 0:
        remaining = (last_scaled_at + timedelta(seconds=spec.cooldown_seconds) - now).total_seconds()
        if remaining > 0:
            return done(
                current,
                str(Rule.COOLDOWN),
                f"would scale {current} → {target} but the cooldown has {remaining:.0f} s left; {reason}",
                remaining,
            )
    return done(target, rule, reason)


def _missing_summary(votes: Iterable[MetricVote]) -> str:
    parts = [f"{v.name}: {v.note}" for v in votes]
    return "; ".join(parts) if parts else "no metrics configured"
