"""The Kubernetes client and the live-state reader against a real kube-apiserver (tests/kube.py)."""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core.breaker_core import State
from core.credentials import Secret
from sync.live.client import (
    ClusterUnavailable,
    Gone,
    KubeClient,
    KubeConflict,
    KubeError,
    KubeForbidden,
    KubeInvalid,
    KubeNotFound,
    KubePermanentError,
    KubeTLSError,
    KubeTransientError,
    KubeUnauthorized,
    breaker_config,
    ssl_context,
)
from sync.live.drift import DRIFTED, IN_SYNC, MISSING, UNMANAGED, FieldDiff, compare
from sync.live.kinds import DEFAULT_KINDS, VPC_GROUP, Kind, find_kind
from sync.live.state import collections_for, read_live
from tests.kube import KubeCluster
from tests.kube_api import demo_objects, in_namespace
from tests.kube_pki import unrelated_ca_pem

V = "v1beta1"
# The quiet window of a watch that must see changes made just before it: generous, so a
# starved test machine cannot push them into the next read.
EXPECTING = 0.5
VPC_KIND: Kind = next(k for k in DEFAULT_KINDS if k.kind == "VPC")


def vpc(name: str, vlan: int = 1001, **spec: Any) -> dict[str, Any]:
    subnets = {"default": {"subnet": f"10.{vlan % 250}.0.0/24", "vlan": vlan}}
    return {
        "apiVersion": f"{VPC_GROUP}/{V}",
        "kind": "VPC",
        "metadata": {"name": name},
        "spec": {"subnets": subnets, **spec},
    }


def set_vlan(cluster: KubeCluster, name: str, namespace: str, subnet: str, vlan: int) -> None:
    """An out-of-band change of one VPC subnet's VLAN (a merge patch, another client)."""
    cluster.patch(f"{VPC_GROUP}/{V}", "VPC", name, namespace, {"spec": {"subnets": {subnet: {"vlan": vlan}}}})


def make_client(cluster: KubeCluster, token: str | Secret | None = None, **kwargs: Any) -> KubeClient:
    return KubeClient(cluster.base_url, token=token or cluster.admin_token, ca_pem=cluster.ca_pem, **kwargs)


@pytest.fixture
def kube(kube_cluster: KubeCluster) -> Iterator[KubeClient]:
    """A client with the admin token; the cluster's shared breaker starts and ends closed."""
    client = make_client(kube_cluster)
    client.breaker.reset()
    yield client
    client.breaker.reset()
    client.close()


def assert_no_token(token: str, *texts: str) -> None:
    for text in texts:
        assert token not in text
        assert token[:12] not in text


def error_texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc)), repr(exc.__dict__)]


# --- reads ---------------------------------------------------------------------------------------


def test_a_list_reads_every_page_with_a_small_limit(kube_cluster, kube, kube_namespace) -> None:
    for i in range(7):
        kube_cluster.apply(vpc(f"vpc-{i}", 1000 + i), kube_namespace)
    mark = kube_cluster.audit_mark()
    result = kube.list(VPC_GROUP, V, "vpcs", kube_namespace, limit=3)
    assert sorted(o["metadata"]["name"] for o in result.items) == [f"vpc-{i}" for i in range(7)]
    assert all(o["kind"] == "VPC" and o["apiVersion"] == f"{VPC_GROUP}/{V}" for o in result.items)
    assert result.pages == 3
    assert int(result.resource_version) > 0
    assert kube_cluster.audit_counts(since=mark, group=VPC_GROUP)[("list", "vpcs")] == 3


def test_a_watch_after_an_out_of_band_change_sees_it_modified_and_then_nothing(
    kube_cluster, kube, kube_namespace
) -> None:
    kube_cluster.apply(vpc("web", 1001), kube_namespace)
    listed = kube.list(VPC_GROUP, V, "vpcs", kube_namespace)
    set_vlan(kube_cluster, "web", kube_namespace, "default", 1999)
    changes = kube.watch_changes(VPC_GROUP, V, "vpcs", kube_namespace, listed.resource_version, idle_seconds=EXPECTING)
    assert [(e.type, e.object["spec"]["subnets"]["default"]["vlan"]) for e in changes.events] == [("MODIFIED", 1999)]
    assert changes.resource_version == changes.events[-1].resource_version != listed.resource_version
    started = time.monotonic()
    quiet = kube.watch_changes(VPC_GROUP, V, "vpcs", kube_namespace, changes.resource_version, timeout_seconds=10)
    assert quiet.events == []
    assert quiet.resource_version == changes.resource_version
    assert time.monotonic() - started < 3  # the quiet stream ends the watch, not the server's 10 s


