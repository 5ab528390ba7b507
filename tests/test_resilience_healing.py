"""Auto-healing: the budget arithmetic, a component that never recovers, maintenance, the lock."""

from __future__ import annotations

import dataclasses
import itertools
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.db import connections
from django.utils import timezone

from core.heal import heal_action, unregister_action
from core.health import HealthCheck, Report, register, run_checks, unregister
from project.embedded import free_port
from resilience import healing
from resilience.healing import Budget, HealPolicy, claim, heal, plan, resume
from resilience.models import ComponentHealth, ComponentType, HealingAttempt, HealingOutcome, HealthStatus
from resilience.sweep import verify_component
from resilience.tracking import record_results
from tests.conftest import is_postgres, require

POLICY = HealPolicy(after_failures=3, initial_backoff=10, max_backoff=300, max_attempts=5, window=3600)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- The budget (pure) -------------------------------------------------------------------


def test_attempts_back_off_from_ten_seconds_doubling_up_to_five_minutes() -> None:
    policy = HealPolicy(max_attempts=10, window=100_000)
    budget, now, waits = Budget(0, None, 0, None), T0, []
    for _ in range(8):
        decision = plan(budget, policy, now)
        assert decision.allowed
        assert decision.budget is not None
        budget = decision.budget
        waits.append(budget.backoff)
        assert not plan(budget, policy, now + timedelta(seconds=budget.backoff - 1)).allowed
        now += timedelta(seconds=budget.backoff)
    assert waits == [10, 20, 40, 80, 160, 300, 300, 300]


def test_after_k_attempts_in_a_window_the_budget_is_exhausted_until_the_window_passes() -> None:
    budget, now = Budget(0, None, 0, None), T0
    for _ in range(POLICY.max_attempts):
        decision = plan(budget, POLICY, now)
        assert decision.budget is not None
        budget, now = decision.budget, decision.budget.next_heal_at or now
    exhausted = plan(budget, POLICY, now)
    assert (exhausted.allowed, exhausted.exhausted) == (False, True)
    later = plan(budget, POLICY, at(POLICY.window + 1))
    assert later.allowed
    assert later.budget is not None
    assert later.budget.attempts == 1


# --- A component that keeps failing ----------------------------------------------------


@pytest.fixture
def dead_service() -> Iterator[dict]:
    """A real check against a TCP port where nothing listens, and a heal action that
    tries to reach it again: a stand-in for "restart" that never helps, so the budget
    is all that stops the attempts."""
    name, port = f"svc-{uuid.uuid4().hex[:6]}", free_port()
    tries: list[datetime] = []

    def check() -> Report:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return Report(HealthStatus.HEALTHY, "answers")

    def poke(component: str) -> str:
        tries.append(timezone.now())
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return "reconnected"

    register(HealthCheck(name, ComponentType.SERVICE, check, timeout=2, failure_threshold=1, success_threshold=1))
    heal_action(f"poke-{name}", name)(poke)
    yield {"name": name, "tries": tries}
    unregister(name)
    unregister_action(f"poke-{name}")


def sweep_at(name: str, now: datetime) -> ComponentHealth:
    """One sweep at simulated time ``now``: the real check, recorded, then healing if due."""
    check = healing_check(name)
    results = [dataclasses.replace(r, checked_at=now) for r in run_checks([check])]
    (component,) = record_results(results)
    heal(component.pk, now, verify=verify_component, policy=POLICY)
    return ComponentHealth.objects.get(pk=component.pk)


def healing_check(name: str) -> HealthCheck:
    from core.health import get_check

    return get_check(name)


