"""Benchmark: every admin changelist at 10,000 fabrics / 100,000 sync runs / 100,000 resources.

Run with ``make bench`` (or ``DATABASE_URL=postgres://... .venv/bin/python bench/admin.py``).
PostgreSQL only: SQLite's planner and counts say nothing about production. Steps:

1. Create a private database on the server of ``DATABASE_URL`` (``BENCH_ADMIN_DATABASE``,
   default ``fcp_bench_admin``) and migrate it. Nothing else is touched: no shared
   database, no broker (the pages publish nothing), cache keys under a prefix of this
   run's own.
2. Fill it: 10,000 fabrics (10% failing, 1% suspended, 500 with a cluster), 10 sync
   runs and 10 resources each, 5,000 drifted objects; 20 scaling policies with 100,000
   events; 200 components with 100,000 transitions and 10,000 healing attempts; 100
   breakers; 50 credentials. Sizes scale with ``BENCH_FABRICS``.
3. Log in as a staff user holding every permission (not a superuser: the permission
   checks are part of what a real operator pays for).
4. For every changelist of our apps (sync, scaling, resilience, core) and a few
   filtered or sorted variants, and for the same model under a plain ``ModelAdmin``
   with default settings on a second admin site (the "glue it by hand" baseline), time
   the request through Django's test ``Client`` (the whole server side: middleware,
   queries, template), ``BENCH_ROUNDS`` (default 7) interleaved rounds after a warm-up.
5. Count each page's SQL queries, their time and its HTML size in a separate pass.
6. Print medians with the range (and the median CPU time of this process, which the
   load of other work on the cores inflates less); the target is a median of at most
   150 ms for every list of ours, sorted by "failing since" too (a column of the fabric
   with an index); the fabric's page is shown but not held to it (``SHOWN_ONLY``).
7. Drop the database unless ``BENCH_KEEP_DATABASE=1`` (a kept one with the same sizes
   is reused, skipping step 2).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import types
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

FABRICS = int(os.environ.get("BENCH_FABRICS", "10000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
TARGET_MS = 150.0
# Measured and shown, not held to the target: the fabric's page is not a list.
SHOWN_ONLY = {"sync.fabric change page"}
DATABASE = os.environ.get("BENCH_ADMIN_DATABASE", "fcp_bench_admin")
KEEP = os.environ.get("BENCH_KEEP_DATABASE") == "1"
# Ours only: another session's tick summary must not decide what the component list shows.
os.environ["CACHE_KEY_PREFIX"] = f"fcp-bench-admin-{os.getpid()}"


def maintenance_connection(url: str) -> Any:
    """An autocommit connection to the maintenance database of ``url``'s server."""
    import dj_database_url
    import psycopg

    db = dj_database_url.parse(url)
    return psycopg.connect(
        host=str(db["HOST"] or "127.0.0.1"),
        port=int(db["PORT"] or 5432),
        user=str(db["USER"]) if db["USER"] else None,
        password=str(db["PASSWORD"]) if db["PASSWORD"] else None,
        dbname="postgres",
        connect_timeout=10,
        autocommit=True,
    )


def private_database_url() -> str | None:
    """DATABASE_URL with this benchmark's own database name, created if missing."""
    from psycopg import sql

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        return None
    with maintenance_connection(url) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", [DATABASE]).fetchone():
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(DATABASE)))
    return urlunsplit(urlsplit(url)._replace(path="/" + DATABASE))


def drop_database() -> None:
    from psycopg import sql

    with maintenance_connection(os.environ["DATABASE_URL"]) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(DATABASE)))


PRIVATE_URL = private_database_url() if __name__ == "__main__" else None
if PRIVATE_URL:
    os.environ["DATABASE_URL"] = PRIVATE_URL

import django  # noqa: E402

django.setup()

from django.contrib import admin  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.contrib.auth.models import Permission  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, connections  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, override_settings  # noqa: E402
from django.urls import path, reverse  # noqa: E402
from django.utils import timezone  # noqa: E402

