"""Admin polish (issue 12): worst components first, times to the second with their zone,
no "add" for rows only the system writes, "Sync now" on the fabric page, long text cut
with the whole of it on hover, and dry-run scaling decisions labelled as such."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from core.display import stamp
from core.models import Credential
from resilience.models import CircuitBreakerState, ComponentHealth, HealingAttempt, HealthTransition
from scaling.models import ScalingEvent, ScalingPolicy
from sync.models import DriftedObject, FabricCluster, Resource, RunStatus, SyncRun, SyncStatus
from tests.factories import make_fabric

pytestmark = pytest.mark.django_db

MOMENT = datetime(2026, 12, 3, 10, 21, 35, tzinfo=UTC)
STAMP = "2026-12-03 10:21:35 UTC"
_serial = count(1)


def text(response: Any) -> str:
    return response.content.decode().replace("\xa0", " ")


def staff_client(*codenames: str, enforce_csrf_checks: bool = False) -> tuple[Client, Any]:
    user = get_user_model().objects.create_user(f"op-{next(_serial)}", password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client(enforce_csrf_checks=enforce_csrf_checks)
    client.force_login(user)
    return client, user


def component(name: str, status: str, checked_ago: timedelta = timedelta(seconds=10), **fields: Any) -> ComponentHealth:
    return ComponentHealth.objects.create(
        name=name, component_type="worker", status=status, last_checked_at=timezone.now() - checked_ago, **fields
    )


def policy(service: str = "web", **fields: Any) -> ScalingPolicy:
    return ScalingPolicy.objects.create(service=service, image="fcp-tiny:latest", target_cpu_percent=60.0, **fields)


def event(service: str = "web", **fields: Any) -> ScalingEvent:
    values: dict[str, Any] = {
        "action": "up",
        "from_instances": 2,
        "desired_instances": 4,
        "to_instances": 4,
        "reason": "cpu_percent 90 vs target 60",
        "rule": "metric:cpu_percent",
    }
    values.update(fields)
    return ScalingEvent.objects.create(service=service, **values)


# --- Unhealthy first ------------------------------------------------------------------------


def test_components_are_listed_unhealthy_first_then_stale_degraded_unknown_and_healthy_last(admin_client):
    component("a-healthy", "healthy")
    component("b-unknown", "unknown")
    component("c-degraded", "degraded")
    component("d-stale", "healthy", checked_ago=timedelta(hours=1))
    component("e-unhealthy", "unhealthy")
    component("f-unhealthy", "unhealthy")

    response = admin_client.get(reverse("admin:resilience_componenthealth_changelist"))

    assert [c.name for c in response.context["cl"].result_list] == [
        "e-unhealthy",
        "f-unhealthy",
        "d-stale",
        "c-degraded",
        "b-unknown",
        "a-healthy",
    ]


def test_sorting_components_by_status_sorts_by_severity(admin_client):
    component("a-healthy", "healthy")
    component("z-unhealthy", "unhealthy")
    status_column = 1 + ["name", "status_badge"].index("status_badge")

    response = admin_client.get(reverse("admin:resilience_componenthealth_changelist"), {"o": f"-{status_column}"})

    assert [c.name for c in response.context["cl"].result_list] == ["a-healthy", "z-unhealthy"]


# --- Times with seconds and the zone -----------------------------------------------------------


def make_rows_at(moment: datetime) -> dict[str, Any]:
    """One row of every list with a time column, each stamped with ``moment``."""
    fabric = make_fabric(name="east")
    SyncRun.objects.create(fabric=fabric, trigger="schedule", started_at=moment)
    resource = Resource.objects.create(
        fabric=fabric, api_version="v1", kind="Switch", name="leaf-1", content_hash="h", source_file="a.yaml"
    )
    Resource.objects.filter(pk=resource.pk).update(updated_at=moment)  # auto_now on save
    DriftedObject.objects.create(fabric=fabric, kind="VPC", name="vpc-1", state="drifted", compared_at=moment)
    event(created_at=moment)
    policy(observed_instances=3, observed_at=moment)
    broken = component("worker-1", "unhealthy")
    HealthTransition.objects.create(component=broken, from_status="healthy", to_status="unhealthy", at=moment)
    HealingAttempt.objects.create(component=broken, action="restart", attempt=1, backoff_seconds=1, started_at=moment)
    CircuitBreakerState.objects.create(name="git:example.com", state="open", open_until=moment, refreshed_at=moment)
    return {"fabric": fabric}


@pytest.mark.parametrize(
    "changelist",
    [
        "sync_syncrun",
        "sync_resource",
        "sync_driftedobject",
        "scaling_scalingevent",
        "scaling_scalingpolicy",
        "resilience_healthtransition",
        "resilience_healingattempt",
        "resilience_circuitbreakerstate",
    ],
)
def test_list_times_have_seconds_and_the_time_zone(admin_client, changelist):
    make_rows_at(MOMENT)

    html = text(admin_client.get(reverse(f"admin:{changelist}_changelist")))

    assert STAMP in html


def test_the_fabric_page_shows_its_runs_start_to_the_second(admin_client):
    rows = make_rows_at(MOMENT)

    html = text(admin_client.get(reverse("admin:sync_fabric_change", args=[rows["fabric"].pk])))

    assert STAMP in html


def test_relative_ages_carry_the_exact_time_on_hover(admin_client):
    make_fabric(name="east", sync_status=SyncStatus.IN_SYNC, last_sync=timezone.now() - timedelta(hours=3))
    component("worker-1", "unhealthy", status_since=timezone.now() - timedelta(minutes=42))

    fabrics = text(admin_client.get(reverse("admin:sync_fabric_changelist")))
    components = text(admin_client.get(reverse("admin:resilience_componenthealth_changelist")))

    assert re.search(r'<span title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">3 hours ago</span>', fabrics)
    assert re.search(r'<span title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">42 minutes ago</span>', components)


def test_a_stamp_is_written_in_the_current_time_zone_with_its_name():
    with timezone.override("Europe/Berlin"):
        assert stamp(MOMENT) == "2026-12-03 11:21:35 CET"
    assert stamp(MOMENT) == STAMP
    assert stamp(None) == "—"


# --- No "add" for what only the system writes ------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        "sync_syncrun",
        "sync_resource",
        "sync_driftedobject",
        "scaling_scalingevent",
        "resilience_componenthealth",
        "resilience_healthtransition",
        "resilience_healingattempt",
        "resilience_circuitbreakerstate",
    ],
)
def test_rows_only_the_system_writes_cannot_be_added_even_by_a_superuser(admin_client, model):
    add = reverse(f"admin:{model}_add")

    assert admin_client.get(add).status_code == 403
    assert f'href="{add}"' not in text(admin_client.get(reverse(f"admin:{model}_changelist")))  # nor a link to it


def test_what_operators_configure_can_still_be_added(admin_client):
    for model in ("sync_fabric", "scaling_scalingpolicy", "core_credential"):
        assert admin_client.get(reverse(f"admin:{model}_add")).status_code == 200


# --- "Sync now" on the fabric page ------------------------------------------------------------


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The ``sync.sync_fabric`` messages published (no worker runs here)."""
    from sync.tasks import sync_fabric

    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr(sync_fabric, "apply_async", lambda args, **kwargs: sent.append(tuple(args)))
    return sent


