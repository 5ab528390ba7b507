"""The real Kubernetes API server the tests run against (tests/kube.py), and the Hedgehog CRDs in it."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.kube import ADMIN_USER, KubeCluster, unavailable_reason
from tests.kube_api import CRD_DIR, demo_objects, load_manifests

VPC = "vpc.githedgehog.com/v1beta1"
WIRING = "wiring.githedgehog.com/v1beta1"
CRD = "apiextensions.k8s.io/v1"

HEDGEHOG_KINDS = {
    ("vpc.githedgehog.com", "VPC", "vpcs"),
    ("vpc.githedgehog.com", "External", "externals"),
    ("vpc.githedgehog.com", "ExternalAttachment", "externalattachments"),
    ("vpc.githedgehog.com", "ExternalPeering", "externalpeerings"),
    ("vpc.githedgehog.com", "IPv4Namespace", "ipv4namespaces"),
    ("vpc.githedgehog.com", "VPCAttachment", "vpcattachments"),
    ("vpc.githedgehog.com", "VPCPeering", "vpcpeerings"),
    ("wiring.githedgehog.com", "Connection", "connections"),
    ("wiring.githedgehog.com", "Server", "servers"),
    ("wiring.githedgehog.com", "Switch", "switches"),
    ("wiring.githedgehog.com", "SwitchGroup", "switchgroups"),
    ("wiring.githedgehog.com", "VLANNamespace", "vlannamespaces"),
}


def contains(live: object, desired: object) -> bool:
    """True when every field ``desired`` sets has the same value in ``live`` (extra live fields allowed)."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and contains(live[k], v) for k, v in desired.items())
    return live == desired


def switch(name: str, **spec: object) -> dict:
    return {"apiVersion": WIRING, "kind": "Switch", "metadata": {"name": name}, "spec": {"role": "spine", **spec}}


def test_without_the_binary_the_harness_says_how_to_build_it(monkeypatch):
    monkeypatch.setenv("KUBE_APISERVER", "/nonexistent/kube-apiserver")
    assert "bash scripts/kube-apiserver.sh build" in (unavailable_reason() or "")


def test_the_cluster_answers_over_tls_verified_with_its_ca(kube_cluster: KubeCluster):
    version = kube_cluster.request("GET", "/version").json()
    assert version["gitVersion"] == "v1.20.2"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{kube_cluster.base_url}/version", verify=True)


def test_a_wrong_token_is_refused_with_401(kube_cluster: KubeCluster):
    assert kube_cluster.request("GET", kube_cluster.path(VPC, "VPC"), token="not-a-token").status_code == 401


def test_every_hedgehog_kind_has_an_established_namespaced_crd_with_a_status_subresource(kube_cluster: KubeCluster):
    names = [crd["metadata"]["name"] for crd in load_manifests(CRD_DIR)]
    crds = [crd for name in names if (crd := kube_cluster.get(CRD, "CustomResourceDefinition", name))]
    assert len(crds) == len(names) == 12
    assert {
        (c["spec"]["group"], c["spec"]["names"]["kind"], c["spec"]["names"]["plural"]) for c in crds
    } == HEDGEHOG_KINDS
    for crd in crds:
        assert crd["spec"]["scope"] == "Namespaced"
        assert [v["name"] for v in crd["spec"]["versions"]] == ["v1beta1"]
        assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True", crd["metadata"]["name"]
        assert conditions.get("NonStructuralSchema", "False") == "False", crd["metadata"]["name"]


def test_the_demo_manifests_apply_server_side_and_come_back_whole_with_the_server_defaults(
    kube_cluster: KubeCluster, kube_namespace: str
):
    objects = demo_objects()
    assert len(objects) == 18
    assert {o["metadata"]["namespace"] for o in objects} == {"default"}

    for desired in objects:
        live = kube_cluster.apply(desired, namespace=kube_namespace)
        # Nothing pruned: every field the manifest sets is in the schema and comes back.
        assert contains(live["spec"], desired["spec"]), desired["metadata"]["name"]
        # The apiserver records no manager for an empty field set (the SwitchGroup's `spec: {}`).
        managers = {(m["manager"], m["operation"]) for m in live["metadata"].get("managedFields", [])}
        assert ("fcp-test", "Apply") in managers or desired["spec"] == {}

    vpc = kube_cluster.get(VPC, "VPC", "vpc-web", kube_namespace)
    assert vpc is not None
    assert "ipv4Namespace" not in next(o for o in objects if o["metadata"]["name"] == "vpc-web")["spec"]
    assert (vpc["spec"]["ipv4Namespace"], vpc["spec"]["vlanNamespace"]) == ("default", "default")
    leaf = kube_cluster.get(WIRING, "Switch", "leaf-01", kube_namespace)
    assert leaf is not None
    assert leaf["spec"]["vlanNamespaces"] == ["default"]
    assert len(kube_cluster.list_objects(WIRING, "Connection", kube_namespace)) == 5