from core.models import Credential  # noqa: E402
from resilience.models import (  # noqa: E402
    CircuitBreakerState,
    ComponentHealth,
    HealingAttempt,
    HealingOutcome,
    HealthTransition,
)
from scaling.models import ScalingEvent, ScalingPolicy  # noqa: E402
from sync.models import (  # noqa: E402
    ClusterMode,
    DriftedObject,
    DriftState,
    DriftStatus,
    Fabric,
    FabricCluster,
    Resource,
    RunStatus,
    SyncRun,
    SyncStatus,
)

APPS = ("sync", "scaling", "resilience", "core")
BATCH = 5000
KINDS = ["Switch", "Server", "Connection", "VLANNamespace", "IPv4Namespace", "VPC", "VPCAttachment", "External"]
RULES = ["metric:cpu_percent", "stabilization_window", "cooldown", "limit:max_instances", "limit:min_instances"]
NOT_A_SECRET = "bench: not a Fernet token"  # noqa: S105 (never decrypted: the lists only say "set")
LONG_ERROR = (
    "manifests/vlans.yaml:7:3: invalid YAML: mapping values are not allowed here; "
    "while parsing a block mapping in the document starting at line 1 " + "x" * 200
)

# --- The baseline: the same models under a plain ModelAdmin --------------------------------

plain_site = admin.AdminSite(name="plainadmin")
for _model in [m for m in admin.site._registry if m._meta.app_label in APPS]:
    plain_site.register(_model)  # list_display ("__str__",), no filters, no search, no annotations
urls = types.ModuleType("bench_admin_urls")
# The admin alone: the project's other routes are not measured here.
urls.urlpatterns = [path("admin/", admin.site.urls), path("plain-admin/", plain_site.urls)]  # type: ignore[attr-defined]
sys.modules[urls.__name__] = urls


def our_models() -> list[type[Any]]:
    return [model for model in admin.site._registry if model._meta.app_label in APPS]


# --- The data ------------------------------------------------------------------------------


def sizes() -> dict[str, int]:
    return {
        "fabrics": FABRICS,
        "sync_runs": FABRICS * 10,
        "resources": FABRICS * 10,
        "clusters": FABRICS // 20,
        "drifted_objects": FABRICS // 2,
        "scaling_events": FABRICS * 10,
        "health_transitions": FABRICS * 10,
        "healing_attempts": FABRICS,
    }


def present() -> dict[str, int]:
    return {
        "fabrics": Fabric.objects.count(),
        "sync_runs": SyncRun.objects.count(),
        "resources": Resource.objects.count(),
        "clusters": FabricCluster.objects.count(),
        "drifted_objects": DriftedObject.objects.count(),
        "scaling_events": ScalingEvent.objects.count(),
        "health_transitions": HealthTransition.objects.count(),
        "healing_attempts": HealingAttempt.objects.count(),
    }


