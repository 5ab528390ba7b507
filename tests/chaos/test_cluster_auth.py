"""A cluster's bearer token revoked mid-run, then rotated by the operator.

Real: the session's kube-apiserver (``tests/kube.py``, built from Debian's sources)
holds the fabrics' live objects; the fabrics read it with a ServiceAccount token from
the TokenRequest API, kept in an encrypted ``Credential``. A real prefork worker and
real ``manage.py tick`` processes run against the private stack. Revoking is deleting
the ServiceAccount: the apiserver then answers 401 to its token, as it does to an
expired one.

Invariants: a revoked token fails only the live step of its fabrics, with a reason
that says so (the Git sync still succeeds and counts no failure; drift is *unknown*,
not stale "in sync"); Git-only fabrics sync as if nothing happened; neither token
appears in the fabric, the run, the cluster row or the worker's log; nothing overlaps
or sticks. When the operator sets the new token, those fabrics are due at once and
the next tick compares them again.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from sync.models import DriftStatus, Fabric, FabricCluster, LiveStatus, RunStatus, SyncRun
from tests.chaos.conftest import make_fabrics
from tests.chaos.invariants import SYNCED, assert_healthy_history
from tests.chaos.scale import ChaosScale
from tests.chaos.stack import ChaosStack
from tests.conftest import wait_for
from tests.gitrepo import GitRepo
from tests.kube import KubeCluster
from tests.kube_api import demo_objects
from tests.livefabric import placed, write_manifests

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]

SYNC_SECONDS = 120


def _last_runs(ids: list[int], since: object) -> dict[int, SyncRun]:
    """Each fabric's latest finished run that started at or after ``since``."""
    runs = SyncRun.objects.filter(fabric_id__in=ids, started_at__gte=since).exclude(status=RunStatus.RUNNING)
    return {run.fabric_id: run for run in runs.order_by("started_at")}


def _revoke(kube: KubeCluster, namespace: str, name: str, token: str) -> None:
    kube.delete("v1", "ServiceAccount", name, namespace)
    wait_for(
        lambda: kube.request("GET", "/api/v1/namespaces", token).status_code == 401,
        timeout=30,
        message="the apiserver still accepts the revoked token",
    )


def _texts() -> list[str]:
    return [
        *Fabric.objects.values_list("last_error", flat=True),
        *SyncRun.objects.values_list("error_message", flat=True),
        *SyncRun.objects.values_list("live_error", flat=True),
        *FabricCluster.objects.values_list("last_error", flat=True),
    ]


def test_a_revoked_cluster_token_fails_only_the_live_step_and_its_rotation_compares_again(
    chaos_stack: ChaosStack, chaos_scale: ChaosScale, kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    from core.models import Credential

    namespace = kube_namespace
    old_token = kube_cluster.readonly_token(namespace, name="fcp-chaos-old")
    kube_cluster.apply_all(placed(demo_objects(), namespace))
    count = chaos_scale.n(4, minimum=2)
    local = make_fabrics(chaos_stack, count)
    repo = GitRepo.create(chaos_stack.repos / "cluster-fabric")
    write_manifests(repo, placed(demo_objects(), namespace))
    with chaos_stack.orm():
        credential = Credential(name="k8s-observer", kind=Credential.Kind.BEARER_TOKEN)
        credential.set_secret(old_token)
        credential.save()
        live: list[int] = []
        for number in range(count):
            fabric = Fabric.objects.create(
                name=f"live-{number:03d}", git_url=repo.url, git_branch=repo.branch, git_path="manifests",
                sync_interval=60, next_sync_at=timezone.now(),
            )  # fmt: skip
            FabricCluster.objects.create(
                fabric=fabric, server_url=kube_cluster.base_url, ca_bundle=kube_cluster.ca_pem,
                namespaces=[namespace], token=credential,
            )  # fmt: skip
            live.append(fabric.id)
        everyone = local + live
    worker = chaos_stack.start_worker("worker", concurrency=2)

    def round_finished(since: object) -> bool:
        return set(_last_runs(everyone, since)) == set(everyone)

    with chaos_stack.orm():
        start = timezone.now()
    chaos_stack.tick()
    with chaos_stack.orm():
        wait_for(lambda: round_finished(start), timeout=chaos_scale.drain(SYNC_SECONDS), message=worker.log())
        first = _last_runs(live, start)
        assert {run.live_status for run in first.values()} == {LiveStatus.COMPARED}, worker.log()

        # The token is revoked on the cluster (deleted, expired: to the apiserver both are a 401).
        _revoke(kube_cluster, namespace, "fcp-chaos-old", old_token)
        revoked_at = timezone.now()
        Fabric.objects.update(next_sync_at=revoked_at)
    chaos_stack.tick()
    with chaos_stack.orm():
        wait_for(lambda: round_finished(revoked_at), timeout=chaos_scale.drain(SYNC_SECONDS), message=worker.log())
        runs = _last_runs(everyone, revoked_at)
        assert all(run.status in SYNCED for run in runs.values()), {r.fabric_id: r.status for r in runs.values()}
        for fabric_id in live:
            run = runs[fabric_id]
            assert run.live_status == LiveStatus.FAILED, (run.live_status, run.live_error)
            assert "401" in run.live_error, run.live_error
            assert "token" in run.live_error, run.live_error
            cluster = FabricCluster.objects.get(fabric_id=fabric_id)
            assert cluster.drift_status == DriftStatus.UNKNOWN, "a comparison that failed must not say in sync"
            assert "401" in cluster.last_error
        assert set(Fabric.objects.values_list("consecutive_failures", flat=True)) == {0}
        assert_healthy_history()

        # The operator sets a new token: those fabrics are due now, not after their interval.
        new_token = kube_cluster.readonly_token(namespace, name="fcp-chaos-new")
        credential = Credential.objects.get(pk=credential.pk)
        credential.set_secret(new_token)
        credential.save()
        rotated_at = timezone.now()
        due = dict(Fabric.objects.filter(id__in=live).values_list("id", "next_sync_at"))
        assert all(when <= rotated_at for when in due.values()), due
    chaos_stack.tick()
    with chaos_stack.orm():
        wait_for(
            lambda: set(_last_runs(live, rotated_at)) == set(live),
            timeout=chaos_scale.drain(SYNC_SECONDS),
            message=worker.log(),
        )
        again = _last_runs(live, rotated_at)
        statuses: dict[int, Any] = {fabric_id: (run.live_status, run.live_error) for fabric_id, run in again.items()}
        assert {status for status, _ in statuses.values()} == {LiveStatus.COMPARED}, statuses
        assert set(FabricCluster.objects.values_list("drift_status", flat=True)) == {DriftStatus.IN_SYNC}
        assert set(FabricCluster.objects.values_list("last_error", flat=True)) == {""}
        assert_healthy_history()
        log = worker.log(tail=10_000_000)
        for text in [*_texts(), log]:
            assert old_token not in text
            assert new_token not in text
