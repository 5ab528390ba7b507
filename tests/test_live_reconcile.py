"""Reconcile mode and the guarded prune, against the real kube-apiserver."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from sync.live.cluster import FIELD_MANAGER
from sync.live.drift import compare
from sync.live.prune import decide_prune
from sync.models import ClusterMode, DriftState, DriftStatus, LiveStatus
from sync.operations import confirm_prune
from tests.kube_api import demo_objects, in_namespace
from tests.livefabric import VPC_API, forget_k8s_breakers, make_live_fabric, placed, vpc  # noqa: F401


@pytest.fixture
def live_fabric(db, git_repo, kube_cluster, kube_namespace):
    return make_live_fabric(git_repo, kube_cluster, kube_namespace)


pytestmark = pytest.mark.usefixtures("forget_k8s_breakers")
RECONCILE = {"mode": ClusterMode.RECONCILE}


def deletes(kube, mark: int) -> int:
    return sum(n for (verb, _), n in kube.audit_counts(since=mark).items() if verb == "delete")


def managers(obj: dict[str, Any] | None) -> set[str]:
    return {entry["manager"] for entry in (obj or {}).get("metadata", {}).get("managedFields", [])}


# --- apply ----------------------------------------------------------------------------------------


def test_reconcile_applies_drifted_and_missing_objects_and_the_next_compare_is_in_sync(
    live_fabric, kube_cluster, kube_namespace
):
    token = kube_cluster.readwrite_token(kube_namespace)
    lf = live_fabric(token=token, **RECONCILE)
    kube_cluster.apply_all(placed(demo_objects(), kube_namespace))
    kube_cluster.patch(VPC_API, "VPC", "vpc-web", kube_namespace, {"spec": {"subnets": {"frontend": {"vlan": 1999}}}})
    kube_cluster.delete(VPC_API, "VPC", "vpc-db", kube_namespace)

    result = lf.sync()

    assert (result.live, result.drift) == (LiveStatus.COMPARED, DriftStatus.IN_SYNC)
    run = lf.last_run()
    assert run.live_applied == 2
    assert sorted(run.live_report["applied"]) == [
        f"VPC.vpc.githedgehog.com {kube_namespace}/vpc-db",
        f"VPC.vpc.githedgehog.com {kube_namespace}/vpc-web",
    ]
    web = kube_cluster.get(VPC_API, "VPC", "vpc-web", kube_namespace)
    assert web is not None
    assert web["spec"]["subnets"]["frontend"]["vlan"] == 1001
    assert FIELD_MANAGER in managers(web)
    assert FIELD_MANAGER in managers(kube_cluster.get(VPC_API, "VPC", "vpc-db", kube_namespace))
    assert lf.rows() == {}

    again = lf.sync()  # the watch brings our own applies back: compared again, in sync
    assert (again.drift, lf.last_run().live_applied) == (DriftStatus.IN_SYNC, 0)


def test_reconcile_without_prune_leaves_an_unmanaged_object_alone(live_fabric, kube_cluster, kube_namespace):
    lf = live_fabric([vpc("web", 1001)], **RECONCILE)
    kube_cluster.apply(in_namespace(vpc("web", 1001), kube_namespace))
    kube_cluster.apply(in_namespace(vpc("extra", 1002), kube_namespace))
    mark = kube_cluster.audit_mark()

    lf.sync()

    assert deletes(kube_cluster, mark) == 0
    assert kube_cluster.get(VPC_API, "VPC", "extra", kube_namespace) is not None
    assert {k: r.state for k, r in lf.rows().items()} == {"VPC/extra": DriftState.UNMANAGED}
    assert lf.cluster.prune_refused == ""


def test_a_failed_apply_is_recorded_per_object_and_the_sync_still_succeeds(live_fabric, kube_cluster, kube_namespace):
    readonly = kube_cluster.readonly_token(kube_namespace)
    lf = live_fabric([vpc("web", 1001)], token=readonly, **RECONCILE)

    result = lf.sync()

    assert result.status == "success"
    assert result.drift == DriftStatus.OUT_OF_SYNC  # still missing
    run = lf.last_run()
    assert run.live_applied == 0
    assert run.live_report["failed"][0]["action"] == "apply"
    assert "forbidden (403)" in run.live_report["failed"][0]["error"]
    assert "forbidden (403)" in lf.cluster.last_error
    assert {k: r.state for k, r in lf.rows().items()} == {"VPC/web": DriftState.MISSING}


# --- prune --------------------------------------------------------------------------------------------


def test_prune_deletes_an_unmanaged_object_only_when_enabled(live_fabric, kube_cluster, kube_namespace):
    lf = live_fabric(**RECONCILE, prune_enabled=True)
    kube_cluster.apply_all(placed(demo_objects(), kube_namespace))
    kube_cluster.apply(in_namespace(vpc("extra", 1777), kube_namespace))  # 1 of 19 live: under 10 %
    mark = kube_cluster.audit_mark()

    result = lf.sync()

    assert kube_cluster.get(VPC_API, "VPC", "extra", kube_namespace) is None
    assert deletes(kube_cluster, mark) == 1
    assert result.drift == DriftStatus.IN_SYNC
    run = lf.last_run()
    assert (run.live_pruned, run.live_report["pruned"]) == (1, [f"VPC.vpc.githedgehog.com {kube_namespace}/extra"])


def test_the_guard_refuses_emptying_a_fabric_until_an_operator_confirms(live_fabric, kube_cluster, kube_namespace):
    lf = live_fabric(**RECONCILE, prune_enabled=True, prune_max_share=1.0)
    kube_cluster.apply_all(placed(demo_objects(), kube_namespace))
    lf.sync()
    assert lf.cluster.drift_status == DriftStatus.IN_SYNC
    lf.commit([])  # an emptied folder
    mark = kube_cluster.audit_mark()

    lf.sync()  # refused, whatever the share allows
    assert "would delete everything" in lf.last_run().live_report["prune_refused"]
    lf.sync()  # nothing changed: the refusal stands, still waiting
    assert lf.last_run().live_status == LiveStatus.UNCHANGED
    assert deletes(kube_cluster, mark) == 0
    cluster = lf.cluster
    assert "would delete everything" in cluster.prune_refused
    assert len(cluster.prune_pending) == 18
    assert cluster.prune_refused_at is not None
    assert cluster.drift_counts["unmanaged"] == 18
    assert len(kube_cluster.list_objects(VPC_API, "VPC", kube_namespace)) == 2

    assert confirm_prune(cluster, "alice", timezone.now())
    result = lf.sync()

    assert deletes(kube_cluster, mark) == 18
    assert kube_cluster.list_objects(VPC_API, "VPC", kube_namespace) == []
    assert result.drift == DriftStatus.IN_SYNC
    cluster = lf.cluster
    assert (cluster.prune_refused, cluster.prune_pending, cluster.prune_refused_at) == ("", [], None)
    assert (cluster.prune_confirmed_at, cluster.prune_confirmed_by) == (None, "")  # used up
    assert lf.last_run().live_report["prune_confirmed_by"] == "alice"


def test_a_confirmation_covers_only_the_objects_the_operator_saw(live_fabric, kube_cluster, kube_namespace):
    lf = live_fabric([vpc("a", 1001), vpc("b", 1002)], **RECONCILE, prune_enabled=True)
    for obj in (vpc("a", 1001), vpc("b", 1002), vpc("x", 1003)):
        kube_cluster.apply(in_namespace(obj, kube_namespace))
    lf.sync()
    refused = lf.cluster
    assert "would delete 1 of 3 live objects (33%), more than the allowed 10%" in refused.prune_refused

    assert confirm_prune(refused, "alice", timezone.now())
    kube_cluster.apply(in_namespace(vpc("y", 1004), kube_namespace))  # appeared after the confirmation
    lf.sync()

    assert kube_cluster.get(VPC_API, "VPC", "x", kube_namespace) is not None  # nothing deleted
    again = lf.cluster
    assert "would delete 2 of 4" in again.prune_refused
    assert again.prune_refused_at > refused.prune_refused_at
    assert not again.prune_confirmed  # the old confirmation does not cover the new set


def test_there_is_nothing_to_confirm_while_no_prune_waits(live_fabric, kube_cluster, kube_namespace):
    lf = live_fabric([vpc("a", 1001)], **RECONCILE, prune_enabled=True)
    kube_cluster.apply(in_namespace(vpc("a", 1001), kube_namespace))
    lf.sync()

    assert not confirm_prune(lf.cluster, "bob", timezone.now())
    assert lf.cluster.prune_confirmed_at is None


# --- the guard, as a pure function -----------------------------------------------------------------


def report_of(desired: int, live_extra: int):
    docs = [in_namespace(vpc(f"d{i}", 1000 + i), "ns") for i in range(desired)]
    extra = [in_namespace(vpc(f"x{i}", 2000 + i), "ns") for i in range(live_extra)]
    return compare(docs, docs + extra, namespaces=["ns"])


@pytest.mark.parametrize(
    ("desired", "extra", "share", "allowed"),
    [
        (9, 1, 0.1, True),  # exactly 10 %
        (8, 2, 0.1, False),
        (0, 3, 1.0, False),  # everything, whatever the share
        (3, 0, 0.0, True),  # nothing to delete
    ],
)
def test_the_guard_allows_deleting_at_most_the_share(desired, extra, share, allowed):
    decision = decide_prune(report_of(desired, extra), max_share=share, pending=[], confirmed=False)
    assert (not decision.waiting) is allowed
    assert len(decision.delete) == (extra if allowed else 0)


def test_a_confirmed_refusal_deletes_the_same_objects_once():
    report = report_of(2, 2)
    refused = decide_prune(report, max_share=0.1, pending=[], confirmed=False)
    assert refused.waiting
    assert len(refused.pending) == 2
    allowed = decide_prune(report, max_share=0.1, pending=refused.pending, confirmed=True)
    assert (len(allowed.delete), allowed.used_confirmation) == (2, True)
    bigger = decide_prune(report_of(2, 3), max_share=0.1, pending=refused.pending, confirmed=True)
    assert bigger.waiting
    assert not bigger.delete