def fill(now: datetime) -> None:
    for model in (HealthTransition, HealingAttempt, ComponentHealth, CircuitBreakerState, ScalingEvent):
        model.objects.all().delete()
    ScalingPolicy.objects.all().delete()
    Fabric.objects.all().delete()  # runs, resources, clusters and drift go with them
    Credential.objects.all().delete()

    Credential.objects.bulk_create(
        Credential(name=f"deploy-{i:02}", username="oauth2", encrypted_secret=NOT_A_SECRET) for i in range(49)
    )
    token = Credential.objects.create(
        name="cluster-token", kind=Credential.Kind.BEARER_TOKEN, encrypted_secret=NOT_A_SECRET
    )
    https = list(Credential.objects.filter(kind=Credential.Kind.HTTPS_TOKEN))

    def fabric(i: int) -> Fabric:
        failing, suspended = i % 10 == 3, i % 100 == 7
        status = SyncStatus.SUSPENDED if suspended else SyncStatus.ERROR if failing else SyncStatus.IN_SYNC
        return Fabric(
            name=f"fabric-{i:05}",
            git_url=f"https://git.example.com/network-engineering/datacenter-{i % 7}/fabric-{i:05}.git",
            git_credential=https[i % len(https)] if i % 10 == 0 else None,
            git_branch="main",
            git_path="manifests/production/switches",
            sync_interval=300,
            sync_status=status,
            consecutive_failures=5 if suspended else 2 if failing else 0,
            # The start of the first of the two failed runs below (the runner sets it on a real failure).
            failing_since=now - timedelta(minutes=6) if failing or suspended else None,
            last_error=LONG_ERROR if failing or suspended else "",
            last_sync=now - timedelta(hours=3 if failing else 0, minutes=i % 5),
            last_attempt_at=now - timedelta(minutes=i % 5),
            next_sync_at=now + timedelta(seconds=i % 300),
            current_commit=f"{i:040x}",
        )

    Fabric.objects.bulk_create((fabric(i) for i in range(FABRICS)), batch_size=BATCH)
    fabrics = list(Fabric.objects.order_by("id").only("id", "sync_status"))

    def runs() -> Any:
        for f in fabrics:
            failing = f.sync_status != SyncStatus.IN_SYNC
            for k in range(10):
                failed = failing and k < 2
                yield SyncRun(
                    fabric_id=f.pk,
                    trigger="schedule",
                    status=RunStatus.FAILED if failed else RunStatus.SUCCESS,
                    started_at=now - timedelta(minutes=5 * k + 1, seconds=f.pk % 60),
                    finished_at=now - timedelta(minutes=5 * k),
                    duration_ms=1200 + k,
                    commit=f"{f.pk:040x}",
                    resources_total=10,
                    error_class="ManifestError" if failed else "",
                    error_message=LONG_ERROR if failed else "",
                    worker=f"celery@worker-{f.pk % 4}.fabric-control-plane.internal",
                )

    SyncRun.objects.bulk_create(runs(), batch_size=BATCH)

    def resources() -> Any:
        for f in fabrics:
            for k in range(10):
                yield Resource(
                    fabric_id=f.pk,
                    api_version="wiring.githedgehog.com/v1beta1",
                    kind=KINDS[k % len(KINDS)],
                    namespace="default",
                    name=f"leaf-{k:02}",
                    spec={"role": "server-leaf", "ports": k},
                    content_hash=f"{f.pk * 10 + k:064x}",
                    source_file=f"manifests/production/switches/leaf-{k:02}.yaml",
                )

    Resource.objects.bulk_create(resources(), batch_size=BATCH)

    clustered = fabrics[::20]
    FabricCluster.objects.bulk_create(
        FabricCluster(
            fabric_id=f.pk,
            server_url=f"https://k8s-{f.pk}.example.com:6443",
            token=token,
            mode=ClusterMode.OBSERVE,
            drift_status=DriftStatus.OUT_OF_SYNC if i % 2 else DriftStatus.IN_SYNC,
            drift_counts={"in_sync": 40, "drifted": 10} if i % 2 else {"in_sync": 50},
            drift_compared_at=now - timedelta(minutes=2),
        )
        for i, f in enumerate(clustered)
    )
    DriftedObject.objects.bulk_create(
        (
            DriftedObject(
                fabric_id=f.pk,
                group="vpc.githedgehog.com",
                kind="VPC",
                namespace="default",
                name=f"vpc-{k}",
                api_version="vpc.githedgehog.com/v1beta1",
                state=DriftState.DRIFTED,
                diff=[{"path": "/spec/subnets/default/vlan", "desired": 1000 + k, "live": 2000 + k}],
                compared_at=now - timedelta(minutes=2),
            )
            for f in clustered
            for k in range(10)
        ),
        batch_size=BATCH,
    )

    policies = ScalingPolicy.objects.bulk_create(
        ScalingPolicy(service=f"service-{i:02}", image="fcp-tiny:latest", target_cpu_percent=70.0, dry_run=i % 4 == 0)
        for i in range(20)
    )
    ScalingEvent.objects.bulk_create(
        (
            ScalingEvent(
                service=policies[i % 20].service,
                policy=policies[i % 20],
                action="up" if i % 3 == 0 else "none",
                from_instances=2,
                desired_instances=3 if i % 3 == 0 else 2,
                to_instances=3 if i % 3 == 0 else 2,
                reason="cpu_percent 85.0 vs target 70.0 (ratio 1.21) proposes 3 " + "y" * 120,
                metrics={"cpu_percent": {"value": 85.0, "target": 70.0}},
                rule=RULES[i % len(RULES)],
                dry_run=policies[i % 20].dry_run,
                created_at=now - timedelta(seconds=3 * i),
            )
            for i in range(FABRICS * 10)
        ),
        batch_size=BATCH,
    )

    statuses = ["healthy", "degraded", "unhealthy", "unknown"]
    components = ComponentHealth.objects.bulk_create(
        ComponentHealth(
            name=f"component-{i:03}",
            component_type="worker",
            status=statuses[i % 4] if i % 10 == 0 else "healthy",
            last_message="ok" if i % 10 else "connection refused by worker-3 after 3 attempts " + "z" * 150,
            last_checked_at=now - timedelta(seconds=30),
        )
        for i in range(200)
    )
    HealthTransition.objects.bulk_create(
        (
            HealthTransition(
                component=components[i % 200],
                from_status="healthy",
                to_status="unhealthy",
                message="connection refused " + "z" * 100,
                at=now - timedelta(seconds=7 * i),
            )
            for i in range(FABRICS * 10)
        ),
        batch_size=BATCH,
    )
    HealingAttempt.objects.bulk_create(
        (
            HealingAttempt(
                component=components[i % 200],
                action="restart_worker",
                host="worker-1",
                attempt=1 + i % 3,
                backoff_seconds=30,
                started_at=now - timedelta(seconds=60 * i),
                outcome=HealingOutcome.SUCCEEDED,
                message="restarted",
            )
            for i in range(FABRICS)
        ),
        batch_size=BATCH,
    )
    CircuitBreakerState.objects.bulk_create(
        CircuitBreakerState(name=f"git:host-{i:03}.example.com", state="open" if i % 10 == 0 else "closed")
        for i in range(100)
    )