def test_a_dry_run_apply_shows_the_result_without_writing_it(kube_cluster: KubeCluster, kube_namespace: str):
    kube_cluster.apply(switch("spine-09", asn=65100), namespace=kube_namespace)

    preview = kube_cluster.apply(switch("spine-09", asn=65200), namespace=kube_namespace, dry_run=True)

    assert preview["spec"]["asn"] == 65200
    live = kube_cluster.get(WIRING, "Switch", "spine-09", kube_namespace)
    assert live is not None
    assert live["spec"]["asn"] == 65100


def test_the_schema_refuses_a_switch_with_an_unknown_role(kube_cluster: KubeCluster, kube_namespace: str):
    response = kube_cluster.request(
        "POST", kube_cluster.path(WIRING, "Switch", kube_namespace), json=switch("bad", role="router")
    )
    assert response.status_code == 422
    assert "spec.role" in response.text


def test_status_is_written_only_through_its_subresource(kube_cluster: KubeCluster, kube_namespace: str):
    kube_cluster.apply(switch("spine-08"), namespace=kube_namespace)

    kube_cluster.patch(WIRING, "Switch", "spine-08", kube_namespace, {"status": {"ignored": True}})
    after_main = kube_cluster.get(WIRING, "Switch", "spine-08", kube_namespace)
    kube_cluster.patch(WIRING, "Switch", "spine-08", kube_namespace, {"status": {"up": True}}, subresource="status")
    after_status = kube_cluster.get(WIRING, "Switch", "spine-08", kube_namespace)

    assert after_main is not None
    assert "status" not in after_main
    assert after_status is not None
    assert after_status["status"] == {"up": True}


def test_a_read_only_token_can_list_and_watch_but_gets_403_on_any_write(kube_cluster: KubeCluster, kube_namespace: str):
    kube_cluster.apply(switch("spine-07"), namespace=kube_namespace)
    token = kube_cluster.readonly_token(kube_namespace)
    collection = kube_cluster.path(WIRING, "Switch", kube_namespace)

    listed = kube_cluster.request("GET", collection, token)
    watched = kube_cluster.request("GET", collection, token, params={"watch": "1", "timeoutSeconds": "1"})
    deleted = kube_cluster.request("DELETE", f"{collection}/spine-07", token)
    applied = kube_cluster.request(
        "PATCH", f"{collection}/spine-07", token, params={"fieldManager": "fcp-test"},
        content=json.dumps({"apiVersion": WIRING, "kind": "Switch", "metadata": {"name": "spine-07"}}),
        headers={"Content-Type": "application/apply-patch+yaml"},
    )  # fmt: skip
    elsewhere = kube_cluster.request("GET", kube_cluster.path(WIRING, "Switch", "default"), token)

    assert listed.status_code == 200
    assert [item["metadata"]["name"] for item in listed.json()["items"]] == ["spine-07"]
    assert watched.status_code == 200
    assert (deleted.status_code, applied.status_code, elsewhere.status_code) == (403, 403, 403)
    assert kube_cluster.get(WIRING, "Switch", "spine-07", kube_namespace) is not None


def test_the_audit_log_counts_lists_and_watches_per_user_and_resource(kube_cluster: KubeCluster, kube_namespace: str):
    token = kube_cluster.readonly_token(kube_namespace, name="counted")
    mark = kube_cluster.audit_mark()

    kube_cluster.list_objects(VPC, "VPC", kube_namespace, token=token)
    kube_cluster.list_objects(WIRING, "Switch", kube_namespace, token=token)
    kube_cluster.request(
        "GET", kube_cluster.path(VPC, "VPC", kube_namespace), token, params={"watch": "1", "timeoutSeconds": "1"}
    )
    kube_cluster.list_objects(VPC, "VPC", kube_namespace)  # the admin's: not this user's

    assert kube_cluster.audit_counts(since=mark, token=token) == {
        ("list", "vpcs"): 1,
        ("list", "switches"): 1,
        ("watch", "vpcs"): 1,
    }
    assert kube_cluster.audit_counts(since=mark, token=token, group="vpc.githedgehog.com") == {
        ("list", "vpcs"): 1,
        ("watch", "vpcs"): 1,
    }
    assert kube_cluster.audit_counts(since=mark, user=ADMIN_USER)[("list", "vpcs")] == 1


def test_the_apiserver_stops_and_starts_again_on_the_same_address_with_its_objects(
    kube_cluster: KubeCluster, kube_namespace: str
):
    kube_cluster.apply(switch("spine-06"), namespace=kube_namespace)
    base_url = kube_cluster.base_url

    with kube_cluster.apiserver_stopped(graceful=False):
        assert not kube_cluster.apiserver_running()
        with pytest.raises(httpx.ConnectError):
            kube_cluster.request("GET", "/version")

    assert kube_cluster.base_url == base_url
    assert kube_cluster.get(WIRING, "Switch", "spine-06", kube_namespace) is not None
