"""``manage.py drift`` and ``manage.py sync``'s drift column, the operators' operations and
the per-cluster health check, against the real kube-apiserver."""

from __future__ import annotations

import secrets
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from sync.health import _cluster_results
from sync.models import ClusterMode, DriftedObject, DriftStatus, Fabric, FabricCluster, SyncRun, SyncTrigger
from sync.operations import disconnect_cluster, reconcile_now, save_cluster_settings
from tests.factories import make_fabric
from tests.kube_api import in_namespace
from tests.livefabric import VPC_API, forget_k8s_breakers, make_live_fabric, vpc  # noqa: F401

pytestmark = pytest.mark.usefixtures("forget_k8s_breakers")


@pytest.fixture
def live_fabric(db, git_repo, kube_cluster, kube_namespace):
    return make_live_fabric(git_repo, kube_cluster, kube_namespace)


def drift(*args: str) -> tuple[int, str]:
    """(exit status, stdout) of ``manage.py drift``."""
    out = StringIO()
    try:
        call_command("drift", *args, stdout=out, stderr=StringIO())
    except CommandError as exc:
        return exc.returncode, out.getvalue()
    return 0, out.getvalue()


def table_row(output: str, fabric: str) -> list[str]:
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip("│┃ ").split("│")]
        if cells and cells[0] == fabric:
            return cells
    raise AssertionError(f"no row for {fabric} in:\n{output}")


# --- manage.py drift -------------------------------------------------------------------------


def test_drift_prints_each_differing_field_and_exits_1_when_out_of_sync(live_fabric, kube_cluster):
    ns = kube_cluster.create_namespace(f"east-{secrets.token_hex(3)}")  # short: the table stays one line a row
    lf = live_fabric([vpc("web", 1001), vpc("db", 1002)], name="east", namespace=ns)
    kube_cluster.apply(in_namespace(vpc("web", 1001), ns))
    kube_cluster.patch(VPC_API, "VPC", "web", ns, {"spec": {"subnets": {"default": {"vlan": 1999}}}})
    lf.sync()

    status, out = drift("east")

    assert status == 1
    assert "east: out of sync (1 drifted, 1 missing)" in out
    rows = [[cell.strip() for cell in line.strip("│ ").split("│")] for line in out.splitlines() if "VPC" in line]
    assert rows == [
        [f"VPC {ns}/db", "missing", "-", "(the object)", "(absent)"],
        [f"VPC {ns}/web", "drifted", "/spec/subnets/default/vlan", "1001", "1999"],
    ]


def test_drift_exits_0_in_sync_and_2_when_unknown_or_without_a_cluster(live_fabric, kube_cluster, kube_namespace):
    good = live_fabric([vpc("web", 1001)], name="good")
    kube_cluster.apply(in_namespace(vpc("web", 1001), kube_namespace))
    good.sync()
    bad = live_fabric([vpc("web", 1001)], name="bad", token="wrong-token-0123456789")
    bad.sync()
    make_fabric("/nonexistent/repo", name="git-only")

    assert drift("good")[0] == 0
    status, out = drift("bad")
    assert status == 2
    assert "last error: the cluster " in out
    assert drift("git-only")[0] == 2
    with pytest.raises(CommandError, match="Unknown fabric"):
        call_command("drift", "nope", stdout=StringIO())


def test_drift_compare_rereads_the_cluster_first(live_fabric, kube_cluster, kube_namespace):
    lf = live_fabric([vpc("web", 1001)], name="east")
    kube_cluster.apply(in_namespace(vpc("web", 1001), kube_namespace))

    status, out = drift("east", "--compare")

    assert status == 0
    assert "east: in sync" in out
    assert SyncRun.objects.get(fabric=lf.fabric).trigger == SyncTrigger.COMPARE


# --- manage.py sync --------------------------------------------------------------------------------