def sync_now_form(html: str) -> dict[str, str]:
    """The fields the page's "Sync now" button posts, and where to."""
    form = re.search(
        r'<form method="post" action="([^"]+)">(.*?)<button type="submit" class="fabric-operation"[^>]*>Sync now<',
        html,
        re.S,
    )
    assert form is not None, "no Sync now button"
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', form.group(2)))
    return {"action": form.group(1), **fields}


def test_sync_now_on_the_fabric_page_enqueues_a_manual_sync_leaves_an_audit_entry_and_comes_back(db, published):
    fabric = make_fabric(name="east", next_sync_at=timezone.now() + timedelta(hours=1))
    client, user = staff_client("view_fabric", "change_fabric", enforce_csrf_checks=True)
    page = reverse("admin:sync_fabric_change", args=[fabric.pk])

    form = sync_now_form(text(client.get(page)))
    action = form.pop("action")
    assert form["op"] == "sync"
    assert form["csrfmiddlewaretoken"]
    response = client.post(action, form, follow=True)

    assert response.redirect_chain[-1][0] == page
    assert [str(m) for m in response.context["messages"]] == ["Enqueued 1 fabric for sync."]
    fabric.refresh_from_db()
    assert published == [(fabric.pk, fabric.lease_token, "manual")]  # the Sync now action's own path
    entry = LogEntry.objects.get()
    assert (entry.object_repr, entry.user_id, entry.change_message) == ("east", user.pk, "Sync now: 1 enqueued, 0 busy")


