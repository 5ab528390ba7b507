"""Parsing manifests: every bad input gives a message naming the file (and line)."""

from __future__ import annotations

import pytest

from sync.errors import ManifestError
from sync.manifests import parse_file, parse_manifests

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


def test_python_object_tags_are_refused_by_the_safe_loader():
    with pytest.raises(ManifestError, match="invalid YAML"):
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
