"""The JSON API (project/api): who may call it, what "Sync now" claims and audits, and each shape."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from project.api.auth import TOKEN_ACTOR
from scaling.models import ScalingEvent, ScalingPolicy
from sync import leases
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from sync.runner import run_sync
from tests.factories import make_fabric

pytestmark = pytest.mark.django_db

TOKEN = "api-token-for-tests-7f3a9c"


@pytest.fixture(autouse=True)
def api_token(settings) -> str:
    settings.API_TOKEN = TOKEN
    return TOKEN


@pytest.fixture
def token_client() -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {TOKEN}")


def staff_client(username: str, *codenames: str, csrf: bool = False) -> Client:
    user = get_user_model().objects.create_user(username, password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def username_of(entry: LogEntry) -> str:
    return get_user_model().objects.get(pk=entry.user_id).get_username()


def start_sync(fabric: Fabric, token: str) -> SyncRun:
    """What a worker does with the claim: begin under its token and run the sync, here in-process."""
    assert leases.begin(fabric.id, token, timezone.now(), "test-worker").outcome is leases.BeginOutcome.STARTED
    run_sync(fabric.id, token, trigger="manual", worker="test-worker", may_retry=False)
    return SyncRun.objects.get(fabric=fabric, lease_token=token)


# --- authentication --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/fabrics/", "/api/scaling/", "/api/health/", "/api/runs/1/"])
def test_an_anonymous_caller_gets_401_with_a_bearer_challenge(client, path):
    response = client.get(path)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert "authentication required" in response.json()["error"]


def test_a_logged_in_user_who_is_not_staff_gets_403(client):
    client.force_login(get_user_model().objects.create_user("visitor", password="x"))
    assert client.get("/api/fabrics/").status_code == 403


def test_staff_with_a_session_and_a_token_holder_may_read(admin_client, token_client):
    assert admin_client.get("/api/fabrics/").status_code == 200
    assert token_client.get("/api/fabrics/").status_code == 200


@pytest.mark.parametrize("header", ["Bearer wrong-token", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x"])
def test_a_wrong_token_is_401_even_with_a_staff_session(admin_client, header):
    response = admin_client.get("/api/fabrics/", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert TOKEN not in response.content.decode()


def test_without_a_configured_token_no_token_is_accepted(client, settings):
    settings.API_TOKEN = ""
    assert client.get("/api/fabrics/", HTTP_AUTHORIZATION="Bearer ").status_code == 401
    assert client.get("/api/fabrics/", HTTP_AUTHORIZATION="Bearer anything").status_code == 401


def test_the_token_is_never_logged(client, token_client, caplog):
    fabric = make_fabric()
    with caplog.at_level(logging.DEBUG):
        client.get("/api/fabrics/", HTTP_AUTHORIZATION=f"Bearer {TOKEN}-wrong")
        token_client.post(f"/api/fabrics/{fabric.id}/sync/")
        token_client.get("/api/nothing-here/")
    assert TOKEN not in caplog.text


# --- Sync now: permission, CSRF, claim, audit ------------------------------------------


def test_staff_without_the_change_permission_cannot_start_a_sync_and_nothing_is_audited():
    fabric = make_fabric()
    viewer = staff_client("viewer", "view_fabric")

    response = viewer.post(f"/api/fabrics/{fabric.id}/sync/")

    assert response.status_code == 403
    assert response.json()["error"] == "needs the sync.change_fabric permission"
    fabric.refresh_from_db()
    assert fabric.lease_token == ""
    assert not LogEntry.objects.exists()


def test_a_session_sync_needs_the_csrf_token_like_any_admin_form():
    fabric = make_fabric()
    operator = staff_client("operator", "view_fabric", "change_fabric", csrf=True)
    operator.get("/admin/")  # sets the csrftoken cookie

    refused = operator.post(f"/api/fabrics/{fabric.id}/sync/")
    accepted = operator.post(f"/api/fabrics/{fabric.id}/sync/", HTTP_X_CSRFTOKEN=operator.cookies["csrftoken"].value)

    assert refused.status_code == 403
    assert "CSRF" in refused.json()["error"]
    assert accepted.status_code == 202
    entry = LogEntry.objects.get()
    assert (username_of(entry), entry.object_repr, entry.change_message) == (
        "operator",
        fabric.name,
        "Sync now: enqueued (API)",
    )


def test_a_token_sync_claims_the_lease_returns_its_token_and_is_audited_as_the_api(token_client):
    fabric = make_fabric()

    response = token_client.post(f"/api/fabrics/{fabric.id}/sync/")

    assert response.status_code == 202
    body = response.json()
    fabric.refresh_from_db()
    assert fabric.sync_status == SyncStatus.QUEUED
    assert body == {
        "fabric": fabric.id,
        "claimed": True,
        "token": fabric.lease_token,
        "run": None,
        "status_url": f"/api/fabrics/{fabric.id}/?token={fabric.lease_token}",
    }
    entry = LogEntry.objects.get()
    assert username_of(entry) == TOKEN_ACTOR
    assert entry.change_message == "Sync now: enqueued (API token)"
    assert entry.object_repr == fabric.name


def test_a_second_sync_while_one_is_queued_is_409_and_doubles_nothing(token_client):
    fabric = make_fabric()
    first = token_client.post(f"/api/fabrics/{fabric.id}/sync/").json()

    again = token_client.post(f"/api/fabrics/{fabric.id}/sync/")

    assert again.status_code == 409
    assert again.json()["lease"]["token"] == first["token"]
    fabric.refresh_from_db()
    assert fabric.lease_token == first["token"]
    assert list(LogEntry.objects.order_by("id").values_list("change_message", flat=True)) == [
        "Sync now: enqueued (API token)",
        "Sync now: busy (a sync is queued or running) (API token)",
    ]


def test_the_fabric_shows_the_claim_and_once_started_the_run_it_started(token_client, git_repo):
    repo = git_repo()
    commit = repo.with_switches(2)
    fabric = make_fabric(repo.url)
    claim = token_client.post(f"/api/fabrics/{fabric.id}/sync/").json()

    queued = token_client.get(claim["status_url"]).json()
    run = start_sync(fabric, claim["token"])
    done = token_client.get(claim["status_url"]).json()

    assert queued["lease"]["token"] == claim["token"]
    assert queued["lease"]["status"] == "queued"
    assert queued["claim"] == {"token": claim["token"], "held": True, "run": None}
    assert done["lease"] is None
    assert done["claim"]["held"] is False
    assert done["claim"]["run"]["id"] == run.id
    assert done["claim"]["run"]["status"] == RunStatus.SUCCESS
    assert done["status"] == SyncStatus.IN_SYNC
    assert done["commit"] == commit
    assert done["last_run"]["id"] == run.id


def test_a_missing_fabric_is_404_and_a_get_on_sync_is_405(token_client):
    assert token_client.post("/api/fabrics/999999/sync/").status_code == 404
    assert token_client.get("/api/fabrics/999999/").status_code == 404
    fabric = make_fabric()
    wrong = token_client.get(f"/api/fabrics/{fabric.id}/sync/")
    assert wrong.status_code == 405
    assert wrong["Allow"] == "POST"
    assert not LogEntry.objects.exists()


# --- shapes ----------------------------------------------------------------------------


def test_the_fabric_list_says_status_drift_last_sync_and_errors_and_filters(token_client):
    now = timezone.now()
    make_fabric(name="alpha", sync_status=SyncStatus.IN_SYNC, last_sync=now)
    failing = make_fabric(
        name="beta",
        git_url="https://deploy:s3cret@git.example/fabric.git",
        sync_status=SyncStatus.ERROR,
        consecutive_failures=3,
        failing_since=now - timedelta(hours=1),
        last_error="fatal: could not read from https://deploy:s3cret@git.example/fabric.git",
        last_attempt_at=now - timedelta(minutes=2),
    )

    everything = token_client.get("/api/fabrics/").json()
    only_failing = token_client.get("/api/fabrics/?failing=1").json()
    by_status = token_client.get("/api/fabrics/?status=in_sync&limit=1").json()

    assert everything["count"] == 2
    assert [f["name"] for f in everything["fabrics"]] == ["alpha", "beta"]
    beta = everything["fabrics"][1]
    assert set(beta) == {
        "id", "name", "url", "git_url", "git_branch", "git_path", "sync_enabled", "sync_interval", "status",
        "last_sync", "last_attempt_at", "next_sync_at", "consecutive_failures", "failing_since", "last_error",
        "commit", "drift",
    }  # fmt: skip
    assert beta["url"] == f"/api/fabrics/{failing.id}/"
    assert (beta["status"], beta["consecutive_failures"], beta["drift"]) == ("error", 3, None)
    assert beta["failing_since"] == (now - timedelta(hours=1)).isoformat()
    assert everything["fabrics"][0]["failing_since"] is None
    assert "s3cret" not in str(everything)  # credentials are masked in URLs and errors
    assert failing.last_attempt_at is not None
    assert beta["last_attempt_at"] == failing.last_attempt_at.isoformat()
    assert [f["name"] for f in only_failing["fabrics"]] == ["beta"]
    assert (by_status["count"], by_status["limit"], [f["name"] for f in by_status["fabrics"]]) == (1, 1, ["alpha"])


def test_bad_list_parameters_are_400(token_client):
    assert token_client.get("/api/fabrics/?limit=0").status_code == 400
    assert token_client.get("/api/fabrics/?limit=abc").status_code == 400
    unknown = token_client.get("/api/fabrics/?status=broken")
    assert unknown.status_code == 400
    assert "in_sync" in unknown.json()["statuses"]


def test_a_run_has_its_outcome_counts_and_fabric(token_client, git_repo):
    repo = git_repo()
    repo.with_switches(3)
    fabric = make_fabric(repo.url, name="ran")
    token = leases.claim_one(fabric.id, timezone.now())
    assert token is not None
    run = start_sync(fabric, token)

    body = token_client.get(f"/api/runs/{run.id}/").json()

    assert body["id"] == run.id
    assert body["fabric"] == {"id": fabric.id, "url": f"/api/fabrics/{fabric.id}/", "name": "ran"}
    assert (body["status"], body["trigger"], body["token"]) == ("success", "manual", token)
    assert body["resources"] == {"created": 3, "updated": 0, "deleted": 0, "total": 3}
    assert body["finished_at"] is not None
    assert token_client.get("/api/runs/999999/").status_code == 404


def test_scaling_lists_each_service_with_current_desired_and_recent_events(token_client):
    now = timezone.now()
    ScalingPolicy.objects.create(
        service="api", enabled=True, image="fcp-tiny:latest", target_cpu_percent=50.0, observed_instances=2,
        observed_at=now,
    )  # fmt: skip
    for minutes, desired in ((5, 2), (1, 3)):
        ScalingEvent.objects.create(
            service="api", action="up" if desired == 2 else "none", from_instances=1, desired_instances=desired,
            to_instances=2, reason="cpu", rule="metric:cpu", created_at=now - timedelta(minutes=minutes),
        )  # fmt: skip

    services = {s["service"]: s for s in token_client.get("/api/scaling/").json()["services"]}

    api = services["api"]
    assert (api["current"], api["desired"], api["enabled"]) == (2, 3, True)
    assert [e["desired"] for e in api["recent_events"]] == [3, 2]  # newest first
    assert set(api["recent_events"][0]) >= {"id", "action", "from", "to", "rule", "at", "success"}


def test_health_is_the_full_verdict_with_the_scheduler(token_client, monkeypatch):
    from project.celery_app import app

    monkeypatch.setattr(app.control, "ping", lambda *args, **kwargs: [])  # no broadcast wait
    response = token_client.get("/api/health/")

    assert response.status_code == 200  # the body says the status; /health/ is for probes
    body = response.json()
    assert body["status"] in ("healthy", "degraded", "unhealthy")
    assert {"database", "cache", "broker", "workers"} <= set(body["components"])
    assert body["scheduler"]["entry"] == "project.master_scheduler"
    assert set(body["scheduler"]) >= {"enabled", "last_tick_at", "tick_age_seconds", "stale", "problems"}
