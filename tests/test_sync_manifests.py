"""Parsing manifests: every bad input gives a message naming the file (and line)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import yaml

from sync import manifests
from sync.errors import ManifestError
from sync.manifests import decode_path, parse_file, parse_manifests
from sync.models import Resource

DEMO = Path(__file__).resolve().parent.parent / "sync/demo_manifests/manifests/switches.yaml"

SWITCH = b"apiVersion: v1\nkind: Switch\nmetadata:\n  name: leaf1\nspec:\n  asn: 65001\n"


def test_it_parses_a_multi_document_file():
    text = SWITCH + b"---\napiVersion: v1\nkind: VLAN\nmetadata:\n  name: v10\n  namespace: dc1\n---\n"
    resources = parse_file("m/a.yaml", text)
    assert [(r.kind, r.namespace, r.name) for r in resources] == [("Switch", "", "leaf1"), ("VLAN", "dc1", "v10")]
    assert resources[0].spec["spec"] == {"asn": 65001}
    assert resources[0].source_file == "m/a.yaml"


def test_the_content_hash_ignores_key_order_but_not_values():
    a = parse_file("a.yaml", b"apiVersion: v1\nkind: S\nmetadata: {name: x}\nspec: {a: 1, b: 2}\n")[0]
    b = parse_file("b.yaml", b"kind: S\napiVersion: v1\nspec: {b: 2, a: 1}\nmetadata: {name: x}\n")[0]
    c = parse_file("c.yaml", b"kind: S\napiVersion: v1\nspec: {b: 3, a: 1}\nmetadata: {name: x}\n")[0]
    assert a.content_hash == b.content_hash != c.content_hash


def test_invalid_yaml_names_the_file_line_and_column():
    with pytest.raises(ManifestError, match=r"^fabric/leaf\.yaml:5:\d+: invalid YAML: mapping values"):
        parse_file("fabric/leaf.yaml", b"apiVersion: v1\nkind: S\nmetadata:\n  name: a\n  bad: a: b\n")


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (b"kind: S\nmetadata: {name: a}\n", "apiVersion"),
        (b"apiVersion: v1\nmetadata: {name: a}\n", "kind"),
        (b"apiVersion: v1\nkind: S\n", "metadata.name"),
        (b"apiVersion: v1\nkind: S\nmetadata: {name: ''}\n", "metadata.name"),
        (b"apiVersion: v1\nkind: S\nmetadata: [a]\n", "metadata.name"),
    ],
)
def test_a_missing_required_field_is_named(document, field):
    with pytest.raises(ManifestError, match=rf"^x\.yaml:1 \(document 1\): missing or empty required field '{field}'"):
        parse_file("x.yaml", document)


def test_the_error_points_at_the_right_document_of_a_multi_document_file():
    with pytest.raises(ManifestError, match=r"^x\.yaml:8 \(document 2\): missing .* 'kind'"):
        parse_file("x.yaml", SWITCH + b"---\napiVersion: v1\nmetadata: {name: b}\n")


def test_a_document_that_is_not_a_mapping_is_refused():
    with pytest.raises(ManifestError, match="must be a mapping, not list"):
        parse_file("x.yaml", b"- a\n- b\n")


def test_non_utf8_content_is_refused():
    with pytest.raises(ManifestError, match=r"x\.yaml: not valid UTF-8"):
        parse_file("x.yaml", b"kind: \xff\xfe\n")


def test_python_object_tags_are_refused():
    with pytest.raises(ManifestError, match=r"^x\.yaml:1:1 \(document 1\): unsupported tag 'tag:yaml.org,2002:python/"):
        parse_file("x.yaml", b"!!python/object/apply:os.system ['true']\n")


def test_an_alias_bomb_is_refused_instead_of_exhausting_memory():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        prev = chr(ord("a") + level - 1)
        cur = chr(ord("a") + level)
        lines.append(f"{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]")
    bomb = "apiVersion: v1\nkind: S\nmetadata: {name: boom}\nspec:\n" + "\n".join("  " + x for x in lines)
    with pytest.raises(ManifestError, match="too many nodes"):
        parse_file("bomb.yaml", bomb.encode())


def test_two_files_declaring_the_same_resource_are_refused_naming_both():
    with pytest.raises(ManifestError, match=r"Switch leaf1 is declared twice: in a\.yaml and b\.yaml"):
        parse_manifests({"a.yaml": SWITCH, "b.yaml": SWITCH})


def test_the_same_name_in_different_namespaces_or_kinds_is_fine():
    other_ns = SWITCH.replace(b"name: leaf1", b"name: leaf1\n  namespace: dc2")
    other_kind = SWITCH.replace(b"kind: Switch", b"kind: Router")
    assert len(parse_manifests({"a.yaml": SWITCH, "b.yaml": other_ns, "c.yaml": other_kind})) == 3


def resource(spec: str, name: str = "x") -> dict:
    """The stored document of a one-resource manifest whose ``spec:`` block is ``spec``."""
    text = f"apiVersion: v1\nkind: S\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    return parse_file("x.yaml", text.encode())[0].spec


def test_ordinary_manifests_read_exactly_as_safe_loader_reads_them():
    text = (
        SWITCH
        + b"  ints: [0, -7, +3, 0x1F, 0o17, 017, 0b101, 1_000, 190:20:30]\n"
        + b"  floats: [1.5, -2.0e+3, 6.8523015e+5, 1_000.5]\n"
        + b"  other: [true, False, yes, off, ~, null, '', 'quoted', \"dq \\u00e9\"]\n"
        + b"  text: |\n    two\n    lines\n"
        + b"  shared: &s {a: [1, 2]}\n  again: *s\n"
        + b"---\n"
        + DEMO.read_bytes()
    )
    expected = [doc for doc in yaml.load_all(text, Loader=yaml.CSafeLoader) if doc is not None]
    assert [r.spec for r in parse_file("m.yaml", text)] == expected


def test_merge_keys_merge_as_in_safe_loader_explicit_keys_and_earlier_mappings_win():
    text = "  base: &b {a: 1, b: 1}\n  more: &m {b: 2, c: 2}\n  merged:\n    <<: [*b, *m]\n    c: 3\n"
    assert resource(text)["spec"]["merged"] == {"a": 1, "b": 1, "c": 3}
    assert resource(text)["spec"] == yaml.safe_load(textwrap.dedent(text))


def test_timestamps_and_binary_are_kept_as_written_like_kubectl_does():
    spec = resource("  at: 2001-12-14t21:59:43.10-05:00\n  day: 2002-12-14\n  blob: !!binary aGVsbG8=\n")["spec"]
    assert spec == {"at": "2001-12-14t21:59:43.10-05:00", "day": "2002-12-14", "blob": "aGVsbG8="}


def test_a_lone_equals_sign_is_a_string_as_in_kubernetes():
    assert resource("  op: =\n")["spec"] == {"op": "="}


def test_keys_that_are_not_strings_become_the_strings_json_would_write():
    assert resource("  1: a\n  true: b\n  null: c\n  1.5: d\n")["spec"] == {
        "1": "a",
        "true": "b",
        "null": "c",
        "1.5": "d",
    }


@pytest.mark.parametrize(
    ("spec", "line", "field", "problem"),
    [
        ("  subnets:\n  - mtu: 9223372036854775808\n", 7, "spec.subnets[0].mtu", "outside the signed 64-bit"),
        ("  subnets:\n  - mtu: -9223372036854775809\n", 7, "spec.subnets[0].mtu", "outside the signed 64-bit"),
        ("  ratio: .nan\n", 6, "spec.ratio", "not a finite number"),
        ("  ratio: [1.0, -.inf]\n", 6, "spec.ratio[1]", "not a finite number"),
        ("  ratio: 1.0e+400\n", 6, "spec.ratio", "not a finite number"),
        ('  label: "a\\0b"\n', 6, "spec.label", "a NUL character"),
        ('  "a\\x00b": 1\n', 6, "spec", "a NUL character"),
        ("  asn: 1\n  asn: 2\n", 7, "spec", "duplicate key 'asn'"),
        ("  1: a\n  '1': b\n", 7, "spec", "duplicate key '1'"),
        ("  ? [a]\n  : b\n", 6, "spec", "a mapping key must be a string"),
        ("  ids: !!set {a, b}\n", 6, "spec.ids", "unsupported tag 'tag:yaml.org,2002:set'"),
        ("  ref: !Ref other\n", 6, "spec.ref", "unsupported tag '!Ref'"),
        ("  <<: 1\n", 6, "spec.<<", "'<<' needs a mapping"),
        ("  loop: &x [*x]\n", 6, "spec.loop[0]", r"alias \*x is inside its own anchor"),
    ],
)
def test_a_value_that_cannot_be_stored_is_refused_naming_file_line_document_and_field(spec, line, field, problem):
    text = SWITCH + b"---\napiVersion: v1\nkind: S\nmetadata: {name: b}\nspec:\n" + spec.encode()
    where = rf"^x\.yaml:{line + 6}:\d+ \(document 2\): "  # SWITCH, document 1, has 6 lines
    with pytest.raises(ManifestError, match=where + re.escape(field) + f": .*{problem}"):
        parse_file("x.yaml", text)


def test_integers_at_the_64_bit_bounds_are_kept():
    assert resource(f"  low: {-(2**63)}\n  high: {2**63 - 1}\n")["spec"] == {"low": -(2**63), "high": 2**63 - 1}


@pytest.mark.parametrize(
    "name",
    ["leaf1", "a", "server-1--mclag--leaf-1", "x.y.z", "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61],
)
def test_names_that_kubernetes_accepts_are_accepted(name):
    assert parse_file("x.yaml", f"apiVersion: v1\nkind: S\nmetadata: {{name: {name}}}\n".encode())[0].name == name


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ("{name: Leaf1}", r"metadata\.name 'Leaf1' is not valid \(expected a DNS-1123 subdomain"),
        ("{name: leaf_1}", r"metadata\.name 'leaf_1' is not valid"),
        ("{name: '-leaf'}", r"metadata\.name '-leaf' is not valid"),
        ("{name: ' leaf'}", r"metadata\.name ' leaf' is not valid"),
        ("{name: " + "a" * 254 + "}", r"metadata\.name is 254 characters long; the limit is 253"),
        ("{name: " + "a" * 10_000 + "}", r"metadata\.name is 10,000 characters long; the limit is 253"),
        ("{name: a, namespace: " + "n" * 64 + "}", r"metadata\.namespace is 64 characters long; the limit is 63"),
        ("{name: a, namespace: dc.1}", r"metadata\.namespace 'dc\.1' is not valid \(expected a DNS-1123 label"),
        ("{name: a, namespace: 7}", r"metadata\.namespace must be a string"),
    ],
)
def test_a_name_or_namespace_that_kubernetes_refuses_is_refused(metadata, problem):
    with pytest.raises(ManifestError, match=rf"^x\.yaml:1 \(document 1\): {problem}"):
        parse_file("x.yaml", f"apiVersion: v1\nkind: S\nmetadata: {metadata}\n".encode())


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("apiVersion: v1\nkind: 'Switch Port'", r"kind 'Switch Port' is not valid"),
        ("apiVersion: v1\nkind: " + "K" * 64, r"kind is 64 characters long; the limit is 63"),
        ("apiVersion: V1\nkind: S", r"apiVersion 'V1' is not valid"),
        ("apiVersion: " + "g" * 198 + "/v1\nkind: S", r"apiVersion is 201 characters long; the limit is 200"),
    ],
)
def test_a_kind_or_api_version_that_does_not_fit_is_refused(header, problem):
    with pytest.raises(ManifestError, match=rf"^x\.yaml:1 \(document 1\): {problem}"):
        parse_file("x.yaml", f"{header}\nmetadata: {{name: a}}\n".encode())


def test_the_limits_are_those_of_the_resource_columns():
    names = ("source_file", "api_version", "kind", "name", "namespace")
    column = {name: getattr(Resource._meta.get_field(name), "max_length", 0) for name in names}
    assert column["source_file"] == manifests.MAX_PATH_LENGTH
    assert column["api_version"] == manifests.MAX_API_VERSION_LENGTH
    assert column["kind"] >= manifests.MAX_KIND_LENGTH
    assert column["name"] >= manifests.MAX_NAME_LENGTH
    assert column["namespace"] >= manifests.MAX_NAMESPACE_LENGTH


def test_a_path_longer_than_the_source_file_column_is_refused():
    path = "manifests/" + "d" * 200 + "/" + "e" * 200 + "/" + "f" * 184 + ".yaml"
    assert len(path) == 601
    with pytest.raises(ManifestError, match=r"the path is 601 characters long; the limit is 500"):
        parse_file(path, SWITCH)
    assert parse_file(path[:495] + ".yaml", SWITCH)[0].source_file == path[:495] + ".yaml"


def test_a_file_name_that_is_not_utf8_is_refused_showing_its_bytes():
    with pytest.raises(
        ManifestError, match=r"^manifests/leaf\\xff\.yaml: the file name is not valid UTF-8 \(byte 14\)"
    ):
        decode_path(b"manifests/leaf\xff.yaml")


def test_two_names_that_differ_only_in_undecodable_bytes_cannot_become_one_path():
    # Decoding with replacement made both "manifests/leaf\ufffd.yaml".
    for raw in (b"manifests/leaf\xff.yaml", b"manifests/leaf\xfe.yaml"):
        with pytest.raises(ManifestError, match="not valid UTF-8"):
            decode_path(raw)
    assert decode_path("manifests/läuft.yaml".encode()) == "manifests/läuft.yaml"


def test_a_file_name_with_a_control_character_is_refused():
    with pytest.raises(ManifestError, match=r"^manifests/a\\nb\.yaml: the file name contains a control character"):
        parse_file("manifests/a\nb.yaml", SWITCH)
