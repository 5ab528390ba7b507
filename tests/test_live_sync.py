"""The live step of a sync against a real kube-apiserver (tests/kube.py): compare and observe.

Each fabric's Git repository holds the demo fabric's objects, placed in the test's own
namespace; the cluster row points at the session's apiserver (``tests/livefabric.py``).
"""

from __future__ import annotations

import json
import logging

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.models import Credential
from sync import leases
from sync.live.kinds import VPC_GROUP
from sync.models import ClusterMode, DriftState, DriftStatus, Fabric, FabricCluster, LiveStatus, RunStatus, SyncRun
from sync.runner import run_sync
from tests.factories import make_fabric
from tests.kube_api import demo_objects, in_namespace
from tests.kube_pki import unrelated_ca_pem
from tests.livefabric import VPC_API, forget_k8s_breakers, make_live_fabric, placed, sync_now, vpc  # noqa: F401


@pytest.fixture
def live_fabric(db, git_repo, kube_cluster, kube_namespace):
    return make_live_fabric(git_repo, kube_cluster, kube_namespace)


pytestmark = pytest.mark.usefixtures("forget_k8s_breakers")


# --- in sync, drifted, missing, unmanaged --------------------------------------------------------


def test_a_fabric_whose_cluster_matches_git_is_in_sync_with_no_diff(live_fabric):
    lf = live_fabric()
    lf.kube.apply_all(placed(demo_objects(), lf.namespace))

    result = lf.sync()

    assert (result.status, result.drift, result.live) == (RunStatus.SUCCESS, DriftStatus.IN_SYNC, LiveStatus.COMPARED)
    cluster = lf.cluster
    assert cluster.drift_status == DriftStatus.IN_SYNC
    assert cluster.drift_counts == {"in_sync": 18, "drifted": 0, "missing": 0, "unmanaged": 0}
    assert cluster.drift_compared_at is not None
    assert cluster.last_error == ""
    assert cluster.latency_p50_ms is not None
    assert cluster.latency_p95_ms >= cluster.latency_p50_ms
    assert lf.rows() == {}
    run = lf.last_run()
    assert (run.live_status, run.live_error, run.live_applied) == (LiveStatus.COMPARED, "", 0)
    assert run.live_report["counts"]["in_sync"] == 18


def test_server_defaults_and_status_never_count_as_drift(live_fabric):
    lf = live_fabric()
    lf.kube.apply_all(placed(demo_objects(), lf.namespace))
    lf.kube.patch(VPC_API, "VPC", "vpc-web", lf.namespace, {"status": {"state": "ready"}}, "status")
    live_vpc = lf.kube.get(VPC_API, "VPC", "vpc-web", lf.namespace)
    assert live_vpc is not None
    assert live_vpc["spec"]["ipv4Namespace"] == "default"
    assert live_vpc["status"] == {"state": "ready"}

    lf.sync()

    assert lf.cluster.drift_status == DriftStatus.IN_SYNC


def test_an_out_of_band_change_shows_exactly_that_field_with_both_values(live_fabric):
    lf = live_fabric()
    lf.kube.apply_all(placed(demo_objects(), lf.namespace))
    lf.sync()
    assert lf.cluster.drift_status == DriftStatus.IN_SYNC

    patch = {"spec": {"subnets": {"frontend": {"vlan": 1999}}}}
    lf.kube.patch(VPC_API, "VPC", "vpc-web", lf.namespace, patch)
    result = lf.sync()

    assert result.status == RunStatus.UNCHANGED  # same commit: the Git step is the fast one
    assert result.drift == DriftStatus.OUT_OF_SYNC
    cluster = lf.cluster
    assert cluster.drift_counts == {"in_sync": 17, "drifted": 1, "missing": 0, "unmanaged": 0}
    rows = lf.rows()
    assert list(rows) == ["VPC/vpc-web"]
    row = rows["VPC/vpc-web"]
    assert (row.state, row.namespace, row.group) == (DriftState.DRIFTED, lf.namespace, VPC_GROUP)
    assert row.diff == [{"path": "/spec/subnets/frontend/vlan", "desired": 1001, "live": 1999, "live_absent": False}]