def test_a_watch_sees_objects_added_and_deleted(kube_cluster, kube, kube_namespace) -> None:
    listed = kube.list(VPC_GROUP, V, "vpcs", kube_namespace)
    kube_cluster.apply(vpc("new", 1005), kube_namespace)
    kube_cluster.delete(f"{VPC_GROUP}/{V}", "VPC", "new", kube_namespace)
    changes = kube.watch_changes(VPC_GROUP, V, "vpcs", kube_namespace, listed.resource_version, idle_seconds=EXPECTING)
    assert [(e.type, e.object["metadata"]["name"]) for e in changes.events] == [("ADDED", "new"), ("DELETED", "new")]


def test_a_watch_from_a_resource_version_too_old_raises_gone(kube, kube_namespace) -> None:
    with pytest.raises(Gone, match="too old"):
        kube.watch_changes(VPC_GROUP, V, "vpcs", kube_namespace, "1")


def test_a_kind_the_cluster_does_not_serve_is_not_found(kube, kube_namespace) -> None:
    with pytest.raises(KubeNotFound, match="404"):
        kube.list("example.com", "v1", "widgets", kube_namespace)
    assert kube.get(VPC_GROUP, V, "vpcs", kube_namespace, "nothing-here") is None


# --- writes ---------------------------------------------------------------------------------------


def test_a_dry_run_apply_returns_the_defaulted_object_without_writing_it(kube_cluster, kube, kube_namespace) -> None:
    mark = kube_cluster.audit_mark()
    would_be = kube.apply(vpc("dry"), field_manager="fcp", namespace=kube_namespace, dry_run=True)
    assert would_be["metadata"]["namespace"] == kube_namespace
    assert would_be["spec"]["ipv4Namespace"] == "default"  # a default of the CRD's schema
    assert kube.get(VPC_GROUP, V, "vpcs", kube_namespace, "dry") is None
    assert kube_cluster.audit_counts(since=mark, group=VPC_GROUP)[("patch", "vpcs")] == 1


def test_apply_writes_with_our_field_manager_and_conflicts_unless_forced(kube_cluster, kube, kube_namespace) -> None:
    live = kube.apply(vpc("web", 1001), field_manager="fcp", namespace=kube_namespace)
    assert live["metadata"]["uid"]
    assert {m["manager"] for m in live["metadata"]["managedFields"]} == {"fcp"}
    kube_cluster.apply(vpc("web", 1777), kube_namespace)  # another manager takes the VLAN
    with pytest.raises(KubeConflict, match="conflict"):
        kube.apply(vpc("web", 1001), field_manager="fcp", namespace=kube_namespace)
    forced = kube.apply(vpc("web", 1001), field_manager="fcp", namespace=kube_namespace, force=True)
    assert forced["spec"]["subnets"]["default"]["vlan"] == 1001


def test_apply_leaves_out_server_metadata_and_status(kube, kube_namespace) -> None:
    doc = vpc("exported")
    doc["metadata"].update(resourceVersion="1", uid="stale", creationTimestamp=None, managedFields=[])
    doc["status"] = {"state": "made up"}
    live = kube.apply(doc, field_manager="fcp", namespace=kube_namespace)
    assert live["metadata"]["uid"] != "stale"
    assert "status" not in live or live["status"] != {"state": "made up"}


def test_delete_removes_only_the_object_with_that_uid(kube_cluster, kube, kube_namespace) -> None:
    first = kube.apply(vpc("gone"), field_manager="fcp", namespace=kube_namespace)
    with pytest.raises(KubeConflict):
        kube.delete(VPC_GROUP, V, "vpcs", kube_namespace, "gone", uid="not-its-uid")
    assert kube.delete(VPC_GROUP, V, "vpcs", kube_namespace, "gone", uid=first["metadata"]["uid"], dry_run=True)
    assert kube.get(VPC_GROUP, V, "vpcs", kube_namespace, "gone") is not None
    assert kube.delete(VPC_GROUP, V, "vpcs", kube_namespace, "gone", uid=first["metadata"]["uid"])
    assert kube.get(VPC_GROUP, V, "vpcs", kube_namespace, "gone") is None
    assert kube.delete(VPC_GROUP, V, "vpcs", kube_namespace, "gone") is False


# --- access and credentials --------------------------------------------------------------------------


