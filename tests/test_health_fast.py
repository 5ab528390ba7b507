"""/health/ answers fast: anonymous callers share one cached verdict; live and ready never ping workers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from django.core.cache import cache
from django.db import connections
from django.test import Client

from core.health import ComponentType, HealthCheck, Report, register, unregister
from project.celery_app import app
from resilience import verdict

pytestmark = pytest.mark.django_db(transaction=True)
COUNTED = "test-counted-verdict"


class Calls:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self) -> Report:
        with self.lock:
            self.count += 1
        time.sleep(self.seconds)  # long enough for every parallel request to arrive meanwhile
        return Report(verdict.HealthStatus.HEALTHY, "counted")


@pytest.fixture
def counted() -> Iterator[Calls]:
    """A live check that counts how often the full verdict is computed; no cached verdict to start from."""
    calls = Calls(seconds=0.5)
    register(HealthCheck(COUNTED, ComponentType.SERVICE, calls, timeout=5))
    cache.delete_many([verdict.VERDICT_KEY, verdict.VERDICT_LOCK_KEY])
    yield calls
    unregister(COUNTED)
    cache.delete_many([verdict.VERDICT_KEY, verdict.VERDICT_LOCK_KEY])


def get_in_parallel(path: str, requests: int) -> list[tuple[int, dict, float]]:
    """``requests`` anonymous GETs released at once; each answer with its code, body and seconds."""
    barrier = threading.Barrier(requests)
    answers: list[tuple[int, dict, float]] = []

    def one() -> None:
        try:
            barrier.wait()
            started = time.monotonic()
            response = Client().get(path)
            answers.append((response.status_code, response.json(), time.monotonic() - started))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one) for _ in range(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return answers


def test_eight_parallel_anonymous_requests_cost_one_verdict_computation(counted):
    answers = get_in_parallel("/health/", 8)

    assert counted.count == 1
    assert len(answers) == 8
    assert len({(code, body["status"]) for code, body, _ in answers}) == 1  # one verdict for all
    assert all(set(body) == {"status"} for _, body, _ in answers)

    again = get_in_parallel("/health/", 8)  # within the fresh window: all from the cache
    assert counted.count == 1
    assert max(seconds for _, _, seconds in again) < counted.seconds


def test_a_fresh_cached_verdict_answers_without_running_a_check(client, counted):
    first = client.get("/health/")
    started = time.monotonic()
    second = client.get("/health/")
    elapsed = time.monotonic() - started

    assert counted.count == 1
    assert (second.status_code, second.json()) == (first.status_code, first.json())
    # The check alone sleeps 0.5 s; a cached answer is a cache read. Generous for a loaded machine.
    assert elapsed < counted.seconds


def test_once_the_verdict_ages_out_the_next_request_computes_it_again(client, counted, monkeypatch):
    monkeypatch.setattr(verdict, "VERDICT_FRESH_SECONDS", 0.2)
    client.get("/health/")
    time.sleep(0.3)
    client.get("/health/")
    assert counted.count == 2


def test_staff_get_the_components_computed_now_and_refresh_the_anonymous_verdict(admin_client, client, counted):
    body = admin_client.get("/health/").json()
    admin_client.get("/health/")
    assert counted.count == 2
    assert body["components"][COUNTED]["status"] == "healthy"
    client.get("/health/")
    assert counted.count == 2  # anonymous: the verdict staff just computed


def test_without_the_cache_each_request_still_gets_a_verdict(client, counted, monkeypatch):
    def cache_down(*args, **kwargs):
        raise ConnectionError("cache unreachable")

    monkeypatch.setattr(verdict.cache, "add", cache_down)
    monkeypatch.setattr(verdict.cache, "get", cache_down)
    response = client.get("/health/")
    assert response.status_code in (200, 503)
    assert set(response.json()) == {"status"}
    assert counted.count == 1


@pytest.fixture
def pings(monkeypatch) -> list[dict]:
    """Every broadcast worker ping made in this process."""
    made: list[dict] = []

    def ping(*args, **kwargs):
        made.append(kwargs)
        return []

    monkeypatch.setattr(app.control, "ping", ping)
    return made


def test_liveness_and_readiness_never_wait_on_a_worker_ping(client, admin_client, pings, counted):
    for caller in (client, admin_client):
        assert caller.get("/health/live").status_code == 200
        assert caller.get("/health/ready").status_code == 200
    assert pings == []
    assert counted.count == 0  # nor on any check beyond the database and the broker

    admin_client.get("/health/")  # the full verdict does ping: the spy is wired
    assert len(pings) == 1