def test_a_deleted_object_is_missing_and_an_extra_one_unmanaged(live_fabric):
    lf = live_fabric()
    lf.kube.apply_all(placed(demo_objects(), lf.namespace))
    lf.sync()

    lf.kube.delete(VPC_API, "VPC", "vpc-db", lf.namespace)
    lf.kube.apply(in_namespace(vpc("vpc-extra", 1777), lf.namespace))
    lf.sync()

    rows = lf.rows()
    assert {k: r.state for k, r in rows.items()} == {
        "VPC/vpc-db": DriftState.MISSING,
        "VPC/vpc-extra": DriftState.UNMANAGED,
    }
    assert rows["VPC/vpc-extra"].live_uid  # what a prune would delete, exactly
    cluster = lf.cluster
    assert cluster.drift_status == DriftStatus.OUT_OF_SYNC
    assert cluster.drift_counts == {"in_sync": 17, "drifted": 0, "missing": 1, "unmanaged": 1}


def test_a_new_commit_is_compared_with_the_cluster_it_now_differs_from(live_fabric):
    lf = live_fabric([vpc("web", 1001)])
    lf.kube.apply(in_namespace(vpc("web", 1001), lf.namespace))
    lf.sync()
    assert lf.cluster.drift_status == DriftStatus.IN_SYNC

    lf.commit([vpc("web", 1002)])
    result = lf.sync()

    assert result.status == RunStatus.SUCCESS
    diffs = {d["path"]: (d["desired"], d["live"]) for d in lf.rows()["VPC/web"].diff}
    assert diffs["/spec/subnets/default/vlan"] == (1002, 1001)


def test_ignore_rules_leave_out_the_fields_they_name(live_fabric):
    lf = live_fabric([vpc("web", 1001)], ignore_rules=[{"kind": "VPC", "jsonPointers": ["/spec/subnets/*/vlan"]}])
    lf.kube.apply(in_namespace(vpc("web", 1001), lf.namespace))
    lf.kube.patch(VPC_API, "VPC", "web", lf.namespace, {"spec": {"subnets": {"default": {"vlan": 1500}}}})

    lf.sync()

    assert lf.cluster.drift_status == DriftStatus.IN_SYNC


# --- cheap when nothing changed ---------------------------------------------------------------------


def test_an_unchanged_cluster_and_commit_costs_no_list_and_keeps_the_stored_drift(live_fabric):
    lf = live_fabric()
    lf.kube.apply_all(placed(demo_objects(), lf.namespace))
    lf.kube.delete(VPC_API, "VPC", "vpc-db", lf.namespace)
    lf.sync()
    first = lf.cluster
    rows_before = {k: r.id for k, r in lf.rows().items()}
    assert first.drift_counts["missing"] == 1

    mark = lf.kube.audit_mark()
    result = lf.sync()

    counts = lf.kube.audit_counts(since=mark)
    assert [key for key in counts if key[0] == "list"] == []  # no collection was listed again
    assert sum(n for (verb, _), n in counts.items() if verb == "watch") == 12  # one quiet watch per kind
    assert (result.live, result.drift) == (LiveStatus.UNCHANGED, DriftStatus.OUT_OF_SYNC)
    second = lf.cluster
    assert second.drift_counts == first.drift_counts
    assert second.drift_compared_at > first.drift_compared_at  # confirmed now
    assert {k: r.id for k, r in lf.rows().items()} == rows_before  # the rows were not rewritten
    assert lf.last_run().live_report["read"]["lists"] == 0


def test_compare_now_lists_everything_again(live_fabric):
    lf = live_fabric()
    lf.kube.apply_all(placed(demo_objects(), lf.namespace))
    lf.sync()

    mark = lf.kube.audit_mark()
    result = lf.sync(trigger="compare")

    assert result.live == LiveStatus.COMPARED
    lists = sum(n for (verb, _), n in lf.kube.audit_counts(since=mark).items() if verb == "list")
    assert lists == 12


def test_a_git_only_fabric_costs_no_extra_query(db, git_repo):
    repo = git_repo()
    repo.with_switches(2)
    fabric = make_fabric(repo.url)
    sync_now(fabric)

    now = timezone.now()
    token = leases.claim_one(fabric.id, now)
    assert token is not None
    leases.begin(fabric.id, token, now, "test")
    with CaptureQueriesContext(connection) as queries:
        result = run_sync(fabric.id, token, trigger="manual", worker="test")

    assert result.status == RunStatus.UNCHANGED
    assert "drift" not in result.as_dict()
    # As before fabrics had clusters: the fabric (its cluster joined in, and its resource
    # count with it), the RUNNING run as a progress commit (a savepoint here, inside the
    # test's transaction; SET LOCAL synchronous_commit; the INSERT; its release), and the
    # success (a savepoint, two updates, its release).
    assert len(queries.captured_queries) == 9, [q["sql"][:40] for q in queries.captured_queries]
    assert "sync_fabriccluster" in queries.captured_queries[0]["sql"]