def test_a_read_only_token_reads_and_every_write_is_forbidden(kube_cluster, kube_namespace) -> None:
    kube_cluster.apply(vpc("web"), kube_namespace)
    token = kube_cluster.readonly_token(kube_namespace)
    with make_client(kube_cluster, Secret(token)) as reader:
        assert [o["metadata"]["name"] for o in reader.list(VPC_GROUP, V, "vpcs", kube_namespace).items] == ["web"]
        with pytest.raises(KubeForbidden, match="forbidden") as applied:
            reader.apply(vpc("web", 1999), field_manager="fcp", namespace=kube_namespace, dry_run=True)
        with pytest.raises(KubePermanentError, match="403"):
            reader.delete(VPC_GROUP, V, "vpcs", kube_namespace, "web")
        report = reader.check_access([VPC_KIND], [kube_namespace], verbs=("list", "watch", "patch"))
        assert report.server_version.startswith("v1.")
        where = f"vpcs.{VPC_GROUP} in {kube_namespace}"
        assert report.allowed == [f"list {where}", f"watch {where}"]
        assert report.denied == [f"patch {where}"]
        assert not report.ok
    assert_no_token(token, *error_texts(applied.value))
    unchanged = kube_cluster.get(f"{VPC_GROUP}/{V}", "VPC", "web", kube_namespace)
    assert unchanged is not None
    assert unchanged["spec"]["subnets"]["default"]["vlan"] == 1001


