"""The fabric admin: what operators see, what its actions do, what it never shows."""

from __future__ import annotations

import re
from datetime import timedelta
from itertools import count

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from sync import leases, operations
from sync.models import Fabric, Resource, RunStatus, SyncRun, SyncStatus
from tests.conftest import wait_for
from tests.factories import make_fabric

CHANGELIST = reverse("admin:sync_fabric_changelist")
SECRET = "s3cr3t-T0ken"
URL_WITH_CREDENTIALS = f"https://deploy:{SECRET}@git.example.com/fabrics/east.git"
_serial = count(1)


def change_url(fabric: Fabric) -> str:
    return reverse("admin:sync_fabric_change", args=[fabric.pk])


def posted(initial: dict) -> dict:
    """A change form's initial values as a browser posts them (an empty choice is "", not None)."""
    return {key: "" if value is None else value for key, value in initial.items()}


def make_run(fabric: Fabric, status: str, started_at, **fields) -> SyncRun:
    return SyncRun.objects.create(fabric=fabric, trigger="schedule", status=status, started_at=started_at, **fields)


def make_resource(fabric: Fabric, kind: str = "Switch") -> Resource:
    n = next(_serial)
    return Resource.objects.create(
        fabric=fabric, api_version="v1", kind=kind, name=f"r{n}", content_hash=f"{n:064}", source_file="a.yaml"
    )


def failing_fabric(name: str, since_minutes: int = 42, **fields) -> Fabric:
    now = timezone.now()
    state = {
        "sync_status": SyncStatus.ERROR,
        "consecutive_failures": 2,
        "failing_since": now - timedelta(minutes=since_minutes),
        "last_sync": now - timedelta(hours=3),
        "last_attempt_at": now - timedelta(minutes=5),
        "last_error": "manifests/vlans.yaml:7:3: invalid YAML: mapping values are not allowed here " + "x" * 100,
    }
    fabric = make_fabric(name=name, **{**state, **fields})
    make_run(fabric, RunStatus.SUCCESS, now - timedelta(hours=3, minutes=1))
    make_run(fabric, RunStatus.FAILED, now - timedelta(minutes=since_minutes))
    make_run(fabric, RunStatus.FAILED, now - timedelta(minutes=5))
    return fabric


def populate(fabrics: int) -> None:
    for _ in range(fabrics):
        n = next(_serial)
        healthy = make_fabric(name=f"healthy-{n}", sync_status=SyncStatus.IN_SYNC, last_sync=timezone.now())
        make_resource(healthy)
        make_resource(healthy)
        failing_fabric(f"failing-{n}")


def run_action(client, action: str, *fabrics: Fabric):
    response = client.post(
        CHANGELIST, {"action": action, "_selected_action": [f.pk for f in fabrics], "index": "0"}, follow=True
    )
    assert response.status_code == 200
    return [str(message) for message in response.context["messages"]]


# --- The changelist ------------------------------------------------------------------


def test_the_changelist_costs_no_more_queries_for_many_fabrics_than_for_a_few(
    admin_client, django_assert_max_num_queries
):
    populate(2)
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(CHANGELIST).status_code == 200

    populate(20)
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    assert response.content.decode().count('class="action-select"') == 44


def test_the_changelist_says_what_is_broken_and_since_when(admin_client):
    failing_fabric("east", since_minutes=42)
    healthy = make_fabric(
        name="west", sync_status=SyncStatus.IN_SYNC, last_sync=timezone.now(), current_commit="a" * 40
    )
    make_resource(healthy)

    html = admin_client.get(CHANGELIST).content.decode().replace("\xa0", " ")

    assert "Error</span>" in html
    assert "In sync</span>" in html
    assert "42 minutes ago" in html  # failing since the first failure after the last success
    assert "3 hours ago" in html  # the last success
    shown_error = re.search(r'<td class="field-last_error_short"><span class="clip" title="[^"]*">([^<]*)</span>', html)
    assert shown_error is not None
    assert shown_error.group(1).startswith("manifests/vlans.yaml:7:3: invalid YAML")
    assert len(shown_error.group(1)) == 80  # truncated; the whole error is in the title
    assert "<code>aaaaaaaaaa</code>" in html


def test_the_health_filter_lists_only_failing_fabrics(admin_client):
    failing_fabric("east")
    make_fabric(name="west", sync_status=SyncStatus.IN_SYNC, last_sync=timezone.now())

    html = admin_client.get(CHANGELIST, {"health": "failing"}).content.decode()

    assert ">east</a>" in html
    assert ">west</a>" not in html


def test_a_user_who_is_not_staff_is_sent_to_the_login_page(client, db):
    user = get_user_model().objects.create_user("viewer", password="a-long-passphrase-1")
    client.force_login(user)

    response = client.get(CHANGELIST)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_credentials_in_a_git_url_never_reach_the_changelist_or_the_change_form(admin_client):
    fabric = make_fabric(URL_WITH_CREDENTIALS, name="east")

    pages = [admin_client.get(CHANGELIST), admin_client.get(change_url(fabric))]

    for page in pages:
        html = page.content.decode()
        assert SECRET not in html
        assert "https://deploy:***@git.example.com/fabrics/east.git" in html


