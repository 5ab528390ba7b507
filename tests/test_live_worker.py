"""The live step through a real worker process: a tick's sync, then "Compare now", serialised
through the broker; the token decrypted in the worker and never in its log or task result."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.utils import timezone

from core.tick import run_tick
from sync.models import DriftedObject, DriftStatus, Fabric, FabricCluster, RunStatus, SyncRun, SyncTrigger
from sync.operations import compare_now
from tests.conftest import wait_for
from tests.kube_api import demo_objects
from tests.livefabric import VPC_API, forget_k8s_breakers, make_live_fabric, placed  # noqa: F401
from tests.test_sync_breakers import fresh_git_breakers  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("forget_k8s_breakers", "fresh_git_breakers")]


def finished_runs(fabric: Fabric) -> list[SyncRun]:
    return list(SyncRun.objects.filter(fabric=fabric).exclude(status=RunStatus.RUNNING).order_by("id"))


def test_a_real_worker_compares_the_cluster_and_never_shows_the_token(
    worker_factory, git_repo, kube_cluster, kube_namespace, settings
):
    key = Fernet.generate_key().decode()
    settings.CREDENTIALS_KEYS = [key]
    token = kube_cluster.readonly_token(kube_namespace, name="fcp-worker-observer")
    lf = make_live_fabric(git_repo, kube_cluster, kube_namespace)(token=token)
    kube_cluster.apply_all(placed(demo_objects(), kube_namespace))
    worker = worker_factory(CREDENTIALS_KEYS=key)

    mark = kube_cluster.audit_mark()
    run_tick()  # the scheduled path: tick -> sync.sync_fabric on the worker
    wait_for(lambda: len(finished_runs(lf.fabric)) == 1, timeout=60, message=worker.log())
    assert FabricCluster.objects.get(fabric=lf.fabric).drift_status == DriftStatus.IN_SYNC

    kube_cluster.patch(VPC_API, "VPC", "vpc-web", kube_namespace, {"spec": {"subnets": {"frontend": {"vlan": 4000}}}})
    outcome = compare_now(Fabric.objects.with_cluster().filter(id=lf.fabric.id), timezone.now())
    assert outcome.enqueued == [lf.fabric.name]
    wait_for(lambda: len(finished_runs(lf.fabric)) == 2, timeout=60, message=worker.log())

    first, second = finished_runs(lf.fabric)
    assert (first.trigger, first.live_status) == (SyncTrigger.SCHEDULE, "compared")
    assert (second.trigger, second.status, second.live_status) == (SyncTrigger.COMPARE, RunStatus.UNCHANGED, "compared")
    assert second.live_report["read"]["lists"] == 12  # "Compare now" re-reads everything
    cluster = FabricCluster.objects.get(fabric=lf.fabric)
    assert cluster.drift_status == DriftStatus.OUT_OF_SYNC
    row = DriftedObject.objects.get(fabric=lf.fabric)
    assert (row.name, row.diff[0]["desired"], row.diff[0]["live"]) == ("vpc-web", 1001, 4000)
    # The task result, as the worker logs it once the task has returned (after the run was stored).
    wait_for(lambda: "'drift': 'out_of_sync'" in worker.log_path.read_text(errors="replace"), message=worker.log())
    log = worker.log_path.read_text(errors="replace")  # all of it
    assert token not in log
    assert token[:16] not in log
    # The worker's calls with the token: reads, and the health sweep's access reviews (which write nothing).
    counts = kube_cluster.audit_counts(since=mark, token=token)
    assert counts[("list", "vpcs")] == 2
    assert {verb for (verb, resource) in counts if resource != "selfsubjectaccessreviews"} == {"get", "list"}
