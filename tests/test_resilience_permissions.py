"""Resilience admin actions need the change permission and leave a log entry per object changed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.urls import reverse

from core.breaker import CircuitBreaker
from core.breaker_core import State
from resilience.admin import ComponentHealthAdmin
from resilience.models import CircuitBreakerState, ComponentHealth, ComponentType, HealthStatus
from resilience.snapshots import refresh_snapshots

pytestmark = pytest.mark.django_db

COMPONENTS = reverse("admin:resilience_componenthealth_changelist")
BREAKERS = reverse("admin:resilience_circuitbreakerstate_changelist")
COMPONENT_ACTIONS = {"start_maintenance", "end_maintenance", "resume_healing"}
BREAKER_ACTIONS = {"force_open", "disable", "reset", "forget"}


def staff(username: str, *codenames: str) -> Client:
    user = User.objects.create_user(username, password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="resilience", codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer() -> Client:
    return staff("viewer", "view_componenthealth", "view_circuitbreakerstate")


@pytest.fixture
def operator() -> Client:
    return staff(
        "operator",
        "view_componenthealth",
        "change_componenthealth",
        "view_circuitbreakerstate",
        "change_circuitbreakerstate",
    )


@pytest.fixture
def component() -> ComponentHealth:
    return ComponentHealth.objects.create(
        name="container:fcp-worker-3",
        component_type=ComponentType.CONTAINER,
        status=HealthStatus.UNHEALTHY,
        needs_attention=True,
        heal_attempts=5,
    )


@pytest.fixture
def breaker() -> Iterator[tuple[CircuitBreaker, CircuitBreakerState]]:
    handle = CircuitBreaker(f"git:perm-{uuid.uuid4().hex[:8]}.example.com")
    handle.call(lambda: None)
    refresh_snapshots()
    yield handle, CircuitBreakerState.objects.get(name=handle.name)
    handle.forget()


def who(entry: LogEntry) -> str:
    return User.objects.get(pk=entry.user_id).username


def offered(client: Client, url: str) -> set[str]:
    response = client.get(url)
    assert response.status_code == 200
    form = response.context["action_form"]
    return {value for value, _ in form.fields["action"].choices if value} if form else set()


def act(client: Client, url: str, action: str, pk: int) -> None:
    client.post(url, {"action": action, "_selected_action": [pk], "index": 0})


def test_a_view_only_user_is_not_offered_the_actions_and_cannot_run_them(viewer, component, breaker) -> None:
    handle, row = breaker
    assert offered(viewer, COMPONENTS).isdisjoint(COMPONENT_ACTIONS)
    assert offered(viewer, BREAKERS).isdisjoint(BREAKER_ACTIONS)

    for action in COMPONENT_ACTIONS:
        act(viewer, COMPONENTS, action, component.pk)
    for action in BREAKER_ACTIONS:
        act(viewer, BREAKERS, action, row.pk)

    component.refresh_from_db()
    assert (component.in_maintenance, component.needs_attention, component.heal_attempts) == (False, True, 5)
    assert handle.state is State.CLOSED
    assert CircuitBreakerState.objects.filter(pk=row.pk).exists()
    assert not LogEntry.objects.exists()


def test_a_view_only_user_cannot_save_the_component_form(viewer, component) -> None:
    url = reverse("admin:resilience_componenthealth_change", args=[component.pk])
    viewer.post(url, {"in_maintenance": "on"})
    component.refresh_from_db()
    assert not component.in_maintenance
    assert not LogEntry.objects.exists()


def test_an_operator_runs_the_component_actions_and_each_change_is_logged_with_who_and_what(
    operator, component
) -> None:
    assert offered(operator, COMPONENTS) >= COMPONENT_ACTIONS

    act(operator, COMPONENTS, "start_maintenance", component.pk)
    act(operator, COMPONENTS, "start_maintenance", component.pk)  # already in maintenance: nothing to log
    act(operator, COMPONENTS, "resume_healing", component.pk)
    act(operator, COMPONENTS, "end_maintenance", component.pk)

    component.refresh_from_db()
    assert (component.in_maintenance, component.needs_attention, component.heal_attempts) == (False, False, 0)
    entries = list(LogEntry.objects.order_by("id"))
    assert [e.get_change_message() for e in entries] == [
        "Put in maintenance",
        "Resumed healing with a full budget (was needs attention: yes, 5 attempt(s) spent)",
        "Ended maintenance",
    ]
    for entry in entries:
        assert (who(entry), entry.action_flag) == ("operator", CHANGE)
        assert (entry.object_id, entry.object_repr) == (str(component.pk), str(component))
        assert entry.content_type_id == ContentType.objects.get_for_model(ComponentHealth).pk


def test_an_operator_runs_the_breaker_actions_on_the_live_state_and_each_is_logged(operator, breaker) -> None:
    handle, row = breaker
    assert offered(operator, BREAKERS) >= BREAKER_ACTIONS

    act(operator, BREAKERS, "force_open", row.pk)
    assert handle.state is State.FORCED_OPEN
    act(operator, BREAKERS, "disable", row.pk)
    assert handle.state is State.DISABLED
    act(operator, BREAKERS, "reset", row.pk)
    assert handle.state is State.CLOSED
    act(operator, BREAKERS, "forget", row.pk)
    assert not CircuitBreakerState.objects.filter(pk=row.pk).exists()

    entries = list(LogEntry.objects.order_by("id"))
    assert [e.get_change_message() for e in entries] == [
        "Forced open the breaker (last snapshot: closed)",
        "Disabled the breaker (last snapshot: forced_open)",
        "Reset the breaker (last snapshot: disabled)",
        "Forgot the breaker (last snapshot: closed)",
    ]
    assert {(who(e), e.object_repr.split(" ")[0]) for e in entries} == {("operator", handle.name)}


def test_the_breaker_changelist_says_which_calls_each_breaker_guards(operator, breaker) -> None:
    handle, _ = breaker
    page = operator.get(BREAKERS).content.decode()
    assert handle.name in page
    assert "git ls-remote / fetch of every fabric whose repository is on this host" in page


def test_an_operator_saving_the_component_form_writes_only_maintenance_and_it_is_logged(
    operator, component, monkeypatch
) -> None:
    real_get_object = ComponentHealthAdmin.get_object

    def get_object_then_tracking_writes(self, *args, **kwargs):
        obj = real_get_object(self, *args, **kwargs)
        ComponentHealth.objects.filter(pk=component.pk).update(consecutive_failures=7, last_message="exited")
        return obj

    monkeypatch.setattr(ComponentHealthAdmin, "get_object", get_object_then_tracking_writes)
    response = operator.post(
        reverse("admin:resilience_componenthealth_change", args=[component.pk]), {"in_maintenance": "on"}
    )
    assert response.status_code == 302

    component.refresh_from_db()
    assert (component.in_maintenance, component.consecutive_failures, component.last_message) == (True, 7, "exited")
    (entry,) = LogEntry.objects.all()
    assert (who(entry), entry.object_repr) == ("operator", str(component))
    assert entry.get_change_message() == "Changed In maintenance."
