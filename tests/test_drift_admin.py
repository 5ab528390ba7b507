"""The fabric admin's Kubernetes side: the drift badge and filter, the cluster settings,
the diff on the fabric page, Compare / Reconcile now and Confirm prune, and the token
that no page ever shows."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape
from itertools import count
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from core.models import Credential
from sync.models import (
    ClusterMode,
    DriftedObject,
    DriftState,
    DriftStatus,
    Fabric,
    FabricCluster,
    RunStatus,
    SyncRun,
    SyncStatus,
    SyncTrigger,
)
from tests.conftest import wait_for
from tests.factories import make_fabric
from tests.kube_api import demo_objects
from tests.livefabric import VPC_API, forget_k8s_breakers, make_credential, make_live_fabric, placed  # noqa: F401

CHANGELIST = reverse("admin:sync_fabric_changelist")
DRIFT_LIST = reverse("admin:sync_driftedobject_changelist")
TOKEN = "eyJhbGciOiJSUzI1NiJ9.k8s-bearer-T0KEN-that-must-never-show"
SERVER = "https://10.0.0.1:6443"
GIT_URL = "https://git.example.com/fabrics/east.git"
_serial = count(1)


def change_url(fabric: Fabric) -> str:
    return reverse("admin:sync_fabric_change", args=[fabric.pk])


def operate_url(fabric: Fabric) -> str:
    return reverse("admin:sync_fabric_operate", args=[fabric.pk])


def staff_client(*codenames: str) -> tuple[Client, Any]:
    user = get_user_model().objects.create_user(f"op-{next(_serial)}", password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client, user


def connect(fabric: Fabric, credential: Credential | None = None, **fields: Any) -> FabricCluster:
    """A cluster row as a sync would have left it (``fields`` override the defaults)."""
    defaults: dict[str, Any] = {"server_url": SERVER, "namespaces": ["default"]}
    return FabricCluster.objects.create(
        fabric=fabric, token=credential or make_credential(TOKEN), **{**defaults, **fields}
    )


def compared(minutes_ago: int = 3, **counts: int) -> dict[str, Any]:
    full = {"in_sync": 0, "drifted": 0, "missing": 0, "unmanaged": 0, **counts}
    out = any(full[s] for s in ("drifted", "missing", "unmanaged"))
    return {
        "drift_status": DriftStatus.OUT_OF_SYNC if out else DriftStatus.IN_SYNC,
        "drift_counts": full,
        "drift_compared_at": timezone.now() - timedelta(minutes=minutes_ago),
    }


def drifted(fabric: Fabric, name: str, state: str = DriftState.DRIFTED, **fields: Any) -> DriftedObject:
    defaults: dict[str, Any] = {
        "group": "vpc.githedgehog.com",
        "kind": "VPC",
        "namespace": "default",
        "api_version": "vpc.githedgehog.com/v1beta1",
        "compared_at": timezone.now(),
    }
    return DriftedObject.objects.create(fabric=fabric, name=name, state=state, **{**defaults, **fields})


def vlan_diff(git: Any = 1001, live: Any = 4000, absent: bool = False) -> list[dict[str, Any]]:
    return [{"path": "/spec/subnets/frontend/vlan", "desired": git, "live": live, "live_absent": absent}]


def out_of_sync_fabric(name: str = "east") -> Fabric:
    fabric = make_fabric(GIT_URL, name=name, sync_status=SyncStatus.IN_SYNC, last_sync=timezone.now())
    connect(fabric, **compared(in_sync=15, drifted=1, missing=1, unmanaged=1))
    drifted(fabric, "vpc-web", diff=vlan_diff())
    drifted(fabric, "vpc-db", DriftState.MISSING)
    drifted(fabric, "vpc-extra", DriftState.UNMANAGED, live_uid="5f0c")
    return fabric


def text(response: Any) -> str:
    return response.content.decode().replace("\xa0", " ")


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """The ``sync.sync_fabric`` messages the operations publish (no worker runs here)."""
    from sync.tasks import sync_fabric

    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr(sync_fabric, "apply_async", lambda args, **kwargs: sent.append(tuple(args)))
    return sent


# --- The changelist: badge and filter ---------------------------------------------------------


def test_the_changelist_shows_a_drift_badge_with_counts_and_the_compare_age(admin_client):
    out_of_sync_fabric("east")
    connect(make_fabric(name="north"), **compared(minutes_ago=7, in_sync=12))
    connect(
        make_fabric(name="south"),
        drift_status=DriftStatus.UNKNOWN,
        last_error="cluster unreachable (breaker open until 12:04:05)",
    )
    make_fabric(name="west")  # Git only

    html = text(admin_client.get(CHANGELIST))

    header = re.findall(r'<th scope="col" class="[^"]*column-(\w+)', html)
    assert header[header.index("status") + 1] == "drift"  # beside the sync status
    row = r'<th class="field-name"><a [^>]*>(\w+)</a></th>.*?<td class="field-drift">(.*?)</td>'
    cells = dict(re.findall(row, html))
    assert "OutOfSync</span>" in cells["east"]
    assert "1 drifted · 1 missing · 1 unmanaged" in cells["east"]
    assert "compared 3 minutes ago" in cells["east"]
    assert "Synced</span>" in cells["north"]
    assert "12 objects" in cells["north"]
    assert 'title="compared 7 minutes ago"' in cells["north"]
    assert "Unknown</span>" in cells["south"]
    assert "cluster unreachable (breaker open until 12:04:05)" in cells["south"]
    assert "compared never" in cells["south"]
    assert cells["west"] == "—"


@pytest.mark.parametrize(
    ("drift", "shown"),
    [("out_of_sync", ["east"]), ("in_sync", ["north"]), ("unknown", ["south"]), ("none", ["west"]), ("", None)],
)
def test_the_drift_filter_lists_fabrics_by_their_drift_status(admin_client, drift, shown):
    out_of_sync_fabric("east")
    connect(make_fabric(name="north"), **compared(in_sync=12))
    connect(make_fabric(name="south"))
    make_fabric(name="west")

    response = admin_client.get(CHANGELIST, {"drift": drift} if drift else {})

    names = [f.name for f in response.context["cl"].result_list]
    assert names == (shown or ["east", "north", "south", "west"])


def populate(fabrics: int, credential: Credential) -> None:
    for _ in range(fabrics):
        n = next(_serial)
        fabric = make_fabric(name=f"drifted-{n}", sync_status=SyncStatus.IN_SYNC, last_sync=timezone.now())
        connect(fabric, credential, live_state={"big": "x" * 5000}, **compared(in_sync=3, drifted=1))
        drifted(fabric, f"vpc-{n}", diff=vlan_diff())
        SyncRun.objects.create(fabric=fabric, trigger="schedule", status=RunStatus.FAILED, started_at=timezone.now())
        make_fabric(name=f"git-only-{n}")


@pytest.mark.parametrize("query", [{}, {"drift": "out_of_sync"}, {"drift": "none"}])
def test_the_changelist_with_drift_costs_the_same_queries_for_2_and_30_fabrics(
    admin_client, django_assert_max_num_queries, query
):
    credential = make_credential(TOKEN)
    populate(1, credential)
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(CHANGELIST, query).status_code == 200

    populate(14, credential)
    with django_assert_max_num_queries(len(few.captured_queries)) as many:
        response = admin_client.get(CHANGELIST, query)

    assert len(response.context["cl"].result_list) == (30 if not query else 15)
    assert not any("live_state" in q["sql"] for q in many.captured_queries)  # megabytes per fabric, never for a list


# --- The fabric page: the cluster, the diff ------------------------------------------------------


def test_the_fabric_page_shows_each_drifted_field_with_its_git_and_live_values(admin_client):
    fabric = out_of_sync_fabric()
    drifted(fabric, "vpc-new", diff=vlan_diff(git={"vlan": 7}, live=None, absent=True))

    html = text(admin_client.get(change_url(fabric)))

    section = html[html.index('id="drift"') :]
    assert "OutOfSync</span> 1 drifted · 1 missing · 1 unmanaged · compared 3 minutes ago" in section
    rows = [
        unescape(re.sub(r"<[^>]+>|\s+", " ", row)).split()
        for row in re.findall(r'<tr class="drift-(?:diff|object)">(.*?)</tr>', section, re.S)
    ]
    assert ["VPC", "default/vpc-web", "/spec/subnets/frontend/vlan", "1001", "4000"] in rows
    assert ["VPC", "default/vpc-new", "/spec/subnets/frontend/vlan", '{"vlan":', "7}", "(absent)"] in rows
    assert ["VPC", "default/vpc-db", "—", "(the", "object)", "(absent)"] in rows  # missing
    assert ["VPC", "default/vpc-extra", "—", "(absent)", "(the", "object)"] in rows  # unmanaged
    assert section.index("Drifted:") < section.index("Missing:") < section.index("Unmanaged:")
    # The cluster's settings come before the drift, the runs after it.
    assert html.index('id="cluster-group"') < html.index('id="drift"') < html.index('id="runs-group"')


def test_a_fabric_page_with_many_drifted_objects_links_to_the_whole_list(admin_client):
    fabric = make_fabric(name="big")
    connect(fabric, **compared(drifted=60))
    for i in range(60):
        drifted(fabric, f"vpc-{i:02}", diff=vlan_diff())

    html = text(admin_client.get(change_url(fabric)))

    assert html.count('<tr class="drift-diff">') == 50
    assert f"{DRIFT_LIST}?fabric__id__exact={fabric.pk}&amp;state__exact=drifted" in html
    assert "10 more: all 60" in html
    listed = admin_client.get(DRIFT_LIST, {"fabric__id__exact": fabric.pk, "state__exact": "drifted"})
    assert listed.context["cl"].result_count == 60


def test_the_cluster_section_shows_what_the_system_wrote_read_only(admin_client):
    fabric = make_fabric(name="east")
    connect(
        fabric,
        mode=ClusterMode.RECONCILE,
        prune_enabled=True,
        latency_p50_ms=12.3,
        latency_p95_ms=48.9,
        last_error="live state: list VPC: 503 Service Unavailable",
        prune_refused="a prune would delete 5 of 6 live objects (83%), more than the allowed 10%",
        prune_refused_at=timezone.now(),
        prune_pending=["VPC.vpc.githedgehog.com default/vpc-old"],
        **compared(in_sync=1, unmanaged=5),
    )

    html = text(admin_client.get(change_url(fabric)))

    assert "p50 12 ms, p95 49 ms" in html
    assert "list VPC: 503 Service Unavailable" in html
    assert "more than the allowed 10%" in html
    assert "<code>VPC.vpc.githedgehog.com default/vpc-old</code>" in html
    for system_field in ("drift_status", "drift_counts", "prune_refused", "latency_p50_ms", "live_state"):
        assert f'name="cluster-0-{system_field}"' not in html
    assert 'name="cluster-0-server_url"' in html


# --- Editing the cluster on the fabric page --------------------------------------------------------


def form_data(client: Client, fabric: Fabric) -> dict[str, Any]:
    """What a browser posts back from the fabric page unchanged: the fabric, the cluster inline."""
    response = client.get(change_url(fabric))
    data: dict[str, Any] = {"_save": "Save"}
    forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        management = formset.management_form
        if formset.model is SyncRun:  # read-only: nothing to post
            data.update({management.add_prefix("TOTAL_FORMS"): "0", management.add_prefix("INITIAL_FORMS"): "0"})
            continue
        forms.append(management)
        forms.extend(formset.forms)
    for form in forms:
        for name in form.fields:
            value = form[name].value()
            if value is True:
                data[form.add_prefix(name)] = "on"
            elif value not in (None, False):
                data[form.add_prefix(name)] = value
    return data


def new_cluster_data(credential: Credential, **fields: str) -> dict[str, str]:
    values = {
        "server_url": SERVER,
        "ca_bundle": "",
        "token": str(credential.pk),
        "namespaces": '["fabric-1"]',
        "kinds": "",
        "ignore_rules": '[{"kind": "VPC", "jsonPointers": ["/spec/subnets/frontend/vlan"]}]',
        "mode": "observe",
        "prune_max_share": "0.1",
        **fields,
    }
    return {
        "cluster-TOTAL_FORMS": "1",
        "cluster-INITIAL_FORMS": "0",
        **{f"cluster-0-{key}": value for key, value in values.items()},
    }


def test_connecting_a_fabric_to_its_cluster_on_the_fabric_page(admin_client):
    fabric = make_fabric(GIT_URL, name="east", next_sync_at=timezone.now() + timedelta(hours=1))
    credential = make_credential(TOKEN, name="east-observer")
    data = {**form_data(admin_client, fabric), **new_cluster_data(credential)}

    response = admin_client.post(change_url(fabric), data)

    assert response.status_code == 302, response.context["errors"]
    cluster = FabricCluster.objects.get(fabric=fabric)
    assert (cluster.server_url, cluster.token, cluster.namespaces) == (SERVER, credential, ["fabric-1"])
    assert (cluster.kinds, cluster.mode, cluster.drift_status) == ([], ClusterMode.OBSERVE, DriftStatus.UNKNOWN)
    assert cluster.ignore_rules == [{"kind": "VPC", "jsonPointers": ["/spec/subnets/frontend/vlan"]}]
    fabric.refresh_from_db()
    assert fabric.next_sync_at <= timezone.now()  # the first compare comes at the next tick
    assert "Added fabric cluster" in LogEntry.objects.get().get_change_message()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("server_url", "http://10.0.0.1:6443", "must be https://host[:port]"),
        ("server_url", f"https://admin:{TOKEN}@10.0.0.1", "must not carry credentials"),
        ("namespaces", '["Fabric_1"]', "is not a namespace name"),
        ("namespaces", "[default", "Enter a valid JSON"),
        ("ca_bundle", "not a certificate", "must be PEM text"),
        ("ignore_rules", '[{"kind": "VPC"}]', "jsonPointers"),
        ("prune_enabled", "on", "Prune deletes objects: it needs reconcile mode."),
    ],
)
def test_cluster_settings_are_refused_with_a_readable_message_beside_the_field(admin_client, field, value, message):
    fabric = make_fabric(GIT_URL, name="east")
    data = {**form_data(admin_client, fabric), **new_cluster_data(make_credential(TOKEN)), f"cluster-0-{field}": value}

    response = admin_client.post(change_url(fabric), data)

    assert response.status_code == 200
    errors = response.context["inline_admin_formsets"][1].formset.errors[0]
    assert message in " ".join(errors[field]), errors
    assert TOKEN not in text(response)
    assert not FabricCluster.objects.exists()


def test_a_git_credential_cannot_be_chosen_as_the_clusters_token(admin_client):
    fabric = make_fabric(GIT_URL, name="east")
    git = Credential(name="gitlab", kind=Credential.Kind.HTTPS_TOKEN)
    git.set_secret("glpat-secret")
    git.save()
    page = text(admin_client.get(change_url(fabric)))
    assert ">gitlab</option>" not in page.split('id="cluster-empty"')[1]

    data = {**form_data(admin_client, fabric), **new_cluster_data(git)}
    response = admin_client.post(change_url(fabric), data)

    assert "Select a valid choice" in str(response.context["inline_admin_formsets"][1].formset.errors)
    assert not FabricCluster.objects.exists()


def test_editing_the_cluster_keeps_the_drift_a_sync_wrote_meanwhile(admin_client):
    fabric = make_fabric(GIT_URL, name="east", next_sync_at=timezone.now() + timedelta(hours=1))
    connect(fabric)
    data = form_data(admin_client, fabric)  # the page is loaded...
    FabricCluster.objects.filter(fabric=fabric).update(**compared(in_sync=4, drifted=2))  # ...a sync finishes...
    data["cluster-0-mode"] = ClusterMode.RECONCILE  # ...and the operator saves the page

    response = admin_client.post(change_url(fabric), data)

    assert response.status_code == 302
    cluster = FabricCluster.objects.get(fabric=fabric)
    assert cluster.mode == ClusterMode.RECONCILE
    assert (cluster.drift_status, cluster.count("drifted")) == (DriftStatus.OUT_OF_SYNC, 2)
    fabric.refresh_from_db()
    assert fabric.next_sync_at <= timezone.now()


def test_removing_the_cluster_disconnects_the_fabric_and_forgets_its_drift(admin_client):
    fabric = out_of_sync_fabric()
    data = {**form_data(admin_client, fabric), "cluster-0-DELETE": "on"}

    response = admin_client.post(change_url(fabric), data)

    assert response.status_code == 302
    assert not FabricCluster.objects.exists()
    assert not DriftedObject.objects.exists()
    assert Credential.objects.filter(name__startswith="k8s-").exists()  # the credential stays
    assert "Deleted fabric cluster" in LogEntry.objects.get().get_change_message()


# --- The token is never shown ------------------------------------------------------------------


@pytest.mark.parametrize("who", ["superuser", "view-only"])
def test_the_token_appears_on_no_admin_page(admin_client, who):
    fabric = out_of_sync_fabric()
    credential = fabric.cluster.token
    if who == "superuser":
        client = admin_client
    else:
        client, _ = staff_client("view_fabric", "view_credential", "view_driftedobject", "view_syncrun")
    pages = [
        CHANGELIST,
        change_url(fabric),
        reverse("admin:core_credential_changelist"),
        reverse("admin:core_credential_change", args=[credential.pk]),
        DRIFT_LIST,
        reverse("admin:sync_driftedobject_change", args=[fabric.drifted_objects.first().pk]),  # type: ignore[union-attr]
    ]

    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, page
        html = text(response)
        assert TOKEN not in html, page
        assert TOKEN[-20:] not in html, page
        assert credential.encrypted_secret[:40] not in html, page
    fabric_page = text(client.get(change_url(fabric)))
    assert credential.name in fabric_page  # chosen by name
    assert "OutOfSync" in fabric_page


# --- Compare now, Reconcile now, Confirm prune: permissions and audit -------------------------------


def refused_prune_fabric(name: str = "east") -> Fabric:
    fabric = make_fabric(name=name, sync_status=SyncStatus.IN_SYNC, last_sync=timezone.now())
    connect(
        fabric,
        mode=ClusterMode.RECONCILE,
        prune_enabled=True,
        prune_refused="a prune would delete 2 of 3 live objects (67%), more than the allowed 10%",
        prune_refused_at=timezone.now() - timedelta(minutes=1),
        prune_pending=["VPC.vpc.githedgehog.com default/vpc-a", "VPC.vpc.githedgehog.com default/vpc-b"],
        **compared(in_sync=1, unmanaged=2),
    )
    return fabric


@pytest.mark.parametrize("action", ["compare_now", "reconcile_now", "confirm_prune"])
@pytest.mark.parametrize("through", ["the list", "the fabric page"])
def test_a_view_only_user_cannot_compare_reconcile_or_confirm_a_prune_and_nothing_is_logged(
    db, published, action, through
):
    fabric = refused_prune_fabric()
    client, _ = staff_client("view_fabric")
    op = {"compare_now": "compare", "reconcile_now": "reconcile", "confirm_prune": "prune"}[action]

    if through == "the list":
        response = client.post(
            CHANGELIST,
            {"action": action, "_selected_action": [fabric.pk], "index": "0", "post": "yes", "refusal": "x"},
            follow=True,
        )
        assert response.status_code == 200  # the list, with none of these actions to offer
    else:
        assert client.post(operate_url(fabric), {"op": op, "post": "yes"}).status_code == 403
        assert 'class="fabric-operation"' not in text(client.get(change_url(fabric)))  # and sees no buttons

    fabric.refresh_from_db()
    assert fabric.lease_token == ""
    assert published == []
    assert FabricCluster.objects.get(fabric=fabric).prune_confirmed_at is None
    assert not LogEntry.objects.exists()


@pytest.mark.parametrize("through", ["the list", "the fabric page"])
def test_a_change_user_compares_now_and_leaves_an_audit_entry(db, published, through):
    fabric = out_of_sync_fabric("east")
    git_only = make_fabric(name="west")
    client, user = staff_client("view_fabric", "change_fabric")

    if through == "the list":
        response = client.post(
            CHANGELIST,
            {"action": "compare_now", "_selected_action": [fabric.pk, git_only.pk], "index": "0"},
            follow=True,
        )
        assert messages_of(response) == [
            "Compare now: enqueued 1 fabric (east); the result shows on the fabric page when the run finishes.",
            "Left 1 fabric alone, with no Kubernetes cluster: west.",
        ]
    else:
        response = client.post(operate_url(fabric), {"op": "compare"}, follow=True)
        assert response.redirect_chain[-1][0] == change_url(fabric)
        assert messages_of(response)[0].startswith("Compare now: enqueued 1 fabric (east)")

    fabric.refresh_from_db()
    assert [(fid, trigger) for fid, _token, trigger in published] == [(fabric.pk, SyncTrigger.COMPARE.value)]
    assert published[0][1] == fabric.lease_token  # claimed like any sync: never beside another
    entry = LogEntry.objects.get()
    assert (entry.object_repr, entry.user_id) == ("east", user.pk)
    assert entry.change_message == "Compare now: 1 enqueued, 0 busy"


def test_reconcile_now_applies_only_to_reconcile_mode_fabrics(db, published):
    observed = out_of_sync_fabric("east")
    reconciled = refused_prune_fabric("north")
    client, _ = staff_client("view_fabric", "change_fabric")

    response = client.post(
        CHANGELIST,
        {"action": "reconcile_now", "_selected_action": [observed.pk, reconciled.pk], "index": "0"},
        follow=True,
    )

    assert messages_of(response)[1] == (
        "Left 1 fabric alone, with no cluster, or a cluster in observe mode (which never writes): east."
    )
    assert [(fid, trigger) for fid, _t, trigger in published] == [(reconciled.pk, SyncTrigger.RECONCILE.value)]
    assert [e.object_repr for e in LogEntry.objects.all()] == ["north"]


def test_the_fabric_page_offers_only_the_operations_that_apply(admin_client):
    observed = out_of_sync_fabric("east")
    refused = refused_prune_fabric("north")
    git_only = make_fabric(name="west")

    def buttons(fabric: Fabric) -> list[str]:
        return re.findall(r'class="fabric-operation"[^>]*>([^<]+)<', text(admin_client.get(change_url(fabric))))

    assert buttons(git_only) == ["Sync now"]
    assert buttons(observed) == ["Sync now", "Compare now"]
    assert buttons(refused) == ["Sync now", "Compare now", "Reconcile now", "Confirm prune"]


def test_confirm_prune_shows_the_objects_first_then_confirms_and_reconciles(db, published):
    fabric = refused_prune_fabric()
    client, user = staff_client("view_fabric", "change_fabric")

    page = client.post(operate_url(fabric), {"op": "prune"})

    html = text(page)
    assert "<code>VPC.vpc.githedgehog.com default/vpc-a</code>" in html
    assert "more than the allowed 10%" in html
    assert FabricCluster.objects.get(fabric=fabric).prune_confirmed_at is None  # nothing yet
    assert not LogEntry.objects.exists()
    answer = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', html))

    response = client.post(operate_url(fabric), answer, follow=True)

    cluster = FabricCluster.objects.get(fabric=fabric)
    assert cluster.prune_confirmed
    assert cluster.prune_confirmed_by == user.username
    assert messages_of(response)[0] == (
        "Confirmed the prune of 1 fabric: the next reconcile deletes those objects, once."
    )
    assert [(fid, trigger) for fid, _t, trigger in published] == [(fabric.pk, SyncTrigger.RECONCILE.value)]
    assert [e.change_message for e in LogEntry.objects.order_by("id")] == [
        "Confirmed the refused prune of 2 objects",
        "Reconcile now: 1 enqueued, 0 busy",
    ]


def test_a_confirmation_of_an_older_refusal_confirms_nothing(db, published):
    fabric = refused_prune_fabric()
    client, _ = staff_client("view_fabric", "change_fabric")
    html = text(client.post(CHANGELIST, {"action": "confirm_prune", "_selected_action": [fabric.pk], "index": "0"}))
    answer = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', html))
    # A sync refuses a prune of other objects while the operator reads the page.
    FabricCluster.objects.filter(fabric=fabric).update(prune_refused_at=timezone.now(), prune_pending=["VPC x/y"])

    response = client.post(CHANGELIST, answer, follow=True)

    assert "changed since you looked" in messages_of(response)[0]
    assert FabricCluster.objects.get(fabric=fabric).prune_confirmed_at is None
    assert published == []
    assert not LogEntry.objects.exists()


# --- End to end: a real kube-apiserver and a real worker ---------------------------------------------


@pytest.mark.worker
@pytest.mark.usefixtures("forget_k8s_breakers")
def test_an_out_of_band_change_shows_on_the_fabric_page_after_compare_now_through_a_real_worker(
    admin_client, worker_factory, git_repo, kube_cluster, kube_namespace, settings
):
    key = Fernet.generate_key().decode()
    settings.CREDENTIALS_KEYS = [key]
    token = kube_cluster.readonly_token(kube_namespace, name="fcp-admin-observer")
    lf = make_live_fabric(git_repo, kube_cluster, kube_namespace)(token=token, name="east")
    kube_cluster.apply_all(placed(demo_objects(), kube_namespace))
    lf.sync()
    assert lf.cluster.drift_status == DriftStatus.IN_SYNC
    assert "Synced</span>" in text(admin_client.get(CHANGELIST))
    worker = worker_factory(CREDENTIALS_KEYS=key)

    kube_cluster.patch(VPC_API, "VPC", "vpc-web", kube_namespace, {"spec": {"subnets": {"frontend": {"vlan": 4000}}}})
    response = admin_client.post(operate_url(lf.fabric), {"op": "compare"}, follow=True)

    assert messages_of(response)[0].startswith("Compare now: enqueued 1 fabric (east)")
    wait_for(
        lambda: (
            SyncRun.objects.filter(fabric=lf.fabric, trigger=SyncTrigger.COMPARE)
            .exclude(status=RunStatus.RUNNING)
            .exists()
        ),
        timeout=60,
        message=worker.log(),
    )
    html = text(admin_client.get(change_url(lf.fabric)))
    section = html[html.index('id="drift"') :]
    assert "OutOfSync</span> 1 drifted" in section
    row = re.search(r'<tr class="drift-diff">(.*?)</tr>', section, re.S)
    assert row is not None
    cells = unescape(re.sub(r"<[^>]+>|\s+", " ", row.group(1))).split()
    assert cells == ["VPC", f"{kube_namespace}/vpc-web", "/spec/subnets/frontend/vlan", "1001", "4000"]
    assert "OutOfSync</span>" in text(admin_client.get(CHANGELIST, {"drift": "out_of_sync"}))
    for page in (html, text(admin_client.get(CHANGELIST))):
        assert token not in page
    assert LogEntry.objects.get().change_message == "Compare now: 1 enqueued, 0 busy"
