"""The RBAC the README gives for each mode, applied as written to a real kube-apiserver: it is
enough for what the mode does, and no more (observe cannot write; reconcile without
prune cannot delete)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from sync.models import ClusterMode, DriftStatus
from tests.kube import KubeCluster
from tests.kube_api import ROOT, demo_objects, in_namespace, wait_until
from tests.livefabric import VPC_API, forget_k8s_breakers, make_live_fabric, placed, vpc  # noqa: F401

pytestmark = pytest.mark.usefixtures("forget_k8s_breakers")

README = (ROOT / "README.md").read_text()
SECTION = README[README.index("## Fabrics with a Kubernetes cluster") :]


def readme_rbac(mode: str, namespace: str) -> tuple[str, list[dict[str, Any]]]:
    """The README's documents for ``mode`` ("observe", "reconcile" or "prune"), placed in ``namespace``."""
    observe, verbs = re.findall(r"```yaml\n(.*?)```", SECTION, re.S)[:2]
    name = "fcp-observer"
    text = observe.replace("namespace: default", f"namespace: {namespace}")
    if mode != "observe":
        wanted = {"reconcile": "# reconcile\n", "prune": "# reconcile with prune\n"}[mode]
        line = next(line for line in verbs.splitlines(keepends=True) if line.endswith(wanted))
        text = text.replace("verbs: [get, list, watch]", line.split("#")[0].strip())
        text = text.replace(name, "fcp-reconciler")
        name = "fcp-reconciler"
    return name, [doc for doc in yaml.safe_load_all(text) if doc]


def token_of(kube: KubeCluster, mode: str, namespace: str) -> str:
    name, documents = readme_rbac(mode, namespace)
    kube.apply_all(documents)
    path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
    answer = kube.request("POST", path, json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest"})
    token = str(answer.json()["status"]["token"])
    probe = kube.path(VPC_API, "VPC", namespace)
    wait_until(lambda: kube.request("GET", probe, token).status_code == 200, message=f"{name} cannot LIST yet")
    return token


def may(kube: KubeCluster, token: str, method: str, namespace: str, name: str = "") -> bool:
    """Whether the token may ``method`` a VPC (a dry run: nothing changes)."""
    path = kube.path(VPC_API, "VPC", namespace, name or None)
    body = {"json": in_namespace(vpc("rbac-probe"), namespace)} if method == "POST" else {}
    status = kube.request(method, path, token, params={"dryRun": "All"}, **body).status_code
    assert status < 500, status
    return status != 403


@pytest.fixture
def live_fabric(db, git_repo, kube_cluster, kube_namespace):
    return make_live_fabric(git_repo, kube_cluster, kube_namespace)


def test_the_observe_role_reads_everything_the_fabric_tracks_and_writes_nothing(
    live_fabric, kube_cluster, kube_namespace
):
    token = token_of(kube_cluster, "observe", kube_namespace)
    lf = live_fabric(token=token)
    kube_cluster.apply_all(placed(demo_objects(), kube_namespace))

    result = lf.sync()

    assert (result.drift, result.live_error) == (DriftStatus.IN_SYNC, "")
    assert not may(kube_cluster, token, "POST", kube_namespace)
    assert not may(kube_cluster, token, "DELETE", kube_namespace, "vpc-web")


def test_the_reconcile_role_applies_missing_and_drifted_objects_but_cannot_delete(
    live_fabric, kube_cluster, kube_namespace
):
    token = token_of(kube_cluster, "reconcile", kube_namespace)
    lf = live_fabric(token=token, mode=ClusterMode.RECONCILE)
    kube_cluster.apply_all(placed(demo_objects(), kube_namespace))
    kube_cluster.delete(VPC_API, "VPC", "vpc-db", kube_namespace)
    kube_cluster.patch(VPC_API, "VPC", "vpc-web", kube_namespace, {"spec": {"subnets": {"frontend": {"vlan": 4000}}}})

    result = lf.sync()

    assert (result.drift, result.live_error) == (DriftStatus.IN_SYNC, "")
    assert lf.last_run().live_applied == 2  # one created by the apply, one changed back
    assert not may(kube_cluster, token, "DELETE", kube_namespace, "vpc-web")


def test_the_prune_role_deletes_an_unmanaged_object(live_fabric, kube_cluster, kube_namespace):
    token = token_of(kube_cluster, "prune", kube_namespace)
    lf = live_fabric(token=token, mode=ClusterMode.RECONCILE, prune_enabled=True)
    kube_cluster.apply_all(placed(demo_objects(), kube_namespace))
    kube_cluster.apply(in_namespace(vpc("vpc-extra", 1777), kube_namespace))

    result = lf.sync()

    assert (result.drift, result.live_error) == (DriftStatus.IN_SYNC, "")
    assert lf.last_run().live_pruned == 1
    assert kube_cluster.get(VPC_API, "VPC", "vpc-extra", kube_namespace) is None
