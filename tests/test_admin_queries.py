"""Every admin list costs the same queries for 10 fabrics as for 200, and draws no list of fabrics.

The measured side of this is ``bench/admin.py`` (10,000 fabrics, docs/benchmarks.md);
these tests keep the shape that makes it fast: a constant number of queries, counts
on the plain table, and no sidebar that lists every fabric.
"""

from __future__ import annotations

import re
from datetime import timedelta
from itertools import count
from typing import Any
from urllib.parse import urlencode

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from core.models import Credential
from resilience.models import CircuitBreakerState, ComponentHealth, HealingAttempt, HealthTransition
from scaling.models import ScalingEvent, ScalingPolicy
from sync.models import DriftedObject, Fabric, FabricCluster, Resource, RunStatus, SyncRun, SyncStatus
from tests.conftest import is_postgres, require

pytestmark = pytest.mark.django_db

_serial = count(1)
CHANGELISTS = [
    "sync_fabric",
    "sync_syncrun",
    "sync_resource",
    "sync_driftedobject",
    "scaling_scalingpolicy",
    "scaling_scalingevent",
    "resilience_componenthealth",
    "resilience_circuitbreakerstate",
    "resilience_healthtransition",
    "resilience_healingattempt",
    "core_credential",
]
# Lists of one fabric's rows: filtered by a name typed into a box, never by a list of fabrics.
FABRIC_ROW_LISTS = ["sync_syncrun", "sync_resource", "sync_driftedobject"]


def changelist(name: str) -> str:
    return reverse(f"admin:{name}_changelist")