# --- The pages -----------------------------------------------------------------------------


Page = tuple[str, str, str | None]  # (label, our URL, the baseline's URL or None)


def pages() -> list[Page]:
    """Every changelist of ours and its baseline, and a few filtered or sorted variants."""
    found: list[Page] = []
    for model in sorted(our_models(), key=lambda m: (m._meta.app_label, m._meta.model_name)):
        opts = model._meta
        ours = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        plain = reverse(f"plainadmin:{opts.app_label}_{opts.model_name}_changelist")
        found.append((f"{opts.app_label}.{opts.model_name}", ours, plain))
    fabrics = reverse("admin:sync_fabric_changelist")
    runs = reverse("admin:sync_syncrun_changelist")
    plain_runs = reverse("plainadmin:sync_syncrun_changelist")
    middle = Fabric.objects.order_by("name")[FABRICS // 2]
    found += [
        ("sync.fabric ?health=failing", f"{fabrics}?health=failing", None),
        ("sync.fabric ?q=fabric-0", f"{fabrics}?q=fabric-0", None),
        ("sync.fabric page 50", f"{fabrics}?p=50", None),
        # Sorted by Fabric.failing_since (an index; it used to be computed from the runs).
        ("sync.fabric by failing since", f"{fabrics}?o=4", None),
        ("sync.fabric failing, by since", f"{fabrics}?health=failing&o=4", None),
        ("sync.syncrun ?status=failed", f"{runs}?status=failed", f"{plain_runs}?status=failed"),
        ("sync.syncrun page 500", f"{runs}?p=500", f"{plain_runs}?p=500"),
        ("sync.resource ?kind=Switch", f"{reverse('admin:sync_resource_changelist')}?kind=Switch", None),
        ("sync.syncrun of one fabric", f"{runs}?fabric={middle.name}", f"{plain_runs}?fabric__id__exact={middle.pk}"),
        ("sync.fabric change page", reverse("admin:sync_fabric_change", args=[middle.pk]), None),
    ]
    return found


def operator() -> Client:
    user, _ = get_user_model().objects.get_or_create(username="bench-operator", defaults={"is_staff": True})
    user.user_permissions.set(Permission.objects.filter(content_type__app_label__in=APPS))
    client = Client()
    client.force_login(user)
    return client


def timed_get(client: Client, url: str) -> tuple[float, float]:
    """Wall time and this process's CPU time of one request, in milliseconds."""
    started, cpu = time.perf_counter(), time.process_time()
    response = client.get(url)
    elapsed, cpu = (time.perf_counter() - started) * 1000, (time.process_time() - cpu) * 1000
    assert response.status_code == 200, (url, response.status_code)
    return elapsed, cpu


def measure(client: Client, found: list[Page]) -> dict[str, dict[str, Any]]:
    urls_ = [url for _, ours, plain in found for url in (ours, plain) if url]
    times: dict[str, list[float]] = {url: [] for url in urls_}
    cpu: dict[str, list[float]] = {url: [] for url in urls_}
    for url in urls_:
        timed_get(client, url)  # warm-up: templates, caches, the connection
    for _ in range(ROUNDS):
        for url in urls_:  # interleaved: a busy moment on the shared cores hits every page alike
            wall, used = timed_get(client, url)
            times[url].append(wall)
            cpu[url].append(used)
    info: dict[str, dict[str, Any]] = {}
    for url in urls_:
        with CaptureQueriesContext(connection) as queries:
            html = client.get(url).content
        info[url] = {
            "median_ms": round(statistics.median(times[url]), 1),
            "range_ms": [round(min(times[url]), 1), round(max(times[url]), 1)],
            # Python's share (rendering, ORM) and the database's, to read the wall time on busy cores.
            "cpu_ms": round(statistics.median(cpu[url]), 1),
            "sql_ms": round(sum(float(q["time"]) for q in queries.captured_queries) * 1000, 1),
            "queries": len(queries),
            "html_kib": round(len(html) / 1024, 1),
        }
    return info


def cells(page: dict[str, Any]) -> str:
    timed = f"{page['median_ms']} ({page['range_ms'][0]}-{page['range_ms'][1]})"
    return f"{timed:>27} {page['cpu_ms']:>5.0f} {page['sql_ms']:>5.0f} {page['queries']:>3} {page['html_kib']:>6}"


def main() -> int:
    if PRIVATE_URL is None:
        print("bench/admin.py: skipped (needs PostgreSQL in DATABASE_URL)")
        return 0
    try:
        call_command("migrate", "--noinput", verbosity=0)
        now = timezone.now()
        started = time.perf_counter()
        if present() != sizes():
            fill(now)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")  # what autovacuum does to tables this size before anyone looks
        fill_seconds = time.perf_counter() - started
        with override_settings(ROOT_URLCONF=urls.__name__, ALLOWED_HOSTS=["testserver"]):
            found = pages()
            info = measure(operator(), found)
        rows: list[dict[str, Any]] = []
        above = []
        for label, ours, plain in found:
            row: dict[str, Any] = {
                "page": label,
                "ours": info[ours],
                "plain_modeladmin": info[plain] if plain else None,
            }
            rows.append(row)
            if info[ours]["median_ms"] > TARGET_MS and label not in SHOWN_ONLY:
                above.append(label)
        summary = {
            "sizes": present(),
            "rounds": ROUNDS,
            "fill_seconds": round(fill_seconds, 1),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "pages": rows,
        }
        print(json.dumps(summary, indent=2))
        head = f"{'ms (range)':>22} {'cpu':>5} {'sql':>5} {'q':>3} {'KiB':>6}"
        print(f"{'page':32} ours {head}   plain {head}")
        for row in rows:
            line = f"{row['page']:32} {cells(row['ours'])}"
            if row["plain_modeladmin"]:
                line += f"   {cells(row['plain_modeladmin'])}"
            print(line)
        verdict = "OK" if not above else f"ABOVE TARGET: {', '.join(above)}"
        print(f"every page of ours at most {TARGET_MS:.0f} ms (median): {verdict}")
        return 0 if not above else 1
    finally:
        connections.close_all()
        if not KEEP:
            drop_database()


if __name__ == "__main__":
    sys.exit(main())