def test_sync_now_without_the_csrf_token_is_refused_and_does_nothing(db, published):
    fabric = make_fabric(name="east")
    client, _ = staff_client("view_fabric", "change_fabric", enforce_csrf_checks=True)

    response = client.post(reverse("admin:sync_fabric_operate", args=[fabric.pk]), {"op": "sync"})

    assert response.status_code == 403
    assert published == []
    assert not LogEntry.objects.exists()


def test_sync_now_is_a_post_only(db, published):
    fabric = make_fabric(name="east")
    client, _ = staff_client("view_fabric", "change_fabric")

    assert client.get(reverse("admin:sync_fabric_operate", args=[fabric.pk]), {"op": "sync"}).status_code == 405
    assert published == []


def test_a_view_only_user_sees_no_sync_now_button_and_cannot_post_it(db, published):
    fabric = make_fabric(name="east")
    client, _ = staff_client("view_fabric")

    html = text(client.get(reverse("admin:sync_fabric_change", args=[fabric.pk])))
    response = client.post(reverse("admin:sync_fabric_operate", args=[fabric.pk]), {"op": "sync"})

    assert "Sync now" not in html
    assert response.status_code == 403
    assert published == []
    assert not LogEntry.objects.exists()


def test_sync_now_on_a_fabric_already_syncing_says_so_and_claims_nothing_twice(db, published):
    from sync import leases

    fabric = make_fabric(name="east")
    token = leases.claim_one(fabric.id, timezone.now())
    client, _ = staff_client("view_fabric", "change_fabric")

    response = client.post(reverse("admin:sync_fabric_operate", args=[fabric.pk]), {"op": "sync"}, follow=True)

    assert [str(m) for m in response.context["messages"]] == [
        "Skipped 1 fabric because a sync was already running: east."
    ]
    assert published == []
    fabric.refresh_from_db()
    assert fabric.lease_token == token


# --- Long text: cut to fit, whole on hover ------------------------------------------------------------


def cells(html: str, column: str) -> list[tuple[str, str]]:
    """(title, shown text) of each cell of ``column`` whose content has a tooltip."""
    pattern = rf'<td class="field-{column}"><(?:span|code) class="clip" title="([^"]*)">([^<]*)</(?:span|code)>'
    return re.findall(pattern, html)


def test_the_fabric_list_cuts_a_long_git_source_and_error_and_keeps_both_whole_in_the_tooltip(admin_client):
    url = "https://git.example.com/network-engineering/datacenter-east/very/long/path/fabric-east.git"
    error = "manifests/vlans.yaml:7:3: invalid YAML: " + "mapping values are not allowed here " * 5
    make_fabric(url, name="east", git_path="manifests/production", last_error=error, consecutive_failures=1)

    html = text(admin_client.get(reverse("admin:sync_fabric_changelist")))

    [(source_title, source_shown)] = cells(html, "source")
    assert source_title == f"{url} @ main : manifests/production"
    assert source_shown.startswith("https://git.example.com/")
    assert source_shown.endswith("manifests/production")  # the middle goes, the branch and folder stay
    assert "…" in source_shown
    assert len(source_shown) <= 56
    [(error_title, error_shown)] = cells(html, "last_error_short")
    assert error_title == error.replace("'", "&#x27;")
    assert len(error_shown) == 80
    assert error_shown.endswith("…")