def test_a_wrong_token_is_a_permanent_readable_error_without_the_token(kube_cluster, kube, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + "x" * 40
    with make_client(kube_cluster, wrong) as client, pytest.raises(KubeUnauthorized) as raised:
        client.check_access()
    assert "rejected the bearer token (401" in str(raised.value)
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None
    assert_no_token(wrong, *error_texts(raised.value), caplog.text, repr(client))
    assert kube.breaker.metrics.failed_calls == 0  # the server answered: not its failure


def test_a_wrong_ca_is_a_permanent_readable_error_that_does_not_open_the_breaker(kube_cluster, kube, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    client = KubeClient(kube_cluster.base_url, token=kube_cluster.admin_token, ca_pem=unrelated_ca_pem())
    for _ in range(6):
        with pytest.raises(KubeTLSError, match="certificate verify failed") as raised:
            client.version()
    assert "check the cluster's CA bundle" in str(raised.value)
    assert raised.value.__context__ is None
    assert_no_token(kube_cluster.admin_token, *error_texts(raised.value), caplog.text)
    assert client.breaker.name == kube.breaker.name == f"k8s:127.0.0.1:{kube_cluster.port}"
    metrics = kube.breaker.metrics
    assert (metrics.state, metrics.failed_calls) == (State.CLOSED, 0)
    client.close()


def test_a_ca_bundle_that_is_not_pem_is_refused_before_any_call() -> None:
    with pytest.raises(KubeTLSError, match="not a valid PEM"):
        ssl_context("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")


def test_only_https_urls_without_credentials_are_accepted() -> None:
    for url in ("http://127.0.0.1:6443", "https://user:pw@127.0.0.1:6443", "https://127.0.0.1:6443/?token=x"):
        with pytest.raises(KubePermanentError, match="API server URL must") as raised:
            KubeClient(url, token="t")
        assert "pw" not in str(raised.value)


def test_the_token_never_appears_in_a_repr_a_log_or_a_result(kube_cluster, kube, kube_namespace, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    secret = Secret(kube_cluster.admin_token)
    with make_client(kube_cluster, secret) as client:
        kube_cluster.apply(vpc("web"), kube_namespace)
        results: list[Any] = [
            client.version(),
            client.list(VPC_GROUP, V, "vpcs", kube_namespace),
            client.watch_changes(VPC_GROUP, V, "vpcs", kube_namespace, "0", idle_seconds=0.2),
            client.check_access([VPC_KIND], [kube_namespace]),
            client.apply(vpc("web"), field_manager="fcp", namespace=kube_namespace, dry_run=True),
        ]
        texts = [repr(client), repr(client.__dict__), repr(results), json.dumps(results, default=repr), caplog.text]
        assert_no_token(kube_cluster.admin_token, *texts)


# --- an unreachable cluster ----------------------------------------------------------------------------


def test_a_stopped_apiserver_is_transient_then_the_breaker_rejects_fast_then_it_recovers(kube_cluster) -> None:
    config = breaker_config()
    fast = type(config)(**{**config.__dict__, "wait_seconds": 2.0, "max_wait_seconds": 2.0})
    client = make_client(kube_cluster, timeout=2, deadline=3, max_attempts=2, backoff_base=0.01, breaker=fast)
    client.breaker.reset()
    try:
        with kube_cluster.apiserver_stopped(graceful=False):
            for _ in range(fast.consecutive_failures):
                with pytest.raises(KubeTransientError, match="could not connect"):
                    client.version()
            started = time.monotonic()
            with pytest.raises(ClusterUnavailable, match=r"cluster unreachable \(breaker open until ") as raised:
                client.list(VPC_GROUP, V, "vpcs", "default")
            assert time.monotonic() - started < 0.5
            assert raised.value.retry_at is not None
            assert not isinstance(raised.value, KubeTransientError | KubePermanentError)
        deadline = time.monotonic() + 30
        while True:  # back: the breaker lets trial calls through after its wait, and closes
            try:
                assert client.version()["gitVersion"].startswith("v1.")
                break
            except ClusterUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.5)
        for _ in range(fast.success_threshold):
            client.version()
        assert client.breaker.metrics.state is State.CLOSED
        assert client.latency().calls >= fast.consecutive_failures
    finally:
        client.breaker.reset()
        client.close()


# --- the live-state reader -------------------------------------------------------------------------------


def test_the_first_read_lists_every_collection_and_an_unchanged_cluster_is_only_watched(
    kube_cluster, kube, kube_namespace
) -> None:
    for i in range(5):
        kube_cluster.apply(vpc(f"vpc-{i}", 1000 + i), kube_namespace)
    collections = collections_for(DEFAULT_KINDS, [kube_namespace])
    mark = kube_cluster.audit_mark()
    first = read_live(kube, DEFAULT_KINDS, [kube_namespace], None, now=1000.0, page_size=2)
    assert first.changed
    assert first.complete
    assert (first.stats.lists, first.stats.list_pages, first.stats.watches) == (12, 14, 0)
    assert sorted(o["metadata"]["name"] for o in first.objects()) == [f"vpc-{i}" for i in range(5)]
    assert all("managedFields" not in o["metadata"] for o in first.objects())
    stored = json.loads(json.dumps(first.state))  # what the database keeps

    mark = kube_cluster.audit_mark()
    started = time.monotonic()
    second = read_live(kube, DEFAULT_KINDS, [kube_namespace], stored, now=1060.0)
    elapsed = time.monotonic() - started
    assert not second.changed
    assert (second.stats.lists, second.stats.watches, second.stats.events) == (0, len(collections), 0)
    counts = kube_cluster.audit_counts(since=mark)
    assert sum(n for (verb, _), n in counts.items() if verb == "list") == 0
    assert sum(n for (verb, _), n in counts.items() if verb == "watch") == len(collections)
    assert second.state == stored
    assert elapsed < 2, elapsed  # a probe, then 12 quiet watches at once


def test_a_later_read_applies_changes_additions_and_deletions(kube_cluster, kube, kube_namespace) -> None:
    kube_cluster.apply(vpc("a", 1001), kube_namespace)
    kube_cluster.apply(vpc("b", 1002), kube_namespace)
    kinds = [VPC_KIND]
    state = read_live(kube, kinds, [kube_namespace], None, now=0.0).state
    set_vlan(kube_cluster, "a", kube_namespace, "default", 1999)
    kube_cluster.delete(f"{VPC_GROUP}/{V}", "VPC", "b", kube_namespace)
    kube_cluster.apply(vpc("c", 1003), kube_namespace)
    later = read_live(kube, kinds, [kube_namespace], state, now=10.0, idle_seconds=EXPECTING)
    assert later.changed
    assert (later.stats.lists, later.stats.watches, later.stats.events) == (0, 1, 3)
    live = {o["metadata"]["name"]: o for o in later.objects()}
    assert sorted(live) == ["a", "c"]
    assert live["a"]["spec"]["subnets"]["default"]["vlan"] == 1999
    # The same as a fresh full read.
    fresh = read_live(kube, kinds, [kube_namespace], None, now=10.0)
    assert fresh.objects() == later.objects()


def test_a_resource_version_too_old_relists_that_collection(kube_cluster, kube, kube_namespace) -> None:
    kube_cluster.apply(vpc("a"), kube_namespace)
    state = read_live(kube, [VPC_KIND], [kube_namespace], None, now=0.0).state
    (entry,) = state["collections"].values()
    entry["resource_version"] = "1"  # compacted long ago
    again = read_live(kube, [VPC_KIND], [kube_namespace], state, now=1.0)
    assert (again.stats.relists, again.stats.lists, again.stats.watches) == (1, 1, 0)
    assert [o["metadata"]["name"] for o in again.objects()] == ["a"]
    assert int(next(iter(again.state["collections"].values()))["resource_version"]) > 1


def test_a_full_list_older_than_relist_after_is_read_again(kube, kube_namespace) -> None:
    state = read_live(kube, [VPC_KIND], [kube_namespace], None, now=0.0).state
    assert read_live(kube, [VPC_KIND], [kube_namespace], state, now=100.0, relist_after=3600).stats.lists == 0
    assert read_live(kube, [VPC_KIND], [kube_namespace], state, now=4000.0, relist_after=3600).stats.lists == 1


def test_another_server_or_other_kinds_start_from_a_fresh_state(kube, kube_namespace) -> None:
    state = read_live(kube, [VPC_KIND], [kube_namespace], None, now=0.0).state
    moved = {**state, "server": "https://10.0.0.1:6443"}
    assert read_live(kube, [VPC_KIND], [kube_namespace], moved, now=1.0).stats.lists == 1
    switch = find_kind("wiring.githedgehog.com/v1beta1", "Switch")
    assert switch is not None
    both = read_live(kube, [VPC_KIND, switch], [kube_namespace], state, now=1.0)
    assert (both.stats.lists, both.stats.watches) == (1, 1)
    fewer = read_live(kube, [switch], [kube_namespace], both.state, now=2.0)
    assert fewer.changed
    assert list(fewer.state["collections"]) == [f"wiring.githedgehog.com/{V}/switches@{kube_namespace}"]


def test_a_forbidden_or_missing_kind_is_reported_and_the_rest_is_read(kube_cluster, kube_namespace) -> None:
    token = kube_cluster.readonly_token(kube_namespace, name="vpc-only-reader")
    widget = Kind("example.com", "v1", "Widget", "widgets")
    with make_client(kube_cluster, token) as reader:
        read = read_live(reader, [VPC_KIND, widget], [kube_namespace, "kube-system"], None, now=0.0)
    assert not read.complete
    assert sorted(read.errors) == [
        "example.com/v1/widgets@kube-system",
        f"example.com/v1/widgets@{kube_namespace}",
        f"{VPC_GROUP}/{V}/vpcs@kube-system",
    ]
    assert "403" in read.errors[f"{VPC_GROUP}/{V}/vpcs@kube-system"]
    assert list(read.state["collections"]) == [f"{VPC_GROUP}/{V}/vpcs@{kube_namespace}"]


def test_a_refused_token_stops_the_read_after_one_call(kube_cluster, kube_namespace) -> None:
    mark = kube_cluster.audit_mark()
    with make_client(kube_cluster, "not-a-token-" + "y" * 30) as client, pytest.raises(KubeUnauthorized):
        read_live(client, DEFAULT_KINDS, [kube_namespace], None, now=0.0)
    assert sum(kube_cluster.audit_counts(since=mark).values()) <= 1


# --- drift against the real API server's defaults -----------------------------------------------------------


def test_the_demo_fabric_applied_as_is_has_no_drift_despite_server_defaults_and_status(
    kube_cluster, kube, kube_namespace
) -> None:
    desired = [in_namespace(doc, kube_namespace) for doc in demo_objects()]
    for doc in desired:
        kube.apply(doc, field_manager="fcp")
    vpc_web = next(d for d in desired if d["kind"] == "VPC")["metadata"]["name"]
    kube_cluster.patch(f"{VPC_GROUP}/{V}", "VPC", vpc_web, kube_namespace, {"status": {"state": "ready"}}, "status")
    read = read_live(kube, DEFAULT_KINDS, [kube_namespace], None, now=0.0)
    report = compare(desired, read.objects(), kinds=DEFAULT_KINDS, namespaces=[kube_namespace])
    assert report.counts == {IN_SYNC: len(desired), DRIFTED: 0, MISSING: 0, UNMANAGED: 0}, report.to_dict()
    live_web = next(o for o in read.objects() if o["metadata"]["name"] == vpc_web)
    assert live_web["spec"]["ipv4Namespace"] == "default"  # defaulted, and not drift

    # Out of band: one field changed, one object deleted, one added.
    set_vlan(kube_cluster, vpc_web, kube_namespace, "frontend", 1999)
    server = next(d for d in desired if d["kind"] == "Server")
    kube_cluster.delete(server["apiVersion"], "Server", server["metadata"]["name"], kube_namespace)
    kube_cluster.apply(vpc("stray", 1444), kube_namespace)
    read = read_live(kube, DEFAULT_KINDS, [kube_namespace], read.state, now=60.0, idle_seconds=EXPECTING)
    assert read.stats.lists == 0
    report = compare(desired, read.objects(), kinds=DEFAULT_KINDS, namespaces=[kube_namespace])
    assert report.counts == {IN_SYNC: len(desired) - 2, DRIFTED: 1, MISSING: 1, UNMANAGED: 1}
    (drifted,) = report.of_state(DRIFTED)
    assert (drifted.key.name, drifted.diffs) == (vpc_web, (FieldDiff("/spec/subnets/frontend/vlan", 1001, 1999),))
    assert [o.key.name for o in report.of_state(MISSING)] == [server["metadata"]["name"]]
    assert [o.key.name for o in report.of_state(UNMANAGED)] == ["stray"]


def test_every_error_is_a_kube_error() -> None:
    for cls in (KubeTransientError, KubePermanentError, Gone, ClusterUnavailable, KubeTLSError, KubeForbidden):
        assert issubclass(cls, KubeError)


# --- classification of answers (a scripted transport; the cluster tests above cover real ones) ---------------


def scripted(*answers: tuple[int, Any]) -> tuple[KubeClient, list[httpx.Request]]:
    """A client whose calls get ``answers`` in turn (the last repeats); it records the requests."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        status, body = answers[min(len(seen), len(answers) - 1)]
        seen.append(request)
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, content=content)

    client = KubeClient(
        "https://cluster.example:6443",
        token="scripted-token-0123456789",
        transport=httpx.MockTransport(handler),
        shared_breakers=False,
        backoff_base=0.001,
        sleep=lambda _: None,
    )
    return client, seen


def status(code: int, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (400, KubeInvalid),
        (401, KubeUnauthorized),
        (403, KubeForbidden),
        (404, KubeNotFound),
        (409, KubeConflict),
        (410, Gone),
        (422, KubeInvalid),
        (429, KubeTransientError),
        (500, KubeTransientError),
        (503, KubeTransientError),
    ],
)
def test_each_answer_status_is_classified(code: int, error: type[KubeError]) -> None:
    client, _ = scripted((code, status(code, "the server's words")))
    with pytest.raises(error) as raised:
        client.version()
    assert raised.value.status == code
    assert "scripted-token" not in str(raised.value)


def test_a_503_is_retried_within_the_deadline_and_then_transient() -> None:
    client, seen = scripted((503, status(503, "busy")), (200, {"gitVersion": "v1.20.2"}))
    assert client.version()["gitVersion"] == "v1.20.2"
    assert len(seen) == 2
    assert all(r.headers["Authorization"] == "Bearer scripted-token-0123456789" for r in seen)
    assert all(r.headers["User-Agent"] == "fabric-control-plane" for r in seen)


def test_a_watch_error_event_other_than_410_is_transient() -> None:
    event = {"type": "ERROR", "object": status(500, "etcd is unhappy")}
    client, _ = scripted((200, json.dumps(event).encode() + b"\n"))
    with pytest.raises(KubeTransientError, match="etcd is unhappy"):
        client.watch_changes(VPC_GROUP, V, "vpcs", "fab", "10")


def test_a_list_whose_continuation_expired_starts_over_once() -> None:
    page1 = {"metadata": {"resourceVersion": "5", "continue": "c1"}, "items": [{"metadata": {"name": "a"}}]}
    page2 = {"metadata": {"resourceVersion": "9"}, "items": [{"metadata": {"name": "b"}}]}
    client, seen = scripted((200, page1), (410, status(410, "continue expired")), (200, page2))
    result = client.list(VPC_GROUP, V, "vpcs", "fab", limit=1)
    assert [o["metadata"]["name"] for o in result.items] == ["b"]
    assert result.resource_version == "9"
    assert [r.url.params.get("continue") for r in seen] == [None, "c1", None]


def test_list_items_of_built_in_kinds_get_their_kind() -> None:
    page = {
        "apiVersion": "v1",
        "kind": "ConfigMapList",
        "metadata": {"resourceVersion": "3"},
        "items": [{"metadata": {"name": "c"}}],
    }
    client, seen = scripted((200, page))
    (item,) = client.list("", "v1", "configmaps", "fab").items
    assert (item["apiVersion"], item["kind"]) == ("v1", "ConfigMap")
    assert seen[0].url.path == "/api/v1/namespaces/fab/configmaps"