@pytest.mark.django_db
def test_a_component_that_keeps_failing_gets_no_more_attempts_than_its_budget(dead_service) -> None:
    name = dead_service["name"]
    for minute in range(120):  # two hours of sweeps, one a minute
        component = sweep_at(name, at(60 * minute))
    attempts = list(HealingAttempt.objects.filter(component=component).order_by("started_at"))
    assert len(attempts) == POLICY.max_attempts == len(dead_service["tries"])
    assert all(a.outcome == HealingOutcome.FAILED for a in attempts)
    assert attempts[0].started_at == at(60 * (POLICY.after_failures - 1))  # the third failing sweep
    for before, after in itertools.pairwise(attempts):
        assert (after.started_at - before.started_at).total_seconds() >= before.backoff_seconds
    assert [a.backoff_seconds for a in attempts] == [10, 20, 40, 80, 160]
    assert component.needs_attention
    assert component.status == HealthStatus.UNHEALTHY

    resume([component.pk])  # an operator looked at it
    sweep_at(name, at(60 * 121))
    assert HealingAttempt.objects.filter(component=component).count() == POLICY.max_attempts + 1


@pytest.mark.django_db
def test_a_component_in_maintenance_is_left_alone(dead_service) -> None:
    name = dead_service["name"]
    sweep_at(name, at(0))
    ComponentHealth.objects.filter(name=name).update(in_maintenance=True)
    for minute in range(1, 10):
        sweep_at(name, at(60 * minute))
    assert dead_service["tries"] == []
    assert not HealingAttempt.objects.filter(component__name=name).exists()


@pytest.mark.django_db
def test_ten_healthy_minutes_give_the_full_budget_back() -> None:
    from core.health import HealthCheckResult

    name = f"svc-{uuid.uuid4().hex[:6]}"

    def result(status: HealthStatus, seconds: float) -> HealthCheckResult:
        return HealthCheckResult(name, ComponentType.SERVICE, status, checked_at=at(seconds))

    record_results([result(HealthStatus.UNHEALTHY, 0)])
    ComponentHealth.objects.filter(name=name).update(heal_attempts=3, heal_backoff_seconds=40, next_heal_at=at(100))
    record_results([result(HealthStatus.HEALTHY, 60)])
    record_results([result(HealthStatus.HEALTHY, 60 + settings.HEAL_RESET_AFTER_SECONDS - 1)])
    assert ComponentHealth.objects.get(name=name).heal_attempts == 3  # not yet ten minutes
    record_results([result(HealthStatus.HEALTHY, 60 + settings.HEAL_RESET_AFTER_SECONDS)])
    component = ComponentHealth.objects.get(name=name)
    assert (component.heal_attempts, component.heal_backoff_seconds, component.next_heal_at) == (0, 0, None)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_only_one_of_many_concurrent_healers_wins_the_claim() -> None:
    """Threads with their own PostgreSQL connections race for the same component."""
    require(is_postgres(), "needs PostgreSQL: SQLite serialises writers anyway")
    component = ComponentHealth.objects.create(
        name=f"svc-{uuid.uuid4().hex[:6]}", component_type=ComponentType.SERVICE, status=HealthStatus.UNHEALTHY
    )
    racers = 6
    for round_ in range(5):
        now = at(3600 * 2 * round_)  # each round in a fresh window, after the previous backoff
        snapshot = ComponentHealth.objects.get(pk=component.pk)
        barrier = threading.Barrier(racers)
        wins: list[int] = []

        def race(i: int, snapshot: ComponentHealth = snapshot, now: datetime = now, barrier=barrier, wins=wins) -> None:
            try:
                barrier.wait()
                if claim(snapshot, POLICY, now, f"host-{i}").allowed:
                    wins.append(i)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert len(wins) == 1, f"round {round_}: {wins}"
        holder = ComponentHealth.objects.get(pk=component.pk)
        assert holder.heal_lock_owner == f"host-{wins[0]}"
        ComponentHealth.objects.filter(pk=component.pk).update(heal_lock_until=None, heal_lock_owner="")


def test_the_default_policy_follows_the_settings() -> None:
    policy = healing.HealPolicy.from_settings()
    assert (policy.initial_backoff, policy.max_backoff, policy.max_attempts) == (10, 300, 5)
