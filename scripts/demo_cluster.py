"""The demo fabric's own Kubernetes cluster, for ``DEMO_CLUSTER=1 make run``.

Without the switch ``make run`` starts no cluster and needs none. With it, and with the
kube-apiserver binary that ``bash scripts/kube-apiserver.sh build`` cached (and Debian's
etcd), a newcomer sees a fabric that drifted from Git, and its diff:

1. Start a private etcd + kube-apiserver on free loopback ports with a fresh CA and the
   Hedgehog CRDs, through the test harness (``tests/kube.py``: the same code the tests
   trust, so the demo cannot drift from it); data in a temporary folder, gone at exit.
2. A ServiceAccount ``fcp-observer`` in ``default`` with the observe RBAC of the README
   (get/list/watch on the Hedgehog kinds, nothing else) and a token for it.
3. Apply the demo manifests (``sync/demo_manifests``), then one deliberate out-of-band
   change, as someone with ``kubectl edit`` would: VPC ``vpc-web``'s frontend VLAN
   1001 becomes 1999.
4. Write the server URL, CA and token to a private file (mode 0600) that
   ``manage.py bootstrap`` reads (``DEMO_CLUSTER_FILE``) to connect the demo fabric in
   observe mode; ``scripts/run.py`` deletes the file once bootstrap has run.

The first tick then syncs the demo fabric: *OutOfSync*, 1 drifted, and on its page the
field ``/spec/subnets/frontend/vlan`` with Git's 1001 and the live 1999.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as ``python scripts/run.py``: the project is not on the path
    sys.path.insert(0, str(ROOT))

from tests.kube import KubeCluster, unavailable_reason  # noqa: E402
from tests.kube_api import HEDGEHOG_GROUPS, demo_objects, wait_until  # noqa: E402

NAMESPACE = "default"
SERVICE_ACCOUNT = "fcp-observer"
TOKEN_SECONDS = 90 * 24 * 3600  # outlives any demo session
OUT_OF_BAND = ("vpc.githedgehog.com/v1beta1", "VPC", "vpc-web", {"spec": {"subnets": {"frontend": {"vlan": 1999}}}})


def observer_token(kube: KubeCluster, namespace: str = NAMESPACE, name: str = SERVICE_ACCOUNT) -> str:
    """A ServiceAccount bound to a read-only Role on the Hedgehog kinds, and a token for it."""
    rbac = "rbac.authorization.k8s.io/v1"
    rules = [{"apiGroups": list(HEDGEHOG_GROUPS), "resources": ["*"], "verbs": ["get", "list", "watch"]}]
    kube.apply_all([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}},
        {"apiVersion": rbac, "kind": "Role", "metadata": {"name": name, "namespace": namespace}, "rules": rules},
        {
            "apiVersion": rbac, "kind": "RoleBinding", "metadata": {"name": name, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ])  # fmt: skip
    request: dict[str, Any] = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": TOKEN_SECONDS},
    }
    answer = kube.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", json=request)
    answer.raise_for_status()
    token = str(answer.json()["status"]["token"])
    probe = kube.path("vpc.githedgehog.com/v1beta1", "VPC", namespace)
    wait_until(lambda: kube.request("GET", probe, token).status_code == 200, message=f"{name} cannot list yet")
    return token


def seed(kube: KubeCluster) -> None:
    """The demo manifests as Git has them, then the one change Git does not know about."""
    kube.apply_all(demo_objects())
    api_version, kind, name, patch = OUT_OF_BAND
    kube.patch(api_version, kind, name, NAMESPACE, patch)


class DemoCluster:
    """A running demo cluster and the file that tells bootstrap how to reach it."""

    def __init__(self, kube: KubeCluster, connection_file: Path) -> None:
        self.kube = kube
        self.connection_file = connection_file

    @classmethod
    def start(cls, var_dir: Path) -> DemoCluster:
        """Steps 1-4 of the module docstring; stops what it started if any step fails."""
        kube = KubeCluster.launch()
        try:
            token = observer_token(kube)
            seed(kube)
            connection: dict[str, Any] = {"server": kube.base_url, "ca": kube.ca_pem, "token": token}
            path = var_dir / "demo-cluster.json"
            path.touch(mode=0o600)
            path.chmod(0o600)
            path.write_text(json.dumps(connection))
        except BaseException:
            kube.destroy()
            raise
        return cls(kube, path)

    @property
    def server(self) -> str:
        return self.kube.base_url

    def forget_connection(self) -> None:
        """Delete the file with the token once bootstrap has stored it (encrypted)."""
        self.connection_file.unlink(missing_ok=True)

    def stop(self) -> None:
        self.forget_connection()
        self.kube.destroy()


def start_if_wanted(var_dir: Path, wanted: bool) -> tuple[DemoCluster | None, str]:
    """The demo cluster when ``wanted`` and possible, with a line saying what happened."""
    if not wanted:
        return None, ""
    reason = unavailable_reason()
    if reason:
        return None, f"DEMO_CLUSTER=1 but no demo cluster: {reason}"
    demo = DemoCluster.start(var_dir)
    return demo, f"Demo cluster: {demo.server} (the demo fabric compares with it; vpc-web was changed out of band)"
