"""Properties of the scaling decision, and of stabilisation and cooldown kept in the database.

The first group drives the pure ``decide`` with arbitrary inputs. The second travels
through time with freezegun: each tick plans from the rows earlier ticks recorded
(``scaling.planning.plan``) and records its event, as worker processes do, and the
invariants are checked against what the database holds.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from freezegun import freeze_time
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scaling.decisions import MetricReading, PolicySpec, Rule, ScaleDirection, decide
from scaling.models import ScalingEvent, ScalingPolicy, ScalingRecommendation
from scaling.planning import plan
from scaling.service import AutoScalingService, ScalingDecision

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
METRICS = ["cpu_percent", "memory_percent", "response_time_ms", "queue_depth"]

values = st.floats(min_value=0, max_value=10_000, allow_nan=False)
# Mostly fresh, sometimes stale (older than 120 s), sometimes missing.
one_reading = st.one_of(
    st.builds(lambda v, age: MetricReading.present(v, NOW - timedelta(seconds=age)), values, st.integers(0, 100)),
    st.builds(lambda v, age: MetricReading.present(v, NOW - timedelta(seconds=age)), values, st.integers(0, 600)),
    st.just(MetricReading.missing("down")),
)


@st.composite
def scenarios(draw, within_limits: bool = False, in_cooldown: bool = False):
    low = draw(st.integers(0, 20))
    high = draw(st.integers(low, 40))
    targets = draw(st.dictionaries(st.sampled_from(METRICS), st.floats(0.5, 500), min_size=1))
    spec = PolicySpec(
        service="svc",
        min_instances=low,
        max_instances=high,
        targets=targets,
        tolerance=draw(st.floats(0, 0.5)),
        scale_up_step_limit=draw(st.integers(1, 10)),
        stabilization_seconds=draw(st.integers(0, 900)),
        cooldown_seconds=draw(st.integers(1 if in_cooldown else 0, 900)),
        stale_after_seconds=120,
    )
    current = draw(st.integers(low, high) if within_limits else st.integers(0, 60))
    readings = {name: draw(one_reading) for name in targets if draw(st.integers(0, 9)) > 0}
    history = [
        (NOW - timedelta(seconds=ago), rec)
        for ago, rec in draw(st.lists(st.tuples(st.integers(0, 1200), st.integers(low, high)), max_size=8))
    ]
    if in_cooldown:
        last = NOW - timedelta(seconds=draw(st.integers(0, spec.cooldown_seconds - 1)))
    else:
        last = draw(st.one_of(st.none(), st.integers(0, 1200).map(lambda ago: NOW - timedelta(seconds=ago))))
    return spec, current, readings, history, last


def _uncertain(spec: PolicySpec, readings) -> bool:
    """Some targeted metric is missing or stale."""
    for name in spec.targets:
        reading = readings.get(name)
        if reading is None or reading.is_missing or (NOW - reading.observed_at).total_seconds() > 120:
            return True
    return False


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_it_never_decides_outside_min_and_max(scenario):
    spec, current, readings, history, last = scenario

    decision = decide(spec, current, readings, history, last, NOW)

    assert spec.min_instances <= decision.target <= spec.max_instances
    assert spec.min_instances <= decision.recommended <= spec.max_instances


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_it_never_scales_down_on_missing_or_stale_metrics(scenario):
    spec, current, readings, history, last = scenario
    assume(current <= spec.max_instances)  # above max, the limit itself scales down
    assume(_uncertain(spec, readings))

    decision = decide(spec, current, readings, history, last, NOW)

    assert decision.target >= current
    assert decision.direction != ScaleDirection.DOWN


@settings(max_examples=400, deadline=None)
@given(scenarios(within_limits=True))
def test_a_scale_down_never_goes_below_a_recommendation_in_the_window(scenario):
    spec, current, readings, history, last = scenario

    decision = decide(spec, current, readings, history, last, NOW)

    if decision.direction == ScaleDirection.DOWN:
        window = [rec for at, rec in history if at >= NOW - timedelta(seconds=spec.stabilization_seconds)]
        assert decision.target >= max([decision.recommended, *window])


@settings(max_examples=400, deadline=None)
@given(scenarios(within_limits=True, in_cooldown=True))
def test_nothing_changes_inside_the_cooldown_while_within_limits(scenario):
    spec, current, readings, history, last = scenario

    decision = decide(spec, current, readings, history, last, NOW)

    assert decision.target == current


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_a_scale_up_is_at_most_the_step_limit(scenario):
    spec, current, readings, history, last = scenario
    assume(current >= spec.min_instances)

    decision = decide(spec, current, readings, history, last, NOW)

    assert decision.target - current <= spec.scale_up_step_limit


# --- Through the database, under time travel ------------------------------------------------


def _policy(**fields) -> ScalingPolicy:
    defaults = {
        "service": "api",
        "enabled": True,
        "dry_run": True,  # events are recorded, no container is touched
        "min_instances": 1,
        "max_instances": 12,
        "target_cpu_percent": 50.0,
        "scale_down_stabilization_seconds": 300,
        "cooldown_seconds": 180,
        "image": "fcp-tiny:latest",
    }
    defaults.update(fields)
    return ScalingPolicy.objects.create(**defaults)


def _tick(policy: ScalingPolicy, current: int, cpu: float) -> ScalingEvent:
    """One tick as a worker runs it: plan from the database, then record the event."""
    now = timezone.now()
    decision = plan(policy, current, {"cpu_percent": MetricReading.present(cpu, now)}, now)
    AutoScalingService().execute(ScalingDecision(policy.service, policy.pk, decision, dry_run=True))
    event = ScalingEvent.objects.filter(service=policy.service).first()
    assert event is not None
    return event


def test_stabilisation_holds_a_scale_down_for_the_whole_window(db):
    policy = _policy(cooldown_seconds=0)
    with freeze_time(NOW) as clock:
        busy = _tick(policy, 2, cpu=200)  # recommends 8, the step limit allows 6
        # Then the load is gone at once.
        holds = []
        for _ in range(4):
            clock.tick(timedelta(seconds=60))
            holds.append(_tick(policy, 6, cpu=10))
        clock.tick(timedelta(seconds=61))  # 301 s after the busy tick
        released = _tick(policy, 6, cpu=10)

    assert (busy.desired_instances, busy.to_instances) == (8, 6)
    assert [(e.action, e.rule) for e in holds] == [(ScaleDirection.NONE, str(Rule.STABILIZATION))] * 4
    assert (released.action, released.to_instances) == (ScaleDirection.DOWN, 2)


def test_the_cooldown_comes_from_the_last_successful_event_in_the_database(db):
    policy = _policy(scale_down_stabilization_seconds=0)
    with freeze_time(NOW) as clock:
        first = _tick(policy, 2, cpu=100)
        clock.tick(timedelta(seconds=179))
        held = _tick(policy, 4, cpu=100)
        clock.tick(timedelta(seconds=2))
        acted = _tick(policy, 4, cpu=100)

    assert (first.action, first.to_instances) == (ScaleDirection.UP, 4)
    assert (held.action, held.rule, held.to_instances) == (ScaleDirection.NONE, str(Rule.COOLDOWN), 4)
    assert "cooldown has 1 s left" in held.reason
    assert (acted.action, acted.to_instances) == (ScaleDirection.UP, 8)


def test_a_failed_action_does_not_start_a_cooldown(db):
    policy = _policy(dry_run=False, scale_down_stabilization_seconds=0)
    with freeze_time(NOW) as clock:
        ScalingEvent.objects.create(
            service="api", policy=policy, action=ScaleDirection.UP, from_instances=2, desired_instances=4,
            to_instances=2, reason="r", rule="metric:cpu_percent", success=False, error="engine said no",
            created_at=timezone.now(),
        )  # fmt: skip
        clock.tick(timedelta(seconds=10))
        decision = plan(policy, 2, {"cpu_percent": MetricReading.present(100, timezone.now())}, timezone.now())

    assert (decision.direction, decision.target) == (ScaleDirection.UP, 4)


def test_a_dry_run_of_a_live_policy_does_not_delay_real_scaling(db):
    policy = _policy(dry_run=False, scale_down_stabilization_seconds=0)
    with freeze_time(NOW) as clock:
        now = timezone.now()
        decision = plan(policy, 2, {"cpu_percent": MetricReading.present(100, now)}, now)
        AutoScalingService().execute(ScalingDecision("api", policy.pk, decision, dry_run=True))
        clock.tick(timedelta(seconds=5))
        now = timezone.now()
        again = plan(policy, 2, {"cpu_percent": MetricReading.present(100, now)}, now)

    assert ScalingEvent.objects.get().dry_run is True
    assert again.rule != str(Rule.COOLDOWN)
    assert again.target == 4


cpu_series = st.lists(st.tuples(st.integers(15, 200), st.floats(0, 300)), min_size=3, max_size=14)


@pytest.mark.django_db
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(series=cpu_series, window=st.integers(0, 400), cooldown=st.integers(0, 400))
def test_stabilisation_and_cooldown_hold_for_any_load_history(series, window, cooldown):
    ScalingEvent.objects.all().delete()
    ScalingPolicy.objects.all().delete()
    policy = _policy(scale_down_stabilization_seconds=window, cooldown_seconds=cooldown)
    current = 3
    last_action_at = None
    with freeze_time(NOW) as clock:
        for gap, cpu in series:
            clock.tick(timedelta(seconds=gap))
            now = timezone.now()
            event = _tick(policy, current, cpu)
            if event.action != ScaleDirection.NONE:
                assert last_action_at is None or (now - last_action_at).total_seconds() >= cooldown
                last_action_at = now
            if event.action == ScaleDirection.DOWN:
                since = now - timedelta(seconds=window)
                recent = ScalingRecommendation.objects.filter(policy=policy, recorded_at__gte=since)
                assert event.to_instances >= max(recent.values_list("recommended_instances", flat=True))
            assert policy.min_instances <= event.to_instances <= policy.max_instances
            current = event.to_instances
