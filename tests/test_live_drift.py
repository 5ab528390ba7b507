"""Drift between desired (Git) and live (cluster) objects: the pure comparison."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest

from bench.drift import desired_object, live_object
from sync.live.drift import (
    DRIFTED,
    IN_SYNC,
    MISSING,
    OUT_OF_SYNC,
    UNMANAGED,
    FieldDiff,
    IgnoreRule,
    ObjectKey,
    compare,
    diff_object,
    format_pointer,
    parse_ignore_rules,
    parse_pointer,
)
from sync.live.kinds import DEFAULT_KINDS, Kind, find_kind, parse_kinds

NS = "fab"


def vpc(name: str = "vpc-1", namespace: str | None = NS, **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "vpc.githedgehog.com/v1beta1",
        "kind": "VPC",
        "metadata": metadata,
        "spec": spec or {"ipv4Namespace": "default", "subnets": {"default": {"subnet": "10.0.1.0/24", "vlan": 1001}}},
    }


def as_live(doc: dict[str, Any], **spec_defaults: Any) -> dict[str, Any]:
    """What the API server returns for ``doc``: its metadata, defaults and a status."""
    obj = copy.deepcopy(doc)
    obj["metadata"].setdefault("namespace", NS)
    obj["metadata"].update(
        uid="5f0c-uid",
        resourceVersion="4711",
        generation=3,
        creationTimestamp="2026-11-22T06:34:23Z",
        managedFields=[{"manager": "fcp", "operation": "Apply"}],
        annotations={**obj["metadata"].get("annotations", {}), "server.example/added": "x"},
        labels={**obj["metadata"].get("labels", {}), "controller.example/owned": "y"},
    )
    obj["spec"].update(spec_defaults)
    obj["status"] = {"state": "ready", "applied": {"gen": 3}}
    return obj


def one(report, state: str | None = None):
    assert len(report.objects) == 1
    obj = report.objects[0]
    if state:
        assert obj.state == state, obj
    return obj


# --- in sync -----------------------------------------------------------------------------------


def test_an_object_the_server_only_added_metadata_defaults_and_status_to_is_in_sync() -> None:
    doc = vpc()
    report = compare([doc], [as_live(doc, mode="l2vni", defaultIsolated=False)], namespaces=[NS])
    assert one(report, IN_SYNC).diffs == ()
    assert report.status == IN_SYNC
    assert report.counts == {IN_SYNC: 1, DRIFTED: 0, MISSING: 0, UNMANAGED: 0}


def test_fields_defaulted_inside_list_elements_are_not_drift() -> None:
    doc = vpc(links=[{"switch": {"port": "leaf-1/E1/1"}}, {"switch": {"port": "leaf-2/E1/1"}}])
    live = as_live(doc)
    for link in live["spec"]["links"]:
        link["switch"]["speed"] = "auto"
    assert one(compare([doc], [live]), IN_SYNC)


def test_metadata_the_document_sets_besides_labels_and_annotations_is_never_compared() -> None:
    doc = vpc()
    doc["metadata"].update(creationTimestamp=None, uid="from-an-export", resourceVersion="1", generation=9)
    assert one(compare([doc], [as_live(doc)]), IN_SYNC)


def test_a_status_written_in_git_is_never_compared() -> None:
    doc = vpc()
    doc["status"] = {"state": "pending"}
    assert one(compare([doc], [as_live(doc)]), IN_SYNC)


def test_null_empty_object_and_empty_list_in_git_match_an_absent_live_field() -> None:
    doc = vpc(ipv4Namespace="default", permit=[], dhcp={}, vlanNamespace=None)
    assert one(compare([doc], [as_live(doc)]), IN_SYNC)
    live = as_live(doc)
    for key in ("permit", "dhcp", "vlanNamespace"):
        del live["spec"][key]
    assert one(compare([doc], [live]), IN_SYNC)


def test_integers_and_floats_of_the_same_value_are_equal() -> None:
    doc = vpc(mtu=9000.0)
    assert one(compare([doc], [as_live(doc, mtu=9000)]), IN_SYNC)


# --- drifted ----------------------------------------------------------------------------------


def test_a_changed_spec_field_is_one_diff_with_its_path_and_both_values() -> None:
    doc = vpc()
    live = as_live(doc, mode="l2vni")
    live["spec"]["subnets"]["default"]["vlan"] = 1999
    obj = one(compare([doc], [live]), DRIFTED)
    assert obj.diffs == (FieldDiff("/spec/subnets/default/vlan", 1001, 1999),)
    assert obj.live_uid == "5f0c-uid"


def test_a_field_missing_live_is_a_diff_whose_live_side_is_absent() -> None:
    doc = vpc()
    live = as_live(doc)
    del live["spec"]["ipv4Namespace"]
    assert one(compare([doc], [live]), DRIFTED).diffs == (FieldDiff("/spec/ipv4Namespace", "default", None, True),)


def test_a_live_null_is_not_an_absent_field() -> None:
    doc = vpc()
    live = as_live(doc)
    live["spec"]["ipv4Namespace"] = None
    assert one(compare([doc], [live]), DRIFTED).diffs == (FieldDiff("/spec/ipv4Namespace", "default", None, False),)


def test_a_field_git_sets_to_null_but_live_has_is_drift() -> None:
    doc = vpc(ipv4Namespace=None)
    assert one(compare([doc], [as_live(doc, ipv4Namespace="default")]), DRIFTED).diffs == (
        FieldDiff("/spec/ipv4Namespace", None, "default"),
    )


def test_a_boolean_never_equals_a_number() -> None:
    doc = vpc(isolated=True, count=1)
    live = as_live(doc, isolated=1, count=True)
    assert one(compare([doc], [live]), DRIFTED).diffs == (
        FieldDiff("/spec/isolated", True, 1),
        FieldDiff("/spec/count", 1, True),
    )


def test_a_string_never_equals_a_number() -> None:
    doc = vpc(vlan="1001")
    assert one(compare([doc], [as_live(doc, vlan=1001)]), DRIFTED).diffs == (FieldDiff("/spec/vlan", "1001", 1001),)


def test_a_mapping_replaced_by_a_scalar_is_one_diff_at_the_mapping() -> None:
    doc = vpc()
    live = as_live(doc)
    live["spec"]["subnets"] = "gone"
    assert one(compare([doc], [live]), DRIFTED).diffs == (FieldDiff("/spec/subnets", doc["spec"]["subnets"], "gone"),)


def test_list_elements_are_compared_by_position() -> None:
    doc = vpc(groups=["a", "b"])
    obj = one(compare([doc], [as_live(doc, groups=["b", "a"])]), DRIFTED)
    assert obj.diffs == (FieldDiff("/spec/groups/0", "a", "b"), FieldDiff("/spec/groups/1", "b", "a"))


def test_a_list_of_another_length_is_one_diff_with_both_lists() -> None:
    doc = vpc(groups=["a", "b"])
    obj = one(compare([doc], [as_live(doc, groups=["a", "b", "c"])]), DRIFTED)
    assert obj.diffs == (FieldDiff("/spec/groups", ["a", "b"], ["a", "b", "c"]),)


def test_a_changed_field_inside_a_list_element_is_reported_at_its_index() -> None:
    doc = vpc(links=[{"port": "E1/1", "speed": "25G"}, {"port": "E1/2", "speed": "25G"}])
    live = as_live(doc)
    live["spec"]["links"][1]["speed"] = "10G"
    assert one(compare([doc], [live]), DRIFTED).diffs == (FieldDiff("/spec/links/1/speed", "25G", "10G"),)


def test_labels_and_annotations_git_sets_are_compared_and_others_are_not() -> None:
    doc = vpc()
    doc["metadata"]["labels"] = {"fabric": "f1"}
    doc["metadata"]["annotations"] = {"example.com/owner": "netops"}
    live = as_live(doc)
    assert one(compare([doc], [live]), IN_SYNC)
    live["metadata"]["labels"]["fabric"] = "f2"
    del live["metadata"]["annotations"]["example.com/owner"]
    assert one(compare([doc], [live]), DRIFTED).diffs == (
        FieldDiff("/metadata/labels/fabric", "f1", "f2"),
        FieldDiff("/metadata/annotations/example.com~1owner", "netops", None, True),
    )


def test_top_level_fields_besides_spec_are_compared_too() -> None:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": NS},
        "data": {"k": "v"},
    }
    live = copy.deepcopy(doc)
    live["data"]["k"] = "w"
    assert one(compare([doc], [live]), DRIFTED).diffs == (FieldDiff("/data/k", "v", "w"),)


def test_diffs_past_the_limit_are_counted_not_kept() -> None:
    doc = vpc()
    doc["spec"].update({f"f{i}": i for i in range(10)})
    live = as_live(doc, **{f"f{i}": -i - 1 for i in range(10)})
    obj = one(compare([doc], [live], max_diffs=3), DRIFTED)
    assert len(obj.diffs) == 3
    assert obj.truncated == 7


# --- missing and unmanaged -----------------------------------------------------------------------


def test_an_object_in_git_but_not_live_is_missing() -> None:
    report = compare([vpc("a"), vpc("b")], [as_live(vpc("a"))], namespaces=[NS])
    assert [(o.key.name, o.state) for o in report.objects] == [("a", IN_SYNC), ("b", MISSING)]
    assert report.status == OUT_OF_SYNC
    assert report.counts[MISSING] == 1


def test_an_object_live_in_a_managed_namespace_but_not_in_git_is_unmanaged() -> None:
    extra = as_live(vpc("extra"))
    report = compare([vpc("a")], [as_live(vpc("a")), extra], namespaces=[NS])
    assert [(o.key.name, o.state) for o in report.objects] == [("a", IN_SYNC), ("extra", UNMANAGED)]
    assert report.objects[1].live_uid == "5f0c-uid"
    assert report.objects[1].api_version == "vpc.githedgehog.com/v1beta1"


def test_live_objects_outside_the_managed_namespaces_or_kinds_are_not_looked_at() -> None:
    other_ns = as_live(vpc("x", namespace="elsewhere"))
    other_kind = as_live({**vpc("y"), "kind": "Gateway"})
    report = compare([], [other_ns, other_kind], kinds=DEFAULT_KINDS, namespaces=[NS])
    assert report.objects == []
    assert report.status == IN_SYNC


def test_desired_objects_of_untracked_kinds_or_namespaces_are_out_of_scope() -> None:
    report = compare(
        [vpc("x", namespace="elsewhere"), {**vpc("y"), "kind": "Gateway"}, vpc("z")],
        [as_live(vpc("z"))],
        kinds=DEFAULT_KINDS,
        namespaces=[NS],
    )
    assert [o.key.name for o in report.objects] == ["z"]
    assert sorted(k.name for k in report.out_of_scope) == ["x", "y"]


def test_a_document_without_a_namespace_is_in_the_default_namespace() -> None:
    doc = vpc(namespace=None)
    assert one(compare([doc], [as_live(vpc(namespace="ns-0"))], default_namespace="ns-0"), IN_SYNC)
    report = compare([doc], [as_live(vpc(namespace="ns-0"))], default_namespace="other")
    assert [(o.key.namespace, o.state) for o in report.objects] == [("ns-0", UNMANAGED), ("other", MISSING)]


def test_cluster_scoped_kinds_have_no_namespace() -> None:
    kind = Kind("example.com", "v1", "Widget", "widgets", namespaced=False)
    doc = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"a": 1}}
    live = {**copy.deepcopy(doc), "status": {}}
    obj = one(compare([doc], [live], kinds=[kind], namespaces=[NS]), IN_SYNC)
    assert obj.key == ObjectKey("example.com", "Widget", "", "w")


def test_objects_are_matched_by_group_not_version() -> None:
    doc = {**vpc(), "apiVersion": "vpc.githedgehog.com/v1alpha2"}
    assert one(compare([doc], [as_live(vpc())]), IN_SYNC)


def test_documents_without_a_kind_or_name_are_counted_invalid() -> None:
    report = compare([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}, {"kind": "X"}], [])
    assert report.invalid == 2
    assert report.objects == []


# --- ignore rules -----------------------------------------------------------------------------------


def test_an_ignore_rule_hides_a_diff_at_or_under_its_pointer() -> None:
    doc = vpc()
    live = as_live(doc)
    live["spec"]["subnets"]["default"]["vlan"] = 7
    rules = [IgnoreRule(("/spec/subnets/default",))]
    assert one(compare([doc], [live], ignore=rules), IN_SYNC)
    assert one(compare([doc], [live], ignore=[IgnoreRule(("/spec/subnets/default/vlan",))]), IN_SYNC)


def test_a_wildcard_segment_matches_any_key_or_index() -> None:
    doc = vpc(subnets={"a": {"vlan": 1}, "b": {"vlan": 2}}, links=[{"port": "a", "speed": "25G"}, {"port": "b"}])
    live = as_live(doc)
    live["spec"]["subnets"]["b"]["vlan"] = 7
    for link in live["spec"]["links"]:
        link["speed"] = "10G"
    rules = [IgnoreRule(("/spec/subnets/*/vlan", "/spec/links/*/speed"))]
    assert one(compare([doc], [live], ignore=rules), IN_SYNC)
    live["spec"]["links"][1]["port"] = "c"
    assert one(compare([doc], [live], ignore=rules), DRIFTED).diffs == (FieldDiff("/spec/links/1/port", "b", "c"),)


def test_an_ignored_field_inside_a_larger_difference_is_removed_from_both_sides() -> None:
    doc = vpc(dhcp={"enable": True, "range": "10.0.0.10-10.0.0.99"})
    live = as_live(doc)
    del live["spec"]["dhcp"]
    rules = [IgnoreRule(("/spec/dhcp/range",))]
    diffs = one(compare([doc], [live], ignore=rules), DRIFTED).diffs
    assert diffs == (FieldDiff("/spec/dhcp", {"enable": True}, None, True),)
    # A list of another length, where only the ignored element differs, is in sync.
    doc2 = vpc(groups=["a", "b"])
    live2 = as_live(doc2, groups=["a"])
    assert one(compare([doc2], [live2], ignore=[IgnoreRule(("/spec/groups/1",))]), IN_SYNC)


def test_an_ignore_rule_applies_only_to_the_objects_it_selects() -> None:
    docs = [vpc("a"), vpc("b")]
    lives = [as_live(d) for d in docs]
    for live in lives:
        live["spec"]["ipv4Namespace"] = "other"
    rules = [IgnoreRule(("/spec/ipv4Namespace",), kind="VPC", name="a")]
    report = compare(docs, lives, ignore=rules)
    assert [(o.key.name, o.state) for o in report.objects] == [("a", IN_SYNC), ("b", DRIFTED)]
    other_kind = [IgnoreRule(("/spec/ipv4Namespace",), kind="Switch")]
    assert compare(docs, lives, ignore=other_kind).counts[DRIFTED] == 2


def test_the_empty_pointer_leaves_the_whole_object_out() -> None:
    extra = as_live(vpc("default-ns"))
    rules = parse_ignore_rules([{"kind": "VPC", "name": "default-ns", "jsonPointers": [""]}])
    report = compare([], [extra], ignore=rules)
    assert report.objects == []
    assert report.ignored == [ObjectKey("vpc.githedgehog.com", "VPC", NS, "default-ns")]
    assert report.status == IN_SYNC


def test_ignore_rules_read_argo_cd_style_json() -> None:
    rules = parse_ignore_rules(
        [{"group": "vpc.githedgehog.com", "kind": "VPC", "jsonPointers": ["/spec/mode"]}, {"json_pointers": "/x"}]
    )
    assert rules[0] == IgnoreRule(("/spec/mode",), group="vpc.githedgehog.com", kind="VPC")
    assert rules[1] == IgnoreRule(("/x",))
    assert IgnoreRule.from_dict(rules[0].to_dict()) == rules[0]
    for bad in ({"kind": "VPC"}, {"jsonPointers": ["spec/mode"]}, {"jsonPointers": [3]}):
        with pytest.raises(ValueError, match="pointer"):
            parse_ignore_rules([bad])


def test_json_pointers_escape_slashes_and_tildes() -> None:
    assert parse_pointer("/metadata/annotations/example.com~1a~0b") == ("metadata", "annotations", "example.com/a~b")
    assert format_pointer(("metadata", "annotations", "example.com/a~b")) == "/metadata/annotations/example.com~1a~0b"
    assert parse_pointer("") == ()


# --- the report --------------------------------------------------------------------------------------


def test_the_report_is_json_able_and_lists_only_what_is_out_of_sync_unless_asked() -> None:
    docs = [vpc("a"), vpc("b"), vpc("c")]
    lives = [as_live(docs[0]), as_live(docs[1]), as_live(vpc("d"))]
    lives[1]["spec"]["ipv4Namespace"] = "x"
    report = compare(docs, lives)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["status"] == OUT_OF_SYNC
    assert data["counts"] == {IN_SYNC: 1, DRIFTED: 1, MISSING: 1, UNMANAGED: 1}
    assert [(o["name"], o["state"]) for o in data["objects"]] == [("b", DRIFTED), ("c", MISSING), ("d", UNMANAGED)]
    assert data["objects"][0]["diffs"] == [
        {"path": "/spec/ipv4Namespace", "desired": "default", "live": "x", "live_absent": False}
    ]
    assert len(report.to_dict(include_in_sync=True)["objects"]) == 4
    assert [o.key.name for o in report.of_state(MISSING)] == ["c"]


def test_diff_object_compares_one_pair() -> None:
    doc = vpc()
    diffs, truncated = diff_object(doc, as_live(doc, mode="l2vni"))
    assert (diffs, truncated) == ([], 0)


# --- kinds ----------------------------------------------------------------------------------------------


def test_the_default_kinds_are_the_hedgehog_ones_with_their_plurals() -> None:
    plurals = {(k.group, k.kind): k.plural for k in DEFAULT_KINDS}
    assert len(plurals) == 12
    assert plurals[("wiring.githedgehog.com", "Switch")] == "switches"
    assert plurals[("vpc.githedgehog.com", "IPv4Namespace")] == "ipv4namespaces"
    assert all(k.version == "v1beta1" and k.namespaced for k in DEFAULT_KINDS)
    assert find_kind("vpc.githedgehog.com/v1beta1", "VPC") == DEFAULT_KINDS[0]
    assert find_kind("vpc.githedgehog.com/v1alpha2", "VPC") is None


def test_a_fabric_names_its_kinds_as_strings_or_objects() -> None:
    assert parse_kinds(None) == DEFAULT_KINDS
    kinds = parse_kinds(
        [
            "wiring.githedgehog.com/v1beta1/Switch",
            "v1/ConfigMap/configmaps",
            "example.com/v1/Widget/widgets",
            {"group": "example.com", "version": "v1", "kind": "Gadget", "plural": "gadgets", "namespaced": False},
            "wiring.githedgehog.com/v1beta1/Switch",
        ]
    )
    assert [(k.group, k.kind, k.plural, k.namespaced) for k in kinds] == [
        ("wiring.githedgehog.com", "Switch", "switches", True),
        ("", "ConfigMap", "configmaps", True),
        ("example.com", "Widget", "widgets", True),
        ("example.com", "Gadget", "gadgets", False),
    ]
    assert parse_kinds([k.to_dict() for k in kinds]) == kinds
    cases: list[tuple[Any, str]] = [
        (["example.com/v1/Widget"], "unknown kind"),
        ([{"group": "x"}], "lacks"),
        ([3], "not int"),
    ]
    for bad, why in cases:
        with pytest.raises(ValueError, match=why):
            parse_kinds(bad)


# --- performance ---------------------------------------------------------------------------------------


def test_drift_of_5000_object_pairs_takes_under_a_second_of_cpu() -> None:
    desired = [desired_object(i) for i in range(5000)]
    live = [live_object(d, i) for i, d in enumerate(desired)]
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        report = compare(desired, live, kinds=DEFAULT_KINDS, namespaces=["fabric-1"])
        best = min(best, time.process_time() - started)
    assert report.counts == {IN_SYNC: 4900, DRIFTED: 100, MISSING: 0, UNMANAGED: 0}
    assert all(o.diffs[0].path == "/spec/subnets/default/vlan" for o in report.of_state(DRIFTED))
    assert best < 1.0