def populate(fabrics: int) -> list[Fabric]:
    """``fabrics`` fabrics with runs, resources, a cluster and drift for some, and as many
    rows again of every other list (events, components, transitions, breakers, ...)."""
    now = timezone.now()
    batch = next(_serial)
    token = Credential.objects.create(name=f"token-{batch}", kind="bearer_token", encrypted_secret="x")
    https = Credential.objects.create(name=f"https-{batch}", encrypted_secret="x")
    created = Fabric.objects.bulk_create(
        Fabric(
            name=f"fabric-{batch}-{i:03}",
            git_url=f"https://git.example.com/fabrics/{batch}-{i}.git",
            git_credential=https if i % 3 == 0 else None,
            sync_status=SyncStatus.ERROR if i % 4 == 0 else SyncStatus.IN_SYNC,
            consecutive_failures=1 if i % 4 == 0 else 0,
            failing_since=now - timedelta(minutes=1 + i) if i % 4 == 0 else None,
            last_error="boom" if i % 4 == 0 else "",
            last_sync=now - timedelta(hours=1),
        )
        for i in range(fabrics)
    )
    SyncRun.objects.bulk_create(
        SyncRun(
            fabric=f,
            trigger="schedule",
            status=RunStatus.FAILED if k else RunStatus.SUCCESS,
            started_at=now - timedelta(minutes=k + 1),
            worker=f"celery@w{k}",
        )
        for f in created
        for k in range(2)
    )
    Resource.objects.bulk_create(
        Resource(fabric=f, api_version="v1", kind=f"Kind{k}", name="r", content_hash="h", source_file="a.yaml")
        for f in created
        for k in range(2)
    )
    clustered = created[::5]
    FabricCluster.objects.bulk_create(
        FabricCluster(fabric=f, server_url="https://k8s.example.com", token=token) for f in clustered
    )
    DriftedObject.objects.bulk_create(
        DriftedObject(fabric=f, kind="VPC", name="vpc", state="drifted", compared_at=now) for f in clustered
    )
    policies = ScalingPolicy.objects.bulk_create(
        ScalingPolicy(service=f"svc-{batch}-{i}", image="fcp-tiny:latest", target_cpu_percent=60.0)
        for i in range(max(1, fabrics // 10))
    )
    ScalingEvent.objects.bulk_create(
        ScalingEvent(
            service=policies[i % len(policies)].service,
            policy=policies[i % len(policies)],
            action="up",
            from_instances=1,
            desired_instances=2,
            to_instances=2,
            reason="cpu",
            rule="metric:cpu_percent",
            dry_run=i % 2 == 0,
        )
        for i in range(fabrics)
    )
    components = ComponentHealth.objects.bulk_create(
        ComponentHealth(name=f"component-{batch}-{i}", component_type="worker", status="healthy", last_checked_at=now)
        for i in range(fabrics)
    )
    HealthTransition.objects.bulk_create(
        HealthTransition(component=c, from_status="healthy", to_status="unhealthy", at=now) for c in components
    )
    HealingAttempt.objects.bulk_create(
        HealingAttempt(component=c, action="restart", attempt=1, backoff_seconds=1, started_at=now) for c in components
    )
    CircuitBreakerState.objects.bulk_create(CircuitBreakerState(name=f"git:{batch}-{i}") for i in range(fabrics))
    Credential.objects.bulk_create(
        Credential(name=f"cred-{batch}-{i}", encrypted_secret="x") for i in range(max(1, fabrics // 10))
    )
    return created


def queries_of(client: Any, url: str) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, url
    return [query["sql"] for query in captured.captured_queries]


def test_every_list_costs_the_same_queries_for_200_fabrics_as_for_10(admin_client):
    populate(10)
    few = {name: len(queries_of(admin_client, changelist(name))) for name in CHANGELISTS}

    populate(190)
    many = {name: len(queries_of(admin_client, changelist(name))) for name in CHANGELISTS}

    assert many == few


FAILING_SINCE = str(1 + ["name", "status", "drift", "failing"].index("failing"))
FABRIC_VARIANTS = {
    "by failing since": {"o": FAILING_SINCE},
    "failing, by since": {"health": "failing", "o": FAILING_SINCE},
    "by failing since, reversed": {"o": f"-{FAILING_SINCE}"},
    "a search": {"q": "fabric-"},
}


@pytest.mark.parametrize("variant", FABRIC_VARIANTS)
def test_sorting_the_fabrics_by_failing_since_or_searching_them_costs_the_same_queries_for_200_as_for_10(
    admin_client, variant
):
    url = changelist("sync_fabric")
    populate(10)
    few = queries_of(admin_client, f"{url}?{urlencode(FABRIC_VARIANTS[variant])}")

    populate(190)
    many = queries_of(admin_client, f"{url}?{urlencode(FABRIC_VARIANTS[variant])}")

    assert len(many) == len(few)
    assert not any("sync_syncrun" in q for q in many)  # sorted by a column of the fabric, not by its runs


def test_the_fabric_list_counts_the_plain_table_and_computes_columns_for_the_shown_page_only(admin_client):
    fabrics = populate(200)

    sql = queries_of(admin_client, changelist("sync_fabric"))

    counts = [q for q in sql if q.startswith('SELECT COUNT(*) AS "__count" FROM "sync_fabric"')]
    assert len(counts) == 1  # this page's total; no second count of the unfiltered table
    assert not any("sync_resource" in q or "sync_syncrun" in q for q in counts)
    assert not any("sync_syncrun" in q for q in sql)  # "failing since" is a column of the fabric
    columns = [q for q in sql if "sync_resource" in q]
    assert len(columns) == 1  # the resource counts, in one query
    page_ids = re.search(r'"sync_fabric"\."id" IN \(([^)]*)\)', columns[0])
    assert page_ids is not None
    assert len(page_ids.group(1).split(",")) == 100  # the first page, not the 200 fabrics
    assert len(fabrics) == 200


def test_the_page_columns_are_those_of_each_fabric_on_every_page(admin_client):
    populate(150)
    odd = Fabric.objects.order_by("name").last()
    assert odd is not None
    Resource.objects.create(fabric=odd, api_version="v1", kind="Extra", name="x", content_hash="h", source_file="b")

    html = admin_client.get(changelist("sync_fabric"), {"p": 2}).content.decode()

    rows = re.findall(r'<th class="field-name"><a href="[^"]*">([^<]+)</a>.*?field-resource_count">(\d+)<', html)
    assert len(rows) == 50
    assert dict(rows)[odd.name] == "3"
    assert {total for name, total in rows if name != odd.name} == {"2"}


def test_the_fabric_list_sorts_by_failing_since_with_the_longest_failing_first(admin_client):
    now = timezone.now()
    for minutes in (5, 50, 20):
        Fabric.objects.create(
            name=f"failing-{minutes}",
            git_url="/x",
            sync_status=SyncStatus.ERROR,
            consecutive_failures=1,
            failing_since=now - timedelta(minutes=minutes),
            last_sync=now - timedelta(hours=2),
        )
    Fabric.objects.create(name="healthy", git_url="/x", sync_status=SyncStatus.IN_SYNC)
    failing_since = 1 + ["name", "status", "drift", "failing"].index("failing")

    response = admin_client.get(changelist("sync_fabric"), {"o": str(failing_since)})
    reversed_ = admin_client.get(changelist("sync_fabric"), {"o": f"-{failing_since}"})

    assert [f.name for f in response.context["cl"].result_list] == ["failing-50", "failing-20", "failing-5", "healthy"]
    assert [f.name for f in reversed_.context["cl"].result_list] == ["healthy", "failing-5", "failing-20", "failing-50"]


@pytest.mark.parametrize("name", FABRIC_ROW_LISTS)
def test_a_list_of_fabric_rows_offers_a_name_box_and_no_link_per_fabric(admin_client, name):
    fabrics = populate(200)

    html = admin_client.get(changelist(name)).content.decode()

    sidebar = html[html.index('id="changelist-filter"') :]
    assert 'name="fabric"' in sidebar  # the box
    assert "fabric__id__exact" not in sidebar
    assert sum(f.name in sidebar for f in fabrics) == 0


@pytest.mark.parametrize("name", FABRIC_ROW_LISTS)
def test_typing_a_fabric_name_lists_only_that_fabrics_rows_and_keeps_the_other_filters(admin_client, name):
    fabrics = populate(10)
    wanted = fabrics[0]  # clustered (every fifth), so it has drift too

    response = admin_client.get(changelist(name), {"fabric": f" {wanted.name} ", "q": ""})

    rows = list(response.context["cl"].result_list)
    assert rows
    assert {row.fabric_id for row in rows} == {wanted.pk}
    box = re.search(r'<form method="get"[^>]*>(.*?)</form>', response.content.decode(), re.S)
    assert box is not None
    assert f'value="{wanted.name}"' in box.group(1) or f'value=" {wanted.name} "' in box.group(1)
    assert '<input type="hidden" name="q" value="">' in box.group(1)  # the search is kept when retyping


def test_an_unknown_fabric_name_lists_nothing(admin_client):
    populate(3)

    response = admin_client.get(changelist("sync_syncrun"), {"fabric": "no-such-fabric"})

    assert response.context["cl"].result_count == 0


def test_the_kind_filter_lists_each_kind_once_without_reading_every_row(admin_client):
    populate(20)

    with CaptureQueriesContext(connection) as captured:
        html = admin_client.get(changelist("sync_resource")).content.decode()

    sidebar = html[html.index('id="changelist-filter"') :]
    assert sidebar.count("?kind=Kind0") == 1
    assert sidebar.count("?kind=Kind1") == 1
    assert not any("DISTINCT" in q["sql"] for q in captured.captured_queries)


def test_the_recent_filter_keeps_only_rows_of_the_last_hour(admin_client):
    fabric = Fabric.objects.create(name="east", git_url="/x")
    now = timezone.now()
    for hours in (0, 2, 30):
        SyncRun.objects.create(fabric=fabric, trigger="schedule", started_at=now - timedelta(hours=hours, minutes=1))

    last_hour = admin_client.get(changelist("sync_syncrun"), {"started_at_within": "1h"})
    last_day = admin_client.get(changelist("sync_syncrun"), {"started_at_within": "24h"})

    assert last_hour.context["cl"].result_count == 1
    assert last_day.context["cl"].result_count == 2


def test_a_deep_page_reads_its_ids_through_the_index_first_and_shows_the_same_rows(admin_client):
    fabric = Fabric.objects.create(name="east", git_url="/x")
    now = timezone.now()
    SyncRun.objects.bulk_create(
        SyncRun(fabric=fabric, trigger="schedule", started_at=now - timedelta(seconds=i // 2)) for i in range(1250)
    )

    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(changelist("sync_syncrun"), {"p": "12"})  # rows 1100 to 1199

    expected = list(SyncRun.objects.order_by("-started_at", "-id").values_list("pk", flat=True)[1100:1200])
    assert [run.pk for run in response.context["cl"].result_list] == expected
    ids_first = [q["sql"] for q in captured.captured_queries if q["sql"].startswith('SELECT "sync_syncrun"."id" AS')]
    assert len(ids_first) == 1
    assert "OFFSET 1100" in ids_first[0]
    assert "sync_fabric" not in ids_first[0]  # no join for the rows skipped


def test_the_fabric_search_reads_a_trigram_index_on_postgresql():
    require(is_postgres(), "the trigram index exists on PostgreSQL only (sync/migrations/0010)")
    populate(10)
    search = Fabric.objects.filter(name__icontains="fabric-1-00")  # what the admin's search runs
    with connection.cursor() as cursor:  # only a bitmap scan may answer: it needs an index on the expression
        for plan in ("enable_seqscan", "enable_indexscan", "enable_indexonlyscan"):
            cursor.execute(f"SET LOCAL {plan} = off")
    assert "fabric_name_trgm_idx" in search.explain()
