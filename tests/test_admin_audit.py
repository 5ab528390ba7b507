"""Fabric admin actions: only users with the change permission run them, and each leaves an audit entry."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from sync.models import Fabric
from tests.factories import make_fabric

CHANGELIST = reverse("admin:sync_fabric_changelist")


def staff_client(*codenames: str) -> Client:
    user = get_user_model().objects.create_user(f"op-{'-'.join(codenames)}", password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def run_action(client: Client, action: str, *fabrics: Fabric):
    return client.post(
        CHANGELIST, {"action": action, "_selected_action": [f.pk for f in fabrics], "index": 0}, follow=True
    )


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["disable_sync", "reset_failures", "sync_now"])
def test_a_view_only_user_cannot_run_a_fabric_action_and_nothing_is_logged(action):
    fabric = make_fabric(consecutive_failures=2, last_error="boom")
    client = staff_client("view_fabric")
    assert client.get(CHANGELIST).status_code == 200  # they can look

    run_action(client, action, fabric)

    fabric.refresh_from_db()
    assert fabric.sync_enabled
    assert fabric.consecutive_failures == 2
    assert fabric.lease_token == ""
    assert not LogEntry.objects.exists()


@pytest.mark.django_db
def test_a_change_user_disabling_sync_leaves_an_audit_entry_per_fabric():
    east, west = make_fabric(name="east"), make_fabric(name="west")
    client = staff_client("view_fabric", "change_fabric")
    operator = get_user_model().objects.get(username="op-view_fabric-change_fabric")

    run_action(client, "disable_sync", east, west)

    assert not Fabric.objects.filter(sync_enabled=True).exists()
    entries = LogEntry.objects.order_by("object_repr")
    assert [(e.object_repr, e.change_message, e.user_id) for e in entries] == [
        ("east", "Disabled sync", operator.pk),
        ("west", "Disabled sync", operator.pk),
    ]
