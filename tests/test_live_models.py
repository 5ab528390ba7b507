"""A fabric's cluster settings are validated before any sync uses them; the changelist stays one query."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.models import Credential
from sync.live.validation import (
    validate_ca_bundle,
    validate_cluster_url,
    validate_ignore_rules,
    validate_kinds,
    validate_namespaces,
)
from sync.models import ClusterMode, DriftStatus, Fabric, FabricCluster
from tests.factories import make_fabric
from tests.kube_pki import unrelated_ca_pem


def credential(kind: str = Credential.Kind.BEARER_TOKEN, name: str = "k8s") -> Credential:
    made = Credential(name=name, kind=kind)
    made.set_secret("a-token-that-must-not-show")
    made.save()
    return made


@pytest.mark.parametrize(
    "url",
    ["https://10.0.0.1:6443", "https://api.fabric.example", "https://rancher.example/k8s/clusters/c-1"],
)
def test_an_https_api_server_url_is_accepted(url):
    validate_cluster_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://10.0.0.1:6443", "must be https"),
        ("https://admin:hunter2@10.0.0.1:6443", "must not carry credentials"),
        ("https://10.0.0.1:6443?token=abc", "query"),
        ("not a url at all", "https"),
    ],
)
def test_other_api_server_urls_are_refused_without_echoing_credentials(url, message):
    with pytest.raises(ValidationError, match=message) as refused:
        validate_cluster_url(url)
    assert "hunter2" not in str(refused.value)


def test_a_ca_bundle_is_empty_or_pem():
    validate_ca_bundle("")
    validate_ca_bundle(unrelated_ca_pem())
    with pytest.raises(ValidationError, match="PEM"):
        validate_ca_bundle("not a certificate")
    with pytest.raises(ValidationError, match="not a valid PEM"):
        validate_ca_bundle("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_namespaces_kinds_and_ignore_rules_are_checked():
    validate_namespaces(["default", "fabric-1"])
    for bad in ([], "default", ["Not_A_Label"], ["a", "a"]):
        with pytest.raises(ValidationError):
            validate_namespaces(bad)
    validate_kinds([])
    validate_kinds(["vpc.githedgehog.com/v1beta1/VPC", "v1/ConfigMap/configmaps"])
    with pytest.raises(ValidationError, match="unknown kind"):
        validate_kinds(["example.com/v1/Widget"])
    validate_ignore_rules([{"kind": "VPC", "jsonPointers": ["/spec/x"]}])
    with pytest.raises(ValidationError, match="jsonPointers"):
        validate_ignore_rules([{"kind": "VPC"}])


def test_a_cluster_takes_a_bearer_token_and_prunes_only_in_reconcile_mode(db):
    fabric = make_fabric()
    cluster = FabricCluster(fabric=fabric, server_url="https://10.0.0.1:6443", token=credential())
    cluster.full_clean()
    assert (cluster.mode, cluster.prune_enabled, cluster.prune_max_share) == (ClusterMode.OBSERVE, False, 0.1)
    assert cluster.namespaces == ["default"]
    assert cluster.drift_status == DriftStatus.UNKNOWN

    cluster.prune_enabled = True
    with pytest.raises(ValidationError, match="reconcile mode"):
        cluster.full_clean()
    cluster.prune_enabled = False
    cluster.token = credential(Credential.Kind.HTTPS_TOKEN, name="git-token")
    with pytest.raises(ValidationError, match="bearer-token"):
        cluster.full_clean()


def test_a_fabric_list_with_drift_is_one_query_however_many_fabrics(db):
    token = credential()
    for i in range(5):
        fabric = make_fabric(name=f"f{i}")
        if i % 2:
            FabricCluster.objects.create(
                fabric=fabric, server_url="https://10.0.0.1:6443", token=token, live_state={"big": "x" * 1000}
            )

    with CaptureQueriesContext(connection) as queries:
        shown = [
            (f.name, f.cluster.drift_status if hasattr(f, "cluster") else "-") for f in Fabric.objects.with_cluster()
        ]

    assert len(queries.captured_queries) == 1
    assert "live_state" not in queries.captured_queries[0]["sql"]
    assert shown == [("f0", "-"), ("f1", "unknown"), ("f2", "-"), ("f3", "unknown"), ("f4", "-")]