def test_saving_an_old_row_with_credentials_in_its_url_asks_to_move_them_to_a_credential(admin_client):
    fabric = make_fabric(URL_WITH_CREDENTIALS, name="east")  # stored before URLs were checked for credentials
    form = admin_client.get(change_url(fabric)).context["adminform"].form
    data = {**posted(form.initial), "description": "edited", "_save": "Save"}
    data.update({"runs-TOTAL_FORMS": "0", "runs-INITIAL_FORMS": "0", "runs-MIN_NUM_FORMS": "0"})

    response = admin_client.post(change_url(fabric), data)

    assert response.status_code == 200
    html = response.content.decode()
    assert "Git URL contains credentials" in html
    assert SECRET not in html
    fabric.refresh_from_db()
    assert fabric.git_url == URL_WITH_CREDENTIALS
    assert fabric.description == ""


def test_a_url_that_still_contains_the_mask_is_refused(admin_client):
    fabric = make_fabric(URL_WITH_CREDENTIALS, name="east")
    form = admin_client.get(change_url(fabric)).context["adminform"].form
    data = {**posted(form.initial), "git_url": "https://deploy:***@git.example.com/fabrics/west.git", "_save": "Save"}
    data.update({"runs-TOTAL_FORMS": "0", "runs-INITIAL_FORMS": "0", "runs-MIN_NUM_FORMS": "0"})

    response = admin_client.post(change_url(fabric), data)

    assert response.status_code == 200
    assert "Remove the masked credentials" in response.content.decode()
    fabric.refresh_from_db()
    assert fabric.git_url == URL_WITH_CREDENTIALS


# --- Actions -------------------------------------------------------------------------


@pytest.mark.worker
def test_sync_now_through_a_real_worker_brings_the_fabric_in_sync_and_skips_a_busy_one(
    admin_client, celery_worker, git_repo
):
    repo = git_repo("admin-sync-now")
    commit = repo.with_switches(3)
    fabric = make_fabric(repo.url, name="east", next_sync_at=timezone.now() + timedelta(hours=1))
    busy = make_fabric(repo.url, name="busy")
    assert leases.claim_one(busy.id, timezone.now())

    messages = run_action(admin_client, "sync_now", fabric, busy)

    assert messages == [
        "Enqueued 1 fabric for sync.",
        "Skipped 1 fabric because a sync was already running: busy.",
    ]
    wait_for(
        lambda: Fabric.objects.get(pk=fabric.pk).sync_status == SyncStatus.IN_SYNC,
        timeout=60,
        message=celery_worker.log(),
    )
    fabric.refresh_from_db()
    assert fabric.current_commit == commit
    assert fabric.resources.count() == 3
    assert SyncRun.objects.get(fabric=fabric).trigger == "manual"
    assert not SyncRun.objects.filter(fabric=busy).exists()


def test_disable_and_enable_sync_report_how_many_fabrics_changed(admin_client):
    east, west = make_fabric(name="east"), make_fabric(name="west", sync_enabled=False)

    assert run_action(admin_client, "disable_sync", east, west) == ["Disabled sync for 1 fabric."]
    assert not Fabric.objects.filter(sync_enabled=True).exists()

    assert run_action(admin_client, "enable_sync", east, west) == ["Enabled sync for 2 fabrics."]
    assert Fabric.objects.filter(sync_enabled=True).count() == 2


def test_reset_failures_lifts_a_suspension_and_makes_the_fabric_due_now(admin_client):
    suspended = failing_fabric("east", sync_status=SyncStatus.SUSPENDED)
    never_synced = make_fabric(name="west", sync_status=SyncStatus.ERROR, consecutive_failures=1, last_error="boom")
    before = timezone.now()

    messages = run_action(admin_client, "reset_failures", suspended, never_synced)

    assert messages == ["Reset failures of 2 fabrics; they are due now."]
    suspended.refresh_from_db()
    never_synced.refresh_from_db()
    assert (suspended.sync_status, suspended.consecutive_failures, suspended.last_error) == (SyncStatus.IN_SYNC, 0, "")
    assert never_synced.sync_status == SyncStatus.NEVER_SYNCED
    assert before <= suspended.next_sync_at <= timezone.now()


def test_reset_failures_leaves_a_running_sync_and_a_healthy_fabric_alone(admin_client):
    running = failing_fabric("east")
    token = leases.claim_one(running.id, timezone.now())
    healthy = make_fabric(name="west", sync_status=SyncStatus.IN_SYNC, last_sync=timezone.now())
    healthy_next = healthy.next_sync_at

    messages = run_action(admin_client, "reset_failures", running, healthy)

    assert messages == [
        "Reset failures of 0 fabrics; they are due now.",
        "Left 2 fabrics alone: no failures to reset, or a sync is running.",
    ]
    running.refresh_from_db()
    healthy.refresh_from_db()
    assert (running.sync_status, running.lease_token, running.consecutive_failures) == (SyncStatus.QUEUED, token, 2)
    assert healthy.next_sync_at == healthy_next