def test_run_errors_event_reasons_and_component_messages_are_cut_with_the_whole_text_on_hover(admin_client):
    long = "connection refused by 10.0.0.7:6443 after three attempts; " * 4
    fabric = make_fabric(name="east")
    SyncRun.objects.create(
        fabric=fabric,
        trigger="schedule",
        status=RunStatus.FAILED,
        started_at=timezone.now(),
        error_class="TransientError",
        error_message=long,
        worker="celery@worker-3.fabric-control-plane.internal.example.com",
    )
    event(reason=long)
    component("worker-1", "unhealthy", last_message=long)

    pages = {
        "error": text(admin_client.get(reverse("admin:sync_syncrun_changelist"))),
        "short_reason": text(admin_client.get(reverse("admin:scaling_scalingevent_changelist"))),
        "message": text(admin_client.get(reverse("admin:resilience_componenthealth_changelist"))),
    }

    for column, html in pages.items():
        [(title, shown)] = cells(html, column)
        assert long.strip() in title, column
        assert shown.endswith("…"), column
        assert len(shown) < len(long) / 2, column
    # The worker and the attempt: in the status badge's tooltip, not a column of their own.
    assert 'title="attempt 1 on celery@worker-3.fabric-control-plane.internal.example.com"' in pages["error"]


def test_a_short_text_is_shown_whole_and_an_empty_one_as_a_dash(admin_client):
    make_fabric(name="east", last_error="")
    make_fabric(name="west", last_error="boom", consecutive_failures=1)

    html = text(admin_client.get(reverse("admin:sync_fabric_changelist")))

    assert '<td class="field-last_error_short"><span class="clip" title="boom">boom</span></td>' in html
    assert '<td class="field-last_error_short">—</td>' in html


# --- Dry runs --------------------------------------------------------------------------------------


def test_a_dry_run_decision_is_labelled_dry_run_in_the_event_list_and_a_real_one_is_not(admin_client):
    dry = event(service="web", dry_run=True)
    real = event(service="api", dry_run=False)

    html = text(admin_client.get(reverse("admin:scaling_scalingevent_changelist")))

    rows = {m.group(1): m.group(2) for m in re.finditer(r"<tr>(?:(?!</tr>).)*?>(web|api)<(.*?)</tr>", html, re.S)}
    assert "dry run" in rows["web"]
    assert "2 → 4" in rows["web"]
    assert "dry run" not in rows["api"]
    assert dry.pk != real.pk


def test_a_dry_run_events_page_says_nothing_was_started_or_stopped(admin_client):
    dry = event(dry_run=True)
    real = event(dry_run=False)

    dry_page = text(admin_client.get(reverse("admin:scaling_scalingevent_change", args=[dry.pk])))
    real_page = text(admin_client.get(reverse("admin:scaling_scalingevent_change", args=[real.pk])))

    assert "dry run" in dry_page
    assert "decided 2 → 4 and recorded it; nothing was started or stopped." in dry_page
    assert "Carried out" in real_page
    assert "nothing was started or stopped" not in real_page


def test_a_policy_whose_last_decision_was_a_dry_run_says_so(admin_client):
    policy("web", dry_run=True)
    policy("api")
    event("web", dry_run=True)
    event("api", dry_run=False)

    html = text(admin_client.get(reverse("admin:scaling_scalingpolicy_changelist")))

    decisions = dict(re.findall(r'>(web|api)</a></th>.*?<td class="field-last_decision">(.*?)</td>', html, re.S))
    assert "dry run" in decisions["web"]
    assert "dry run" not in decisions["api"]


def test_the_dry_run_filter_still_selects_dry_runs(admin_client):
    event(dry_run=True)
    event(dry_run=False)

    response = admin_client.get(reverse("admin:scaling_scalingevent_changelist"), {"dry_run__exact": "1"})

    assert [e.dry_run for e in response.context["cl"].result_list] == [True]


def test_the_credential_list_stamps_when_the_secret_was_set_and_counts_its_users(admin_client):
    token = Credential.objects.create(name="kube", kind="bearer_token", encrypted_secret="x", rotated_at=MOMENT)
    for name in ("east", "west"):
        FabricCluster.objects.create(fabric=make_fabric(name=name), server_url="https://k8s.example.com", token=token)

    html = text(admin_client.get(reverse("admin:core_credential_changelist")))

    assert f"set on {STAMP}" in html
    assert "2 fabric clusters" in html
