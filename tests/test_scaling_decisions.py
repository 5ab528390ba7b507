"""The scaling decision as a table: inputs in, direction, target and deciding rule out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from scaling.decisions import MetricReading, PolicySpec, Rule, ScaleDirection, decide, direction_between

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
UP, DOWN, NONE = ScaleDirection.UP, ScaleDirection.DOWN, ScaleDirection.NONE


def spec(**overrides) -> PolicySpec:
    fields: dict[str, Any] = {
        "service": "web",
        "min_instances": 1,
        "max_instances": 10,
        "targets": {"cpu_percent": 50.0},
        "tolerance": 0.1,
        "scale_up_step_limit": 4,
        "stabilization_seconds": 300,
        "cooldown_seconds": 0,
        "stale_after_seconds": 120,
    }
    fields.update(overrides)
    return PolicySpec(**fields)


def fresh(value: float, age: float = 5) -> MetricReading:
    return MetricReading.present(value, NOW - timedelta(seconds=age))


def missing(reason: str = "exporter down") -> MetricReading:
    return MetricReading.missing(reason)


CASES = [
    # id, spec overrides, current, readings, history (seconds ago, recommendation), last scaled (s ago),
    #     expected direction, target, rule
    ("at target holds", {}, 2, {"cpu_percent": fresh(50)}, [], None, NONE, 2, "metric:cpu_percent"),
    ("inside tolerance holds", {}, 4, {"cpu_percent": fresh(54)}, [], None, NONE, 4, "metric:cpu_percent"),
    ("double load doubles", {}, 2, {"cpu_percent": fresh(100)}, [], None, UP, 4, "metric:cpu_percent"),
    ("ceil rounds up", {}, 3, {"cpu_percent": fresh(60)}, [], None, UP, 4, "metric:cpu_percent"),
    ("step limit caps scale-up", {}, 2, {"cpu_percent": fresh(500)}, [], None, UP, 6, str(Rule.STEP_LIMIT)),
    ("max caps scale-up", {"max_instances": 3}, 2, {"cpu_percent": fresh(200)}, [], None, UP, 3, "limit:max_instances"),
    ("half load halves", {}, 4, {"cpu_percent": fresh(25)}, [], None, DOWN, 2, "metric:cpu_percent"),
    (
        "min floors scale-down",
        {"min_instances": 3},
        4,
        {"cpu_percent": fresh(5)},
        [],
        None,
        DOWN,
        3,
        "limit:min_instances",
    ),
    (
        "largest proposal wins",
        {"targets": {"cpu_percent": 50.0, "queue_depth": 10.0}},
        2,
        {"cpu_percent": fresh(25), "queue_depth": fresh(55)},
        [],
        None,
        UP,
        6,
        "metric:queue_depth",
    ),
    (
        "queue depth is a total: ceil(total / per-instance target)",
        {"targets": {"queue_depth": 10.0}},
        5,
        {"queue_depth": fresh(12)},
        [],
        None,
        DOWN,
        2,
        "metric:queue_depth",
    ),
    (
        "a backlog starts instances from zero",
        {"targets": {"queue_depth": 10.0}, "min_instances": 0},
        0,
        {"queue_depth": fresh(25)},
        [],
        None,
        UP,
        3,
        "metric:queue_depth",
    ),
    (
        "an empty queue with no instances stays at zero",
        {"targets": {"queue_depth": 10.0}, "min_instances": 0},
        0,
        {"queue_depth": fresh(0)},
        [],
        None,
        NONE,
        0,
        "metric:queue_depth",
    ),
    ("all metrics missing holds", {}, 3, {"cpu_percent": missing()}, [], None, NONE, 3, str(Rule.ALL_METRICS_MISSING)),
    ("no reading at all holds", {}, 3, {}, [], None, NONE, 3, str(Rule.ALL_METRICS_MISSING)),
    (
        "a missing metric blocks scale-down",
        {"targets": {"cpu_percent": 50.0, "response_time_ms": 200.0}},
        4,
        {"cpu_percent": fresh(10), "response_time_ms": missing()},
        [],
        None,
        NONE,
        4,
        str(Rule.MISSING_BLOCKS_SCALE_DOWN),
    ),
    (
        "a missing metric does not block scale-up",
        {"targets": {"cpu_percent": 50.0, "response_time_ms": 200.0}},
        2,
        {"cpu_percent": fresh(100), "response_time_ms": missing()},
        [],
        None,
        UP,
        4,
        "metric:cpu_percent",
    ),
    (
        "a stale metric may vote up",
        {},
        2,
        {"cpu_percent": fresh(100, age=500)},
        [],
        None,
        UP,
        4,
        "metric:cpu_percent",
    ),
    (
        "a stale metric may not vote down",
        {},
        4,
        {"cpu_percent": fresh(10, age=500)},
        [],
        None,
        NONE,
        4,
        str(Rule.ALL_METRICS_MISSING),
    ),
    (
        "stabilisation holds at the window's highest recommendation",
        {},
        4,
        {"cpu_percent": fresh(10)},
        [(200, 4), (100, 2)],
        None,
        NONE,
        4,
        str(Rule.STABILIZATION),
    ),
    (
        "stabilisation lets it down only to the window's highest",
        {},
        6,
        {"cpu_percent": fresh(10)},
        [(250, 4), (100, 2)],
        None,
        DOWN,
        4,
        str(Rule.STABILIZATION),
    ),
    (
        "recommendations older than the window are forgotten",
        {},
        4,
        {"cpu_percent": fresh(25)},
        [(301, 8)],
        None,
        DOWN,
        2,
        "metric:cpu_percent",
    ),
    (
        "cooldown holds a change",
        {"cooldown_seconds": 120},
        2,
        {"cpu_percent": fresh(100)},
        [],
        119,
        NONE,
        2,
        str(Rule.COOLDOWN),
    ),
    (
        "cooldown over lets it act",
        {"cooldown_seconds": 120},
        2,
        {"cpu_percent": fresh(100)},
        [],
        121,
        UP,
        4,
        "metric:cpu_percent",
    ),
    (
        "below min is corrected despite cooldown and missing metrics",
        {"min_instances": 2, "cooldown_seconds": 600},
        0,
        {"cpu_percent": missing()},
        [],
        10,
        UP,
        2,
        str(Rule.MIN_INSTANCES),
    ),
    (
        "below min, a metric asking for more than min decides",
        {"min_instances": 1, "targets": {"queue_depth": 5.0}},
        0,
        {"queue_depth": fresh(12)},
        [],
        None,
        UP,
        3,
        "metric:queue_depth",
    ),
    (
        "above max is corrected despite cooldown and stabilisation",
        {"max_instances": 3, "cooldown_seconds": 600},
        5,
        {"cpu_percent": fresh(100)},
        [(10, 9)],
        10,
        DOWN,
        3,
        str(Rule.MAX_INSTANCES),
    ),
    (
        "a negative value is unusable, not zero",
        {},
        4,
        {"cpu_percent": MetricReading.present(-5, NOW)},
        [],
        None,
        NONE,
        4,
        str(Rule.ALL_METRICS_MISSING),
    ),
]


@pytest.mark.parametrize(
    ("overrides", "current", "readings", "history", "last_scaled", "direction", "target", "rule"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_the_decision_table(overrides, current, readings, history, last_scaled, direction, target, rule):
    rows = [(NOW - timedelta(seconds=ago), rec) for ago, rec in history]
    last = NOW - timedelta(seconds=last_scaled) if last_scaled is not None else None

    decision = decide(spec(**overrides), current, readings, rows, last, NOW)

    assert (decision.direction, decision.target, decision.rule) == (direction, target, rule), decision.reason


def test_the_snapshot_shows_each_metric_with_value_target_proposal_and_age():
    readings = {"cpu_percent": fresh(100, age=7), "response_time_ms": missing("no requests in the last 60 s")}

    decision = decide(spec(targets={"cpu_percent": 50.0, "response_time_ms": 200.0}), 2, readings, [], None, NOW)

    assert decision.metrics["cpu_percent"] == {
        "value": 100.0,
        "target": 50.0,
        "proposal": 4,
        "age_seconds": 7.0,
        "status": "ok",
        "note": "ceil(2 * 100 / 50)",
    }
    assert decision.metrics["response_time_ms"]["status"] == "missing"
    assert decision.metrics["response_time_ms"]["value"] is None
    assert decision.metrics["response_time_ms"]["note"] == "no requests in the last 60 s"


def test_the_cooldown_reason_says_how_long_is_left():
    decision = decide(spec(cooldown_seconds=300), 2, {"cpu_percent": fresh(100)}, [], NOW - timedelta(seconds=60), NOW)

    assert decision.cooldown_remaining == 240
    assert "cooldown has 240 s left" in decision.reason
    assert decision.recommended == 4  # still recorded, for the stabilisation window


def test_floating_point_noise_does_not_add_an_instance():
    decision = decide(spec(targets={"cpu_percent": 0.7}, tolerance=0.0), 3, {"cpu_percent": fresh(0.7)}, [], None, NOW)

    assert decision.target == 3


@pytest.mark.parametrize(("current", "target", "direction"), [(1, 2, UP), (2, 1, DOWN), (2, 2, NONE)])
def test_direction_between(current, target, direction):
    assert direction_between(current, target) == direction
