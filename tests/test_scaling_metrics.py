"""Metric collectors against the real services: Redis broker and cache, PostgreSQL, SQLite."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from django.db import connection
from django.db.backends.sqlite3.base import DatabaseWrapper as SQLiteWrapper
from django.utils import timezone

from project.celery_app import app
from scaling.metrics import celery_queues, database, docker_stats, response_time
from scaling.metrics.celery_queues import PUBLISHED_AT_HEADER, broker_client, priority_lists
from tests.conftest import require, wait_for
from tests.test_scaling_docker import broker

# --- Response time ---------------------------------------------------------------------------


@pytest.fixture
def web_service(settings):
    settings.SCALING_RESPONSE_TIME_SERVICE = f"web-{uuid.uuid4().hex[:8]}"
    return settings.SCALING_RESPONSE_TIME_SERVICE


def test_with_no_requests_the_response_time_is_missing_not_zero(web_service):
    reading = response_time.read_average(web_service, timezone.now())

    assert reading.is_missing
    assert reading.missing_reason == f"no requests recorded for {web_service!r} in the last 60 s"


def test_the_middleware_records_requests_and_the_collector_reads_their_average(client, db, web_service):
    before = time.time()
    for _ in range(3):
        client.get("/admin/login/")
    elapsed_ms = (time.time() - before) * 1000

    reading = response_time.read_average(web_service, timezone.now())

    assert reading.value is not None
    assert reading.observed_at is not None
    assert 0 < reading.value < elapsed_ms / 3 * 1.5  # the mean of three requests that all ran inside the loop
    assert (timezone.now() - reading.observed_at).total_seconds() < 15


def test_the_window_averages_recent_buckets_and_forgets_old_ones(web_service):
    now = datetime(2026, 5, 1, 10, 0, 55, tzinfo=UTC).timestamp()
    response_time.record(web_service, 9.0, at=now - 200)  # outside the 60 s window
    response_time.record(web_service, 0.100, at=now - 30)
    response_time.record(web_service, 0.300, at=now - 1)

    reading = response_time.read_average(web_service, datetime.fromtimestamp(now, tz=UTC))

    assert reading.value == pytest.approx(200.0)
    assert reading.observed_at == datetime.fromtimestamp(now, tz=UTC)  # inside the newest bucket


# --- Celery queues on the real Redis broker ------------------------------------------------


@pytest.fixture
def queue_name():
    name = f"scaling-test-{uuid.uuid4().hex[:8]}"
    yield name
    client = broker_client()
    if client is not None:
        client.delete(*priority_lists(name))


@pytest.fixture
def redis_broker():
    require(broker_client() is not None, "needs a Redis broker")


def test_queue_depth_sums_every_priority_sub_list(redis_broker, queue_name):
    for priority in (0, 0, 4, 7, 9):
        app.send_task("celery.accumulate", args=[priority], queue=queue_name, priority=priority)

    assert broker().llen(queue_name) == 2  # a bare LLEN would see only these
    assert celery_queues.queue_depth([queue_name], timezone.now()).value == 5


def test_queue_depth_counts_reserved_messages_that_left_the_list(redis_broker, queue_name):
    for n in range(3):
        app.send_task("celery.accumulate", args=[n], queue=queue_name)
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue(queue_name)
        reserved = simple.get(timeout=5)  # taken by a consumer, not acknowledged
        try:
            assert broker().llen(queue_name) == 2
            assert celery_queues.queue_depth([queue_name], timezone.now()).value == 3
        finally:
            reserved.ack()
            simple.close()
    assert celery_queues.queue_depth([queue_name], timezone.now()).value == 2


def test_queue_latency_is_the_age_of_the_oldest_waiting_message(redis_broker, queue_name):
    app.send_task("celery.accumulate", args=[1], queue=queue_name, priority=9)
    published = time.time()
    app.send_task("celery.accumulate", args=[2], queue=queue_name)

    later = datetime.fromtimestamp(published + 30, tz=UTC)
    reading = celery_queues.queue_latency([queue_name], later)

    assert reading.value == pytest.approx(30, abs=0.5)


def test_an_empty_queue_has_zero_latency_and_zero_depth(redis_broker, queue_name):
    now = timezone.now()
    assert celery_queues.queue_latency([queue_name], now).value == 0.0
    assert celery_queues.queue_depth([queue_name], now).value == 0


def test_latency_is_missing_when_the_oldest_message_has_no_publish_time(redis_broker, queue_name):
    foreign = {"body": "", "headers": {"task": "x", "id": "1"}, "properties": {"priority": 0}}
    broker().lpush(queue_name, json.dumps(foreign))

    reading = celery_queues.queue_latency([queue_name], timezone.now())

    assert reading.is_missing
    assert PUBLISHED_AT_HEADER in reading.missing_reason


def test_an_unreachable_broker_reads_as_missing(settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"

    reading = celery_queues.queue_depth(["celery"], timezone.now())

    assert reading.is_missing
    assert reading.missing_reason.startswith("broker unreachable: ConnectionError")


# --- Database connections ----------------------------------------------------------------


def test_active_connections_counts_busy_postgresql_sessions(postgres_only):
    db = connection.settings_dict
    started = threading.Event()

    def hold_a_busy_connection() -> None:
        with psycopg.connect(
            host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"],
            password=db["PASSWORD"] or None, autocommit=True,
        ) as other:  # fmt: skip
            started.set()
            other.execute("SELECT pg_sleep(1.5)")

    worker = threading.Thread(target=hold_a_busy_connection)
    worker.start()
    started.wait(5)
    time.sleep(0.3)
    reading = database.active_connections(connection, timezone.now())
    worker.join()
    assert reading.value is not None
    busy = reading.value

    assert busy >= 1
    # The server ends the finished session asynchronously: wait until it is gone.
    wait_for(lambda: database.active_connections(connection, timezone.now()).value == busy - 1, timeout=5)


def test_on_sqlite_the_connection_metric_is_missing_not_zero(tmp_path):
    sqlite = SQLiteWrapper(
        {**connection.settings_dict, "ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "x.db")}
    )

    reading = database.active_connections(sqlite, timezone.now())

    assert reading.is_missing
    assert "sqlite" in reading.missing_reason


# --- Docker stats arithmetic -------------------------------------------------------------

SAMPLE = {
    "cpu_stats": {
        "cpu_usage": {"total_usage": 3_000_000_000, "percpu_usage": [1, 2, 3, 4]},
        "system_cpu_usage": 40_000_000_000,
        "online_cpus": 2,
    },
    "precpu_stats": {"cpu_usage": {"total_usage": 2_000_000_000}, "system_cpu_usage": 38_000_000_000},
    "memory_stats": {"usage": 600, "limit": 1000, "stats": {"total_inactive_file": 100}},
}


def test_cpu_percent_uses_online_cpus_not_the_per_cpu_list():
    # 1 s of CPU over 2 s of system time on 2 online CPUs = one full core = 100 %.
    assert docker_stats.cpu_percent(SAMPLE) == pytest.approx(100.0)


def test_cpu_percent_without_online_cpus_is_unknown_not_guessed():
    no_online = {**SAMPLE, "cpu_stats": {k: v for k, v in SAMPLE["cpu_stats"].items() if k != "online_cpus"}}
    assert docker_stats.cpu_percent(no_online) is None


def test_memory_percent_leaves_out_the_page_cache():
    assert docker_stats.memory_percent(SAMPLE) == pytest.approx(50.0)


def test_an_average_over_no_reporting_container_is_missing_with_the_errors():
    usages = [docker_stats.ContainerUsage("a", None, None, "NotFound: gone")]
    reading = docker_stats.average(usages, lambda u: u.cpu_percent, "CPU", timezone.now())

    assert reading.is_missing
    assert "NotFound: gone" in reading.missing_reason


def test_a_cache_outage_never_fails_a_request(client, db, settings, caplog):
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}
    }

    first = client.get("/admin/login/")
    second = client.get("/admin/login/")

    assert (first.status_code, second.status_code) == (200, 200)
    warnings = [r.getMessage() for r in caplog.records if r.name == "scaling.middleware"]
    assert len(warnings) == 1  # then it pauses instead of paying the failure on every request
    assert warnings[0].startswith("could not record a response time (pausing 30 s)")