# --- The change page -----------------------------------------------------------------


def test_the_change_page_shows_the_last_10_runs_read_only(admin_client):
    fabric = make_fabric(name="east")
    now = timezone.now()
    for minutes in range(12):
        make_run(fabric, RunStatus.SUCCESS, now - timedelta(minutes=minutes), commit=f"{minutes:02}" + "f" * 38)

    response = admin_client.get(change_url(fabric))

    html = response.content.decode()
    inline = response.context["inline_admin_formsets"][0]
    assert len(inline.formset.forms) == 10
    assert "<code>00ffffffff</code>" in html  # the newest run
    assert "<code>09ffffffff</code>" in html
    assert "<code>10ffffffff</code>" not in html  # the 11th newest is left out
    assert 'name="sync_status"' not in html  # state is read-only


def test_changing_the_interval_reschedules_from_the_last_success(admin_client):
    last_sync = timezone.now() - timedelta(seconds=200)
    fabric = make_fabric(
        "https://git.example.com/east.git",
        name="east",
        sync_status=SyncStatus.IN_SYNC,
        last_sync=last_sync,
        sync_interval=300,
    )
    form = admin_client.get(change_url(fabric)).context["adminform"].form
    data = {**posted(form.initial), "sync_interval": "3600", "sync_status": SyncStatus.ERROR, "_save": "Save"}
    data.update({"runs-TOTAL_FORMS": "0", "runs-INITIAL_FORMS": "0", "runs-MIN_NUM_FORMS": "0"})

    response = admin_client.post(change_url(fabric), data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    fabric.refresh_from_db()
    assert fabric.sync_interval == 3600
    assert fabric.next_sync_at == last_sync + timedelta(seconds=3600)
    assert fabric.sync_status == SyncStatus.IN_SYNC  # a posted state field is ignored


def test_changing_the_branch_makes_the_fabric_due_now(db):
    fabric = make_fabric(name="east", last_sync=timezone.now(), next_sync_at=timezone.now() + timedelta(hours=1))
    now = timezone.now()

    assert operations.rescheduled_next_sync(fabric, ["git_branch"], now) == now
    # A fixed credential too: a fabric failing on a rejected token should not wait out its backoff.
    assert operations.rescheduled_next_sync(fabric, ["git_credential"], now) == now
    assert operations.rescheduled_next_sync(fabric, ["description"], now) is None


def test_a_shorter_interval_during_a_failure_streak_keeps_the_failure_backoff(db, settings):
    settings.SYNC_FAILURE_BACKOFF_MAX = 3600
    now = timezone.now()
    fabric = make_fabric(name="east", consecutive_failures=2, last_attempt_at=now, sync_interval=60)

    # 60 s * 2**2 after the last attempt, not "60 s after the last success".
    assert operations.rescheduled_next_sync(fabric, ["sync_interval"], now) == now + timedelta(seconds=240)


def test_saving_settings_never_overwrites_state_a_worker_wrote_meanwhile(db):
    fabric = make_fabric(name="east")  # loaded by the admin as never_synced...
    token = leases.claim_one(fabric.id, timezone.now())  # ...then a tick claims it
    fabric.sync_interval = 900

    operations.save_settings(fabric, ["sync_interval"], timezone.now())

    stored = Fabric.objects.get(pk=fabric.pk)
    assert stored.sync_interval == 900
    assert (stored.sync_status, stored.lease_token) == (SyncStatus.QUEUED, token)


# --- Runs and resources ----------------------------------------------------------------


def test_sync_runs_and_resources_are_read_only_with_filters(admin_client):
    fabric = failing_fabric("east")
    resource = make_resource(fabric, kind="VLAN")
    run = SyncRun.objects.filter(fabric=fabric).first()
    assert run is not None

    for model in ("syncrun", "resource"):
        assert admin_client.get(reverse(f"admin:sync_{model}_add")).status_code == 403
    runs = admin_client.get(
        reverse("admin:sync_syncrun_changelist"), {"status": "failed", "fabric__id__exact": fabric.pk}
    )
    resources = admin_client.get(reverse("admin:sync_resource_changelist"), {"kind": "VLAN"})
    run_page = admin_client.get(reverse("admin:sync_syncrun_change", args=[run.pk]))
    resource_page = admin_client.get(reverse("admin:sync_resource_change", args=[resource.pk]))

    assert runs.context["cl"].result_count == 2
    assert resources.context["cl"].result_count == 1
    for page in (run_page, resource_page):
        assert page.status_code == 200
        assert 'name="_save"' not in page.content.decode()


def test_deleting_a_fabric_in_the_admin_deletes_its_runs_and_resources(admin_client):
    fabric = failing_fabric("east")
    make_resource(fabric)

    response = admin_client.post(reverse("admin:sync_fabric_delete", args=[fabric.pk]), {"post": "yes"})

    assert response.status_code == 302
    assert not Fabric.objects.exists()
    assert not SyncRun.objects.exists()
    assert not Resource.objects.exists()