# --- observe mode with a read-only token --------------------------------------------------------------


def test_observe_mode_with_a_read_only_token_compares_and_never_writes(live_fabric, kube_cluster, kube_namespace):
    readonly = kube_cluster.readonly_token(kube_namespace)
    lf = live_fabric(token=readonly)
    kube_cluster.apply_all(placed(demo_objects(), kube_namespace))
    kube_cluster.delete(VPC_API, "VPC", "vpc-db", kube_namespace)
    kube_cluster.apply(in_namespace(vpc("vpc-extra", 1777), kube_namespace))
    kube_cluster.patch(VPC_API, "VPC", "vpc-web", kube_namespace, {"spec": {"subnets": {"frontend": {"vlan": 7}}}})
    mark = kube_cluster.audit_mark()

    lf.sync()
    lf.sync(trigger="reconcile")  # asked to reconcile, but the cluster is in observe mode

    assert lf.cluster.mode == ClusterMode.OBSERVE
    assert lf.cluster.drift_counts == {"in_sync": 16, "drifted": 1, "missing": 1, "unmanaged": 1}
    verbs = {verb for verb, _ in kube_cluster.audit_counts(since=mark, token=readonly)}
    assert verbs <= {"get", "list", "watch"}, verbs
    assert "list" in verbs
    assert lf.last_run().live_applied == 0


# --- errors ---------------------------------------------------------------------------------------------


def test_a_wrong_token_is_a_readable_permanent_error_and_the_git_sync_stands(live_fabric):
    lf = live_fabric(token="not-a-valid-token-0123456789")

    result = lf.sync()

    assert result.status == RunStatus.SUCCESS
    assert (result.live, result.drift) == (LiveStatus.FAILED, DriftStatus.UNKNOWN)
    assert "rejected the bearer token (401 Unauthorized)" in result.live_error
    cluster = lf.cluster
    assert cluster.drift_status == DriftStatus.UNKNOWN
    assert "401" in cluster.last_error
    lf.fabric.refresh_from_db()
    assert lf.fabric.sync_status == "in_sync"
    assert lf.fabric.consecutive_failures == 0
    assert lf.fabric.last_error.startswith("live state: the cluster ")
    run = lf.last_run()
    assert (run.status, run.live_status) == (RunStatus.SUCCESS, LiveStatus.FAILED)
    assert "401" in run.live_error


def test_a_wrong_ca_is_a_readable_permanent_error(live_fabric):
    lf = live_fabric(ca_bundle=unrelated_ca_pem())

    result = lf.sync()

    assert result.live == LiveStatus.FAILED
    assert "certificate verify failed" in result.live_error
    assert "CA bundle" in lf.cluster.last_error


def test_a_kind_the_token_may_not_read_makes_the_drift_unknown_not_missing(live_fabric, kube_cluster, kube_namespace):
    rules = [{"apiGroups": [VPC_GROUP], "resources": ["*"], "verbs": ["get", "list", "watch"]}]
    token = kube_cluster.service_account_token(kube_namespace, "vpc-only", rules)
    lf = live_fabric([vpc("web")], token=token)

    result = lf.sync()

    assert (result.live, result.drift) == (LiveStatus.INCOMPLETE, DriftStatus.UNKNOWN)
    assert "could not read 5 of 12 collections" in result.live_error
    assert "forbidden (403)" in result.live_error
    assert lf.rows() == {}


def test_the_token_appears_in_no_error_log_result_or_stored_row(live_fabric, kube_cluster, caplog):
    secret = "s3cr3t-kube-token-" + "x" * 20
    caplog.set_level(logging.DEBUG)
    lf = live_fabric(token=secret)

    result = lf.sync()

    assert result.live == LiveStatus.FAILED
    texts = [
        json.dumps(result.as_dict()),
        caplog.text,
        json.dumps(list(SyncRun.objects.values())[-1], default=str),
        json.dumps(list(FabricCluster.objects.values()), default=str),
        json.dumps(list(Fabric.objects.values()), default=str),
        json.dumps(list(Credential.objects.values()), default=str),
    ]
    for text in texts:
        assert secret not in text
        assert secret[:12] not in text
