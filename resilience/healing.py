"""Auto-healing: registered actions, run within a budget, one host at a time.

An action runs for a component only when all of these hold:

1. It has been UNHEALTHY for ``HEAL_AFTER_FAILURES`` consecutive sweeps.
2. No operator put it in maintenance, and it is not marked "needs attention".
3. Its backoff has elapsed: attempts are spaced 10 s, 20 s, 40 s ... up to 5 min
   (Kubernetes' restart backoff), and the budget comes back after 10 healthy minutes
   (``resilience.tracking``).
4. It has had fewer than ``HEAL_MAX_ATTEMPTS`` attempts in the current window;
   otherwise it is marked "needs attention" and left alone until an operator resumes
   it (systemd's start limit, instead of docker-autoheal's endless restarts).
5. This host wins the claim: one conditional UPDATE that checks the budget fields it
   read and an expired heal lock, and writes the new budget and the lock. Row count
   1 means we won; any other host or process backs off.

The budget arithmetic (``plan``) is a pure function with the clock handed in.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from core.heal import action_for
from core.redaction import redact
from resilience.models import ComponentHealth, HealingAttempt, HealingOutcome, HealthStatus

logger = logging.getLogger(__name__)


# --- the budget (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class HealPolicy:
    after_failures: int = 3
    initial_backoff: int = 10
    max_backoff: int = 300
    max_attempts: int = 5
    window: int = 3600
    lock_seconds: int = 120

    @classmethod
    def from_settings(cls) -> HealPolicy:
        return cls(
            after_failures=settings.HEAL_AFTER_FAILURES,
            initial_backoff=settings.HEAL_BACKOFF_INITIAL_SECONDS,
            max_backoff=settings.HEAL_BACKOFF_MAX_SECONDS,
            max_attempts=settings.HEAL_MAX_ATTEMPTS,
            window=settings.HEAL_WINDOW_SECONDS,
            lock_seconds=settings.HEAL_LOCK_SECONDS,
        )


@dataclass(frozen=True)
class Budget:
    attempts: int
    window_started_at: datetime | None
    backoff: int
    next_heal_at: datetime | None

    @classmethod
    def of(cls, component: ComponentHealth) -> Budget:
        return cls(
            component.heal_attempts,
            component.heal_window_started_at,
            component.heal_backoff_seconds,
            component.next_heal_at,
        )


@dataclass(frozen=True)
class Plan:
    allowed: bool
    reason: str
    budget: Budget | None = None  # the budget after this attempt, when allowed
    exhausted: bool = False  # no attempts left: mark "needs attention"


def plan(budget: Budget, policy: HealPolicy, now: datetime) -> Plan:
    """Steps 3-4 of the module docstring: may an attempt start now, and what does it cost?"""
    if budget.next_heal_at is not None and now < budget.next_heal_at:
        return Plan(False, f"backing off until {budget.next_heal_at.isoformat()}")
    attempts, started = budget.attempts, budget.window_started_at
    if started is None or now - started >= timedelta(seconds=policy.window):
        attempts, started = 0, now
    if attempts >= policy.max_attempts:
        return Plan(False, f"{attempts} attempts in {policy.window} s did not heal it", exhausted=True)
    backoff = policy.initial_backoff if budget.backoff == 0 else min(budget.backoff * 2, policy.max_backoff)
    return Plan(True, "ok", Budget(attempts + 1, started, backoff, now + timedelta(seconds=backoff)))


# --- claiming and running ----------------------------------------------------------


def host_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def needs_healing(component: ComponentHealth, policy: HealPolicy) -> bool:
    return (
        component.status == HealthStatus.UNHEALTHY
        and component.consecutive_failures >= policy.after_failures
        and not component.in_maintenance
        and not component.needs_attention
        and action_for(component.name) is not None
    )


def claim(component: ComponentHealth, policy: HealPolicy, now: datetime, owner: str) -> Plan:
    """Step 5: take the heal lock and spend one attempt, atomically, or say why not."""
    decision = plan(Budget.of(component), policy, now)
    unchanged = ComponentHealth.objects.filter(
        pk=component.pk,
        heal_attempts=component.heal_attempts,
        heal_window_started_at=component.heal_window_started_at,
        heal_backoff_seconds=component.heal_backoff_seconds,
        next_heal_at=component.next_heal_at,
        needs_attention=False,
        in_maintenance=False,
    ).filter(Q(heal_lock_until__isnull=True) | Q(heal_lock_until__lte=now))
    if decision.exhausted:
        if unchanged.update(needs_attention=True):
            logger.warning("healing %s stopped: %s; it needs attention", component.name, decision.reason)
        return decision
    if not decision.allowed or decision.budget is None:
        return decision
    b = decision.budget
    won = unchanged.update(
        heal_attempts=b.attempts,
        heal_window_started_at=b.window_started_at,
        heal_backoff_seconds=b.backoff,
        next_heal_at=b.next_heal_at,
        heal_lock_until=now + timedelta(seconds=policy.lock_seconds),
        heal_lock_owner=owner[:200],
    )
    return decision if won else Plan(False, "another host is healing it or the budget changed")


def heal(
    component_id: int,
    now: datetime,
    verify: Callable[[ComponentHealth], HealthStatus] | None = None,
    policy: HealPolicy | None = None,
    owner: str | None = None,
) -> HealingAttempt | None:
    """Run the component's heal action if ``needs_healing`` and the claim is won.

    ``verify`` re-runs the component's check after the action, so the attempt records
    whether it actually healed. Returns the attempt, or None when nothing ran.
    """
    policy = policy or HealPolicy.from_settings()
    owner = owner or host_name()
    component = ComponentHealth.objects.get(pk=component_id)
    action = action_for(component.name)
    if action is None or not needs_healing(component, policy):
        return None
    decision = claim(component, policy, now, owner)
    if not decision.allowed or decision.budget is None:
        return None
    attempt = HealingAttempt.objects.create(
        component=component,
        action=action.name,
        host=owner[:200],
        attempt=decision.budget.attempts,
        backoff_seconds=decision.budget.backoff,
        started_at=now,
    )
    try:
        message = action.run(component.name)
        outcome = HealingOutcome.SUCCEEDED
        if verify is not None and verify(component) == HealthStatus.UNHEALTHY:
            outcome = HealingOutcome.NOT_HEALED
    except Exception as exc:
        message, outcome = f"{type(exc).__name__}: {exc}", HealingOutcome.FAILED
    finally:
        ComponentHealth.objects.filter(pk=component.pk, heal_lock_owner=owner[:200]).update(
            heal_lock_until=None, heal_lock_owner=""
        )
    attempt.outcome = outcome
    attempt.message = redact(message)[:2000]
    attempt.finished_at = max(now, timezone.now())
    attempt.save(update_fields=["outcome", "message", "finished_at"])
    logger.warning("healing %s with %s: %s (%s)", component.name, action.name, outcome, attempt.message)
    return attempt


def resume(component_ids: list[int]) -> int:
    """Operator action: clear "needs attention" and give back the full budget."""
    return ComponentHealth.objects.filter(pk__in=component_ids).update(
        needs_attention=False, heal_attempts=0, heal_window_started_at=None, heal_backoff_seconds=0, next_heal_at=None
    )
