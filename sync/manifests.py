"""Parse manifest files into resources, with errors an operator can act on.

Every error names the file, and for YAML errors the line and column, e.g.
``fabric/leaf1.yaml:12:5: invalid YAML: mapping values are not allowed here``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from sync.errors import ManifestError

# libyaml's loader when available: same safe constructors and marks, several times faster.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# A document may share nodes through YAML aliases; counted with the sharing expanded,
# it may not exceed this many nodes (stops "billion laughs" documents).
MAX_EXPANDED_NODES = 1_000_000


@dataclass(frozen=True)
class ParsedResource:
    api_version: str
    kind: str
    namespace: str
    name: str
    spec: dict[str, Any]
    content_hash: str
    source_file: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


def _count_nodes(node: Any, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise OverflowError
    if isinstance(node, Mapping):
        for key, value in node.items():
            _count_nodes(key, budget)
            _count_nodes(value, budget)
    elif isinstance(node, list):
        for item in node:
            _count_nodes(item, budget)


def _line_of(mark: Any) -> str:
    return f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""


def _require_str(doc: Mapping[str, Any], dotted: str, where: str) -> str:
    value: Any = doc
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{where}: missing or empty required field '{dotted}'")
    return value.strip()


def content_hash(document: Mapping[str, Any]) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_file(path: str, raw: bytes) -> list[ParsedResource]:
    """All resources of one (possibly multi-document) YAML file."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not valid UTF-8 (byte {exc.start})") from exc
    resources = []
    try:
        # Node by node (as yaml.safe_load_all does) so each document's line is known.
        loader = _Loader(text)
        try:
            index = 0
            while loader.check_node():
                node = loader.get_node()
                index += 1
                if node is None:
                    continue
                where = f"{path}:{node.start_mark.line + 1} (document {index})"
                document = loader.construct_document(node)
                if document is None:  # an empty document, e.g. a trailing "---"
                    continue
                resources.append(_to_resource(document, path, where))
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        problem = exc.problem or exc.context or "syntax error"
        raise ManifestError(f"{path}{_line_of(exc.problem_mark)}: invalid YAML: {problem}") from exc
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: invalid YAML: {exc}") from exc
    return resources


def _to_resource(document: Any, path: str, where: str) -> ParsedResource:
    if not isinstance(document, dict):
        raise ManifestError(f"{where}: a manifest must be a mapping, not {type(document).__name__}")
    try:
        _count_nodes(document, [MAX_EXPANDED_NODES])
    except (OverflowError, RecursionError) as exc:
        raise ManifestError(f"{where}: document expands to too many nodes (YAML alias bomb?)") from exc
    api_version = _require_str(document, "apiVersion", where)
    kind = _require_str(document, "kind", where)
    name = _require_str(document, "metadata.name", where)
    namespace = document["metadata"].get("namespace") or ""
    if not isinstance(namespace, str):
        raise ManifestError(f"{where}: metadata.namespace must be a string")
    try:
        digest = content_hash(document)
        spec = json.loads(json.dumps(document, default=str))
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"{where}: cannot be stored as JSON: {exc}") from exc
    return ParsedResource(api_version, kind, namespace, name, spec, digest, path)


def parse_manifests(files: Mapping[str, bytes]) -> list[ParsedResource]:
    """Parse every file; reject two manifests that declare the same resource."""
    seen: dict[tuple[str, str, str], ParsedResource] = {}
    for path in sorted(files):
        for resource in parse_file(path, files[path]):
            if (first := seen.get(resource.key)) is not None:
                ns = f"{resource.namespace}/" if resource.namespace else ""
                raise ManifestError(
                    f"{resource.kind} {ns}{resource.name} is declared twice: in {first.source_file} and {path}"
                )
            seen[resource.key] = resource
    return list(seen.values())
