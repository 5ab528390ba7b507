"""/health/: anyone gets the status and its HTTP code; only staff and monitors with the token see components."""

from __future__ import annotations

import hmac
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection

from core.health import HealthCheckResult, HealthStatus
from resilience import views
from resilience.models import ComponentType
from resilience.tracking import record_results

pytestmark = pytest.mark.django_db
TOKEN = "k4Jr9-monitoring-token-of-forty-characters"
GIT_SOURCE = "git:/home/alice/fabrics/east.git"


@pytest.fixture
def leaky_component() -> None:
    """A sweep-only component whose name and message say too much to strangers."""
    record_results(
        [
            HealthCheckResult(
                component=GIT_SOURCE,
                component_type=ComponentType.FABRIC_SOURCE,
                status=HealthStatus.UNHEALTHY,
                message="fatal: '/home/alice/fabrics/east.git' does not appear to be a git repository",
                failure_threshold=1,
            )
        ]
    )


@pytest.fixture
def token(settings: Any) -> str:
    settings.HEALTH_TOKEN = TOKEN
    return TOKEN


def test_an_anonymous_request_gets_the_status_and_its_code_and_nothing_else(
    client, leaky_component, private_broker
) -> None:
    response = client.get("/health/")
    assert response.status_code == 503  # no Celery worker runs in this test: a critical failure
    assert response.json() == {"status": "unhealthy"}
    text = response.content.decode()
    for secret in ("alice", "/home/", "workers", "database", "ping", settings.CELERY_BROKER_URL):
        assert secret not in text
    assert response["Cache-Control"].startswith("max-age=0")


def test_readiness_and_liveness_tell_an_anonymous_caller_only_the_status(client) -> None:
    ready = client.get("/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"status": "healthy"})
    assert str(connection.settings_dict.get("HOST") or "127.0.0.1") not in ready.content.decode()
    live = client.get("/health/live")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})


def test_staff_see_every_component_with_its_message(admin_client, leaky_component, private_broker) -> None:
    response = admin_client.get("/health/")
    assert response.status_code == 503
    components = response.json()["components"]
    assert components["workers"]["status"] == "unhealthy"
    assert components["database"]["status"] == "healthy"
    assert components[GIT_SOURCE]["message"].startswith("fatal: '/home/alice/fabrics/east.git'")


def test_a_logged_in_user_who_is_not_staff_gets_only_the_status(client) -> None:
    client.force_login(User.objects.create_user("someone", password="x"))
    assert client.get("/health/ready").json() == {"status": "healthy"}


def test_a_monitor_with_the_token_sees_the_components(client, token, monkeypatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real_compare_digest = hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare_digest(a, b)

    monkeypatch.setattr(views.hmac, "compare_digest", compare_digest)
    response = client.get("/health/ready", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200
    assert set(response.json()["components"]) == {"database", "broker"}
    assert compared == [(token.encode(), token.encode())]  # constant time, not ==


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
        f"Basic {TOKEN}",
        TOKEN,
        "Bearer ",
    ],
)
def test_a_wrong_or_malformed_token_gets_only_the_status(client, token, header) -> None:
    response = client.get("/health/ready", HTTP_AUTHORIZATION=header)
    assert (response.status_code, response.json()) == (200, {"status": "healthy"})


def test_without_a_configured_token_no_bearer_header_opens_the_detail(client, settings) -> None:
    settings.HEALTH_TOKEN = ""
    assert client.get("/health/ready", HTTP_AUTHORIZATION="Bearer ").json() == {"status": "healthy"}
    assert client.get("/health/ready", HTTP_AUTHORIZATION="Bearer anything").json() == {"status": "healthy"}
