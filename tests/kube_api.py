"""Talking to the test cluster's apiserver (tests/kube.py): objects, CRDs, tokens.

Plain httpx, verified against the cluster's CA, on purpose: the harness must not share
a client with the code under test. Paths come from the CRDs in ``sync/live/crds/``, so
``path(VPC, "VPC", ns, name)`` needs no plural table of its own.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
CRD_DIR = ROOT / "sync" / "live" / "crds"
DEMO_DIR = ROOT / "sync" / "demo_manifests" / "manifests"
HEDGEHOG_GROUPS = ("vpc.githedgehog.com", "wiring.githedgehog.com")
FIELD_MANAGER = "fcp-test"

# Kinds the harness itself touches that are not CRDs: apiVersion -> kind -> plural.
CORE_PLURALS = {
    "v1": {"Namespace": "namespaces", "ServiceAccount": "serviceaccounts", "ConfigMap": "configmaps"},
    "rbac.authorization.k8s.io/v1": {"Role": "roles", "RoleBinding": "rolebindings"},
    "apiextensions.k8s.io/v1": {"CustomResourceDefinition": "customresourcedefinitions"},
}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition"}


class KubeApi:
    """The apiserver at ``base_url``, trusted through ``ca_pem``; requests default to the admin token."""

    def __init__(self, base_url: str, ca_pem: str, admin_token: str, admin_user: str) -> None:
        self.base_url = base_url
        self.ca_pem = ca_pem
        self.admin_token = admin_token
        self._token_users: dict[str, str] = {admin_token: admin_user}
        self._plurals: dict[tuple[str, str], str] = {
            (api_version, kind): plural for api_version, kinds in CORE_PLURALS.items() for kind, plural in kinds.items()
        }
        for crd in load_manifests(CRD_DIR):
            spec = crd["spec"]
            for version in spec["versions"]:
                self._plurals[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = spec["names"]["plural"]

    # HTTP ---------------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem)

    def client(self, token: str | None = None, timeout: float = 10) -> httpx.Client:
        """An httpx client for the apiserver, authenticated with ``token`` (default: the admin)."""
        return httpx.Client(
            base_url=self.base_url,
            verify=self.ssl_context(),
            headers={"Authorization": f"Bearer {token or self.admin_token}"},
            timeout=timeout,
        )

    def request(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        with self.client(token) as client:
            return client.request(method, path, **kwargs)

    def _ok(self, response: httpx.Response) -> dict[str, Any]:
        if response.is_error:
            raise KubeError(response)
        return dict(response.json())

    # Objects ------------------------------------------------------------------------------

    def plural(self, api_version: str, kind: str) -> str:
        try:
            return self._plurals[(api_version, kind)]
        except KeyError:
            raise KeyError(f"no plural known for {api_version} {kind} (not a CRD of sync/live/crds)") from None

    def path(self, api_version: str, kind: str, namespace: str | None = None, name: str | None = None) -> str:
        """The REST path of a collection (no name) or one object."""
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if namespace and kind not in CLUSTER_SCOPED:
            prefix += f"/namespaces/{namespace}"
        path = f"{prefix}/{self.plural(api_version, kind)}"
        return f"{path}/{name}" if name else path

    def _object_path(self, obj: dict[str, Any]) -> str:
        meta = obj["metadata"]
        return self.path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])

    def apply(
        self,
        obj: dict[str, Any],
        namespace: str | None = None,
        field_manager: str = FIELD_MANAGER,
        token: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Server-side apply ``obj`` (into ``namespace`` when given) and return the live object."""
        obj = in_namespace(obj, namespace) if namespace else obj
        params = {"fieldManager": field_manager, "force": "true"}
        if dry_run:
            params["dryRun"] = "All"
        response = self.request(
            "PATCH", self._object_path(obj), token, params=params, content=json.dumps(obj),
            headers={"Content-Type": "application/apply-patch+yaml"},
        )  # fmt: skip
        return self._ok(response)

    def apply_all(self, objects: Iterable[dict[str, Any]], namespace: str | None = None) -> list[dict[str, Any]]:
        return [self.apply(obj, namespace) for obj in objects]

    def create(self, obj: dict[str, Any], namespace: str | None = None, token: str | None = None) -> dict[str, Any]:
        obj = in_namespace(obj, namespace) if namespace else obj
        meta = obj["metadata"]
        path = self.path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        return self._ok(self.request("POST", path, token, json=obj))

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None, token: str | None = None
    ) -> dict[str, Any] | None:
        """The live object, or None when there is none."""
        response = self.request("GET", self.path(api_version, kind, namespace, name), token)
        if response.status_code == 404:
            return None
        return self._ok(response)

    def list_objects(
        self, api_version: str, kind: str, namespace: str | None = None, token: str | None = None
    ) -> list[Any]:
        """Every live object of a kind (in ``namespace``, or in all namespaces)."""
        return list(self._ok(self.request("GET", self.path(api_version, kind, namespace), token))["items"])

    def delete(
        self, api_version: str, kind: str, name: str, namespace: str | None = None, token: str | None = None
    ) -> bool:
        """Delete an object; False when it was not there."""
        response = self.request("DELETE", self.path(api_version, kind, namespace, name), token)
        if response.status_code == 404:
            return False
        self._ok(response)
        return True

    def patch(
        self, api_version: str, kind: str, name: str, namespace: str | None, patch: dict[str, Any],
        subresource: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        """An out-of-band change, as a JSON merge patch (``subresource="status"`` for status)."""
        path = self.path(api_version, kind, namespace, name) + (f"/{subresource}" if subresource else "")
        response = self.request(
            "PATCH", path, content=json.dumps(patch), headers={"Content-Type": "application/merge-patch+json"}
        )
        return self._ok(response)

    def create_namespace(self, name: str) -> str:
        """Create the namespace ``name`` if it does not exist yet; return its name."""
        response = self.request("POST", "/api/v1/namespaces", json={"metadata": {"name": name}})
        if response.status_code != 409:
            self._ok(response)
        return name

    # CRDs ---------------------------------------------------------------------------------

    def install_crds(self, timeout: float = 60) -> list[str]:
        """Create (or update) the CRDs of sync/live/crds and wait until each is Established."""
        names = []
        for crd in load_manifests(CRD_DIR):
            self.apply(crd)
            names.append(crd["metadata"]["name"])
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                if crd_established(self.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)):
                    pending.discard(name)
            if pending:
                time.sleep(0.1)
        if pending:
            raise TimeoutError(f"CRDs not Established after {timeout} s: {sorted(pending)}")
        # Discovery of a new group can lag Established by a moment: wait until each serves.
        for (api_version, kind), _plural in list(self._plurals.items()):
            if api_version.split("/")[0] in HEDGEHOG_GROUPS:
                wait_until(lambda v=api_version, k=kind: self.request("GET", self.path(v, k)).status_code == 200)
        return names

    # Tokens -------------------------------------------------------------------------------

    def service_account_token(self, namespace: str, name: str, rules: list[dict[str, Any]], *also: str) -> str:
        """A ServiceAccount ``name`` in ``namespace``, bound to a Role with ``rules`` there and in
        each namespace of ``also``; a token for it from the TokenRequest API."""
        self.create_namespace(namespace)
        self.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}})
        for ns in (namespace, *also):
            self.create_namespace(ns)
            self.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                        "metadata": {"name": name, "namespace": ns}, "rules": rules})  # fmt: skip
            self.apply({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": name, "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            })  # fmt: skip
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3 * 3600},
        }
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
        token = str(self._ok(self.request("POST", path, json=request))["status"]["token"])
        self._token_users[token] = f"system:serviceaccount:{namespace}:{name}"
        # RBAC reads bindings from an informer: wait until the new one is in effect.
        probe = self.path(f"{HEDGEHOG_GROUPS[0]}/v1beta1", "VPC", namespace)
        wait_until(lambda: self.request("GET", probe, token).status_code == 200, message=f"{name} cannot LIST yet")
        return token

    def readonly_token(self, namespace: str, *also: str, name: str = "fcp-observer") -> str:
        """A token that may get/list/watch the Hedgehog kinds in ``namespace`` (and ``also``), nothing else."""
        rules = [{"apiGroups": list(HEDGEHOG_GROUPS), "resources": ["*"], "verbs": ["get", "list", "watch"]}]
        return self.service_account_token(namespace, name, rules, *also)

    def readwrite_token(self, namespace: str, *also: str, name: str = "fcp-reconciler") -> str:
        """A token that may do anything to the Hedgehog kinds in ``namespace`` (and ``also``)."""
        rules = [{"apiGroups": list(HEDGEHOG_GROUPS), "resources": ["*"], "verbs": ["*"]}]
        return self.service_account_token(namespace, name, rules, *also)

    def user_of(self, token: str) -> str:
        """The user name the apiserver sees for a token this harness made."""
        return self._token_users[token]


class KubeError(Exception):
    """The apiserver answered with an error status."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.response = response
        super().__init__(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text[:500]}"
        )


# --- Helpers ------------------------------------------------------------------------------


def load_manifests(folder: Path = DEMO_DIR) -> list[dict[str, Any]]:
    """Every document of every ``*.yaml`` file in ``folder`` (sorted by file name)."""
    objects: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.yaml")):
        objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return objects


def demo_objects() -> list[dict[str, Any]]:
    """The demo fabric's manifests (sync/demo_manifests/manifests)."""
    return load_manifests(DEMO_DIR)


def in_namespace(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    """A copy of ``obj`` placed in ``namespace``."""
    copy = json.loads(json.dumps(obj))
    copy.setdefault("metadata", {})["namespace"] = namespace
    return copy


def crd_established(crd: dict[str, Any] | None) -> bool:
    conditions = (crd or {}).get("status", {}).get("conditions", [])
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def wait_until(predicate: Any, timeout: float = 30, interval: float = 0.1, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(httpx.HTTPError):
            if predicate():
                return
        time.sleep(interval)
    raise TimeoutError(message or f"condition not met within {timeout} s")