def test_the_sync_table_shows_drift_beside_the_sync_status(live_fabric, git_repo, kube_cluster, kube_namespace):
    live_fabric([vpc("web", 1001), vpc("db", 1002)], name="east")
    kube_cluster.apply(in_namespace(vpc("web", 1001), kube_namespace))
    repo = git_repo("west")
    repo.with_switches(2)
    make_fabric(repo.url, name="west")

    out = StringIO()
    call_command("sync", "east", "west", stdout=out, stderr=StringIO())

    east, west = table_row(out.getvalue(), "east"), table_row(out.getvalue(), "west")
    assert (east[1], east[5]) == ("success", "out of sync (1 missing)")
    assert (west[1], west[5]) == ("success", "-")


def test_the_sync_table_shows_a_live_error_without_failing_the_command(live_fabric):
    live_fabric([vpc("web", 1001)], name="east", token="wrong-token-0123456789")

    out = StringIO()
    call_command("sync", "east", stdout=out, stderr=StringIO())

    row = table_row(out.getvalue(), "east")
    assert (row[1], row[5]) == ("success", "unknown")
    assert "live state: the cluster" in out.getvalue()


# --- operations ---------------------------------------------------------------------------------


def test_reconcile_now_applies_only_to_clusters_in_reconcile_mode(live_fabric):
    observe = live_fabric([vpc("web")], name="observe")
    git_only = make_fabric("/nonexistent/repo", name="git-only")

    outcome = reconcile_now(
        Fabric.objects.with_cluster().filter(id__in=[observe.fabric.id, git_only.id]), timezone.now()
    )

    assert outcome.enqueued == []
    assert sorted(outcome.not_applicable) == ["git-only", "observe"]


def test_saving_cluster_settings_writes_only_those_and_makes_the_fabric_due(live_fabric):
    lf = live_fabric([vpc("web")], name="east")
    lf.sync()
    stale = lf.cluster  # loaded before the sync below writes its results
    lf.sync(trigger="compare")
    Fabric.objects.filter(id=lf.fabric.id).update(next_sync_at=timezone.now() + timedelta(hours=1))

    stale.mode = ClusterMode.RECONCILE
    stale.drift_status = DriftStatus.UNKNOWN  # a stale copy of a system field: must not be written back
    now = timezone.now()
    save_cluster_settings(stale, ["mode", "drift_status"], now)

    fresh = FabricCluster.objects.get(id=stale.id)
    assert fresh.mode == ClusterMode.RECONCILE
    assert fresh.drift_status == DriftStatus.OUT_OF_SYNC  # the missing VPC, as the sync wrote it
    assert Fabric.objects.get(id=lf.fabric.id).next_sync_at == now


def test_disconnecting_a_cluster_forgets_its_drift_and_the_fabric_syncs_git_only(live_fabric):
    lf = live_fabric([vpc("web")], name="east")
    lf.sync()
    assert DriftedObject.objects.filter(fabric=lf.fabric).count() == 1

    assert disconnect_cluster(lf.fabric)

    assert not FabricCluster.objects.filter(fabric=lf.fabric).exists()
    assert not DriftedObject.objects.filter(fabric=lf.fabric).exists()
    assert lf.sync().live == ""
    assert not disconnect_cluster(lf.fabric)


# --- health -------------------------------------------------------------------------------------------


def test_the_cluster_health_check_says_reachable_refused_or_missing_rights(live_fabric, kube_cluster, kube_namespace):
    live_fabric(name="good")
    live_fabric(name="bad-token", token="wrong-token-0123456789")
    readonly = kube_cluster.readonly_token(kube_namespace)
    live_fabric(name="reconcile-read-only", token=readonly, mode=ClusterMode.RECONCILE)

    results = {r.component: r for r in _cluster_results()}

    good = results["k8s:good"]
    assert (good.status, good.message) == ("healthy", "reachable, authenticated (v1.20.2)")
    assert good.details["server"] == kube_cluster.base_url
    bad = results["k8s:bad-token"]
    assert bad.status == "unhealthy"
    assert "rejected the bearer token (401 Unauthorized)" in bad.message
    limited = results["k8s:reconcile-read-only"]
    assert limited.status == "degraded"
    assert limited.message.startswith("reachable, but the token may not patch ")
    for result in results.values():
        assert readonly not in str(result.as_dict())
        assert kube_cluster.admin_token not in str(result.as_dict())
