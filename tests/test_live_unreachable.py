"""A fabric's cluster goes away: its live part is skipped behind the breaker, never the sync.

The session's apiserver is stopped for real (etcd, and so every object, stays) and
started again on the same port.
"""

from __future__ import annotations

import time

import pytest

from core.breaker_core import State
from sync.health import _cluster_results
from sync.live.cluster import client_for
from sync.models import DriftStatus, LiveStatus, RunStatus
from tests.factories import make_fabric
from tests.kube_api import in_namespace
from tests.livefabric import forget_k8s_breakers, make_live_fabric, sync_now, vpc  # noqa: F401

pytestmark = pytest.mark.usefixtures("forget_k8s_breakers")
VPC_ONLY = ["vpc.githedgehog.com/v1beta1/VPC"]  # one collection: each sync is one probe and one read


@pytest.fixture
def live_fabric(db, git_repo, kube_cluster, kube_namespace):
    return make_live_fabric(git_repo, kube_cluster, kube_namespace)


def test_a_stopped_cluster_is_unreachable_behind_its_breaker_other_fabrics_finish_and_it_recovers(
    live_fabric, git_repo, kube_cluster, kube_namespace, settings
):
    settings.BREAKER_WAIT_SECONDS = 2.0
    lf = live_fabric([vpc("web", 1001)], kinds=VPC_ONLY)
    kube_cluster.apply(in_namespace(vpc("web", 1001), kube_namespace))
    repo = git_repo("git-only")
    repo.with_switches(2)
    git_only = make_fabric(repo.url, name="git-only")
    assert lf.sync().drift == DriftStatus.IN_SYNC
    with client_for(lf.cluster) as client:
        breaker = client.breaker  # a handle on the shared state in Redis

    with kube_cluster.apiserver_stopped(graceful=False):
        failures = [lf.sync() for _ in range(5)]  # the breaker trips after 5 consecutive failures
        for result in failures:
            assert (result.status, result.live, result.drift) == (RunStatus.UNCHANGED, "failed", DriftStatus.UNKNOWN)
            assert "connection refused" in result.live_error
        assert breaker.state is State.OPEN

        started = time.monotonic()
        skipped = lf.sync()
        elapsed = time.monotonic() - started
        other = sync_now(git_only)
        health = {r.component: r for r in _cluster_results()}

    assert skipped.status == RunStatus.UNCHANGED  # the Git part counts as a success
    assert skipped.live == LiveStatus.UNREACHABLE
    assert elapsed < 2  # one rejection, not a call that waits for a dead cluster
    cluster = lf.cluster
    assert cluster.last_error.startswith("cluster unreachable (breaker open until ")
    assert cluster.drift_status == DriftStatus.UNKNOWN
    assert cluster.drift_counts["in_sync"] == 1  # the last known drift is kept beside "unknown"
    lf.fabric.refresh_from_db()
    assert lf.fabric.consecutive_failures == 0
    assert lf.fabric.sync_status == "in_sync"
    assert lf.fabric.last_error.startswith("live state: cluster unreachable (breaker open until ")
    run = lf.last_run()
    assert (run.status, run.live_status) == (RunStatus.UNCHANGED, LiveStatus.UNREACHABLE)
    assert other.status == RunStatus.SUCCESS
    probe = health[f"k8s:{lf.fabric.name}"]
    assert probe.status == "unhealthy"
    assert probe.message.startswith("cluster unreachable (breaker")

    # Back: once the breaker admits trial calls, the syncs read and compare again on their own.
    def recovered() -> bool:
        return lf.sync().drift == DriftStatus.IN_SYNC

    deadline = time.monotonic() + 30
    while not recovered():
        assert time.monotonic() < deadline, lf.cluster.last_error
        time.sleep(0.5)
    assert lf.cluster.last_error == ""
    assert breaker.state in (State.CLOSED, State.HALF_OPEN)
