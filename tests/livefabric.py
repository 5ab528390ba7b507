"""Fabrics with a cluster for the ``test_live_*`` tests: Git holds the desired objects in
the test's namespace, the cluster row points at the session's kube-apiserver (tests/kube.py).

``make_live_fabric(git_repo, kube_cluster, namespace)`` gives the factory each test
module offers as its ``live_fabric`` fixture; ``forget_k8s_breakers`` starts and ends
each test with every Kubernetes API server's breaker closed and empty.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from django.conf import settings
from django.utils import timezone

from core import guards
from core.breaker import REDIS_TIMEOUT, CircuitBreaker, channel_for
from core.breaker_redis import known_breakers
from core.models import Credential
from sync import leases
from sync.live.kinds import VPC_GROUP, WIRING_GROUP
from sync.models import DriftedObject, Fabric, FabricCluster, SyncRun
from sync.runner import SyncResult, run_sync
from tests.factories import make_fabric
from tests.gitrepo import GitRepo
from tests.kube import KubeCluster
from tests.kube_api import demo_objects, in_namespace

V = "v1beta1"
VPC_API = f"{VPC_GROUP}/{V}"
WIRING_API = f"{WIRING_GROUP}/{V}"


def vpc(name: str, vlan: int = 1001) -> dict[str, Any]:
    subnets = {"default": {"subnet": f"10.{vlan % 250}.0.0/24", "vlan": vlan}}
    return {"apiVersion": VPC_API, "kind": "VPC", "metadata": {"name": name}, "spec": {"subnets": subnets}}


def placed(objects: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    return [in_namespace(obj, namespace) for obj in objects]


def write_manifests(repo: GitRepo, objects: list[dict[str, Any]]) -> str:
    """Git's desired state: ``objects`` as one multi-document YAML file, committed."""
    repo.write("manifests/fabric.yaml", yaml.safe_dump_all(objects, sort_keys=False) if objects else "")
    return repo.commit()


def make_credential(token: str, name: str | None = None) -> Credential:
    credential = Credential(name=name or f"k8s-{Credential.objects.count() + 1}", kind=Credential.Kind.BEARER_TOKEN)
    credential.set_secret(token)
    credential.save()
    return credential


class LiveFabric:
    """A fabric whose Git repository and cluster namespace the test controls."""

    def __init__(self, fabric: Fabric, repo: GitRepo, namespace: str, cluster: KubeCluster) -> None:
        self.fabric = fabric
        self.repo = repo
        self.namespace = namespace
        self.kube = cluster

    @property
    def cluster(self) -> FabricCluster:
        return FabricCluster.objects.get(fabric=self.fabric)

    def commit(self, objects: list[dict[str, Any]]) -> str:
        return write_manifests(self.repo, placed(objects, self.namespace))

    def sync(self, trigger: str = "manual") -> SyncResult:
        return sync_now(self.fabric, trigger)

    def rows(self) -> dict[str, DriftedObject]:
        return {f"{r.kind}/{r.name}": r for r in DriftedObject.objects.filter(fabric=self.fabric)}

    def last_run(self) -> SyncRun:
        return SyncRun.objects.filter(fabric=self.fabric).order_by("-id").first()  # type: ignore[return-value]


def sync_now(fabric: Fabric, trigger: str = "manual") -> SyncResult:
    now = timezone.now()
    token = leases.claim_one(fabric.id, now)
    assert token is not None
    assert leases.begin(fabric.id, token, now, "test").outcome is leases.BeginOutcome.STARTED
    return run_sync(fabric.id, token, trigger=trigger, worker="test")


def make_live_fabric(
    git_repo: Callable[..., GitRepo], kube_cluster: KubeCluster, kube_namespace: str
) -> Callable[..., LiveFabric]:
    """``make(objects, token=..., mode=..., ...)``: a fabric whose Git holds ``objects`` (the
    demo fabric by default, in the test's namespace) and whose cluster is the session's
    apiserver; other keywords are ``FabricCluster`` fields."""

    def make(
        objects: list[dict[str, Any]] | None = None,
        *,
        token: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
        **cluster_fields: Any,
    ) -> LiveFabric:
        ns = namespace or kube_namespace
        repo = git_repo(name)
        write_manifests(repo, placed(demo_objects() if objects is None else objects, ns))
        fabric = make_fabric(repo.url, name=name) if name else make_fabric(repo.url)
        fields: dict[str, Any] = {
            "server_url": kube_cluster.base_url,
            "ca_bundle": kube_cluster.ca_pem,
            "namespaces": [ns],
            **cluster_fields,
        }
        FabricCluster.objects.create(fabric=fabric, token=make_credential(token or kube_cluster.admin_token), **fields)
        return LiveFabric(fabric, repo, ns, kube_cluster)

    return make


@pytest.fixture
def forget_k8s_breakers() -> Iterator[None]:
    """Every Kubernetes API server's breaker starts and ends closed and empty."""

    def forget() -> None:
        for name in known_breakers(channel_for(settings.REDIS_URL, REDIS_TIMEOUT), settings.BREAKER_KEY_PREFIX):
            if name.startswith("k8s:"):
                CircuitBreaker(name).forget()
        guards.forget_handles()

    forget()
    yield
    forget()
