"""Parse manifest files into resources, with errors an operator can act on.

Every error is a permanent ``ManifestError`` naming the file, and where it can the
line, column, document and field, e.g.
``manifests/vpc.yaml:14:13 (document 2): spec.subnets[0].mtu: 99999999999999999999 is
outside the signed 64-bit integer range``. No manifest may crash the parsing process
or reach the database as something the database would refuse: every limit below is
checked here, so PostgreSQL and SQLite store exactly the same resources.

Documents are built straight from libyaml's event stream (``_Builder``) instead of
through PyYAML's composer and constructor, for three reasons:

- libyaml's C composer recurses once per nesting level; 60 KB of ``[`` overflows the
  C stack and kills the worker with SIGSEGV. The event stream is produced
  iteratively, so excessive nesting is refused before anything deep is built, and
  nothing here recurses.
- Each value is checked where it is built, so an error knows its line and field.
- It is faster than ``yaml.load(..., Loader=CSafeLoader)``: no node objects, no
  generator-based constructor, and the common scalar (an untagged string) and key
  take no method call. On 15,000 Hedgehog-like documents in 5,000 files it takes
  about 0.7x that CPU time, content hash included (bench/resync.py); checking depth
  in a separate pass over the events first would have added about 45%.

Each document's canonical JSON (sorted keys, no spaces) is made once: it is hashed
(``content_hash``) and handed to the database as the stored spec
(``sync.resources``), so a document is serialised once, not once to hash and again
to store.

The YAML accepted is SafeLoader's (YAML 1.1 scalars, anchors, aliases, ``<<`` merge
keys), minus what a Kubernetes resource cannot hold as JSON: ``!!set``, ``!!omap``,
``!!pairs`` and custom tags are refused; timestamps and ``!!binary`` are kept as the
text written (as kubectl does); keys become strings the way JSON would.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import ScalarNode

from sync.errors import ManifestError

# libyaml's parser when available (several times faster); only its events are used,
# with SafeLoader's resolver and scalar constructors.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Bump when a change here could refuse, or parse differently, a file accepted before:
# ``sync.resources`` skips a file whose Git blob was parsed by this version already,
# so only a new version makes every stored file be parsed (and checked) again.
PARSER_VERSION = 1

# --- Limits ------------------------------------------------------------------------
# Mappings and sequences may nest this deep. Real Hedgehog manifests nest fewer than
# 15 levels; 64 leaves room and keeps every later recursive walk (json.dumps, the
# database driver) far from any stack limit.
MAX_DEPTH = 64
# A document may share nodes through YAML aliases; counted with the sharing expanded,
# it may not exceed this many nodes (stops "billion laughs" documents).
MAX_EXPANDED_NODES = 1_000_000
# Integers must fit a signed 64-bit integer, the widest integer Kubernetes (Go) and
# most JSON readers handle exactly. PostgreSQL's jsonb would take more, SQLite's JSON
# less; one rule keeps both databases, and every consumer, the same.
MIN_INT, MAX_INT = -(2**63), 2**63 - 1
# Column sizes of sync.models.Resource (tests/test_sync_manifests.py checks they agree).
MAX_PATH_LENGTH = 500  # source_file
MAX_API_VERSION_LENGTH = 200  # api_version; Kubernetes allows more, the column does not
# Kubernetes' own rules, all within their columns: a name is a DNS-1123 subdomain,
# a namespace a DNS-1123 label, a kind a DNS-1035 label once lower-cased.
MAX_NAME_LENGTH = 253
MAX_NAMESPACE_LENGTH = 63
MAX_KIND_LENGTH = 63

_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_NAMESPACE = re.compile(_LABEL)
_KIND = re.compile(r"[A-Za-z](?:[-A-Za-z0-9]*[A-Za-z0-9])?")
_API_VERSION = re.compile(rf"(?:{_NAME.pattern}/)?[a-z](?:[-a-z0-9]*[a-z0-9])?")
_DIGITS = re.compile(r"[-+]?[0-9][0-9_]*")
# NUL is refused by PostgreSQL in text and jsonb alike; lone surrogates cannot be
# encoded as UTF-8. Only double-quoted scalars can contain either (as escapes).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Control characters and undecodable bytes (surrogateescape) in a file name.
_BAD_PATH = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

_TAG = "tag:yaml.org,2002:"
_STR, _NULL, _BOOL, _INT, _FLOAT = (f"{_TAG}{t}" for t in ("str", "null", "bool", "int", "float"))
_MAP, _SEQ, _MERGE_TAG, _VALUE = (f"{_TAG}{t}" for t in ("map", "seq", "merge", "value"))
_AS_WRITTEN = {f"{_TAG}timestamp", f"{_TAG}binary"}  # validated, then kept as text
# SafeLoader's implicit resolvers by first character ("" for the empty scalar), as
# Resolver.resolve uses them (SafeLoader has no wildcard or path resolvers), read
# here without a method call per scalar.
_RESOLVERS: dict[str, list[tuple[str, re.Pattern[str]]]] = dict(_Loader.yaml_implicit_resolvers)
# A plain scalar starting with any other character is a string, whatever follows.
_RESOLVED_FIRST = frozenset(_RESOLVERS)
_MERGE = object()  # the key "<<"
_NO_KEY = object()  # a mapping waiting for its next key
_OPEN = object()  # an anchor whose collection is still being built


@dataclass(frozen=True)
class ParsedResource:
    api_version: str
    kind: str
    namespace: str
    name: str
    spec: dict[str, Any]
    content_hash: str
    source_file: str
    # ``spec`` as canonical JSON (``canonical_json``), what ``content_hash`` hashes.
    spec_json: str = field(default="", repr=False, compare=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


def printable(text: str) -> str:
    """``text`` for a message: undecodable bytes as ``\\xff``, control characters escaped."""
    out = []
    for char in text:
        if "\udc80" <= char <= "\udcff":  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def _short(value: Any, limit: int = 40, quote: str = "'") -> str:
    text = printable(value if isinstance(value, str) else str(value))
    if len(text) > limit:
        return f"{quote}{text[:limit]}{quote}... ({len(text):,} characters)"
    return f"{quote}{text}{quote}"


def decode_path(raw: bytes) -> str:
    """A manifest's path from Git, refused unless it is UTF-8.

    Decoding with replacement would make two names that differ only in their
    undecodable bytes the same path, and one file would silently hide the other.
    """
    try:
        path = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        shown = printable(raw.decode("utf-8", "surrogateescape"))
        raise ManifestError(f"{shown}: the file name is not valid UTF-8 (byte {exc.start}); rename the file") from exc
    check_path(path)
    return path


def check_path(path: str) -> None:
    if _BAD_PATH.search(path):
        raise ManifestError(f"{printable(path)}: the file name contains a control character or is not valid UTF-8")
    if len(path) > MAX_PATH_LENGTH:
        raise ManifestError(
            f"{printable(path[:80])}...: the path is {len(path):,} characters long; the limit is {MAX_PATH_LENGTH}"
        )


_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False).encode


def canonical_json(document: Mapping[str, Any]) -> str:
    """The document as JSON with sorted keys and no spaces: equal documents, equal text."""
    return _canonical(document)


def content_hash(document: Mapping[str, Any], canonical: str | None = None) -> str:
    """SHA-256 of the canonical JSON (key order does not count; values do)."""
    text = canonical_json(document) if canonical is None else canonical
    return hashlib.sha256(text.encode()).hexdigest()


def duplicate_error(resource: ParsedResource, first: str, second: str) -> ManifestError:
    ns = f"{resource.namespace}/" if resource.namespace else ""
    return ManifestError(f"{resource.kind} {ns}{resource.name} is declared twice: in {first} and {second}")


def parse_file(path: str, raw: bytes) -> list[ParsedResource]:
    """All resources of one (possibly multi-document) YAML file."""
    check_path(path)
    if raw.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
        raise ManifestError(f"{path}: the file starts with a UTF-16 or UTF-32 byte order mark; save it as UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not valid UTF-8 (byte {exc.start})") from exc
    resources = []
    loader = _Loader(text)
    try:
        index = 0
        while type(event := loader.get_event()) is not StreamEndEvent:
            if type(event) is DocumentStartEvent:
                index += 1
                line, document = _Builder(loader, path, index).document()
                if document is not None:  # None: an empty document, e.g. a trailing "---"
                    resources.append(_to_resource(document, path, f"{path}:{line} (document {index})"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ManifestError(f"{path}{where}: invalid YAML: {exc.problem or exc.context or 'syntax error'}") from exc
    except yaml.reader.ReaderError as exc:  # e.g. a control character in the text
        line = text.count("\n", 0, exc.position) + 1
        character = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        raise ManifestError(f"{path}:{line}: invalid YAML: {character} is not allowed ({exc.reason})") from exc
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: invalid YAML: {exc}") from exc
    finally:
        loader.dispose()
    return resources


def _resolve(plain: str) -> str:
    """The tag of an untagged plain scalar, e.g. int for ``12``."""
    for tag, pattern in _RESOLVERS.get(plain[:1], ()):
        if pattern.match(plain):
            return tag
    return _STR


class _Frame:
    """A mapping or sequence being built."""

    __slots__ = ("anchor", "container", "first_node", "is_map", "key", "merges")

    def __init__(self, container: Any, is_map: bool, anchor: str | None, first_node: int) -> None:
        self.container = container
        self.is_map = is_map
        self.key: Any = _NO_KEY
        self.anchor = anchor
        self.first_node = first_node  # the document's node count before this collection
        self.merges: list[dict[str, Any]] | None = None  # made by the first "<<"


class _Builder:
    """One document from the event stream, checked as it is built.

    1. A scalar is resolved (plain scalars by SafeLoader's implicit resolvers),
       converted, and checked: no NUL or lone surrogate, integers within 64 bits,
       floats finite. Most scalars are untagged strings that no resolver could
       claim (by their first character) and that cannot hold NUL (not
       double-quoted): those are taken as they are, without a call.
    2. A mapping or sequence start pushes a frame, refused past ``MAX_DEPTH`` or in
       key position; its end pops the frame and applies any ``<<`` merges (explicit
       keys win, then earlier merged mappings).
    3. Every value goes into the frame on top: a mapping alternates key and value,
       refusing duplicate keys; a sequence appends.
    4. Nodes are counted as if every alias were expanded (an alias adds its anchor's
       count), so a "billion laughs" document fails in microseconds.

    ``document`` is the hot loop of every sync (a million events for 15,000
    documents): the common cases are inlined there, the rest is in methods.
    """

    def __init__(self, loader: Any, path: str, index: int) -> None:
        self.loader = loader
        self.path = path
        self.index = index
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.nodes = 0

    def fail(self, mark: Any, message: str) -> ManifestError:
        field = self.field()
        return ManifestError(
            f"{self.path}:{mark.line + 1}:{mark.column + 1} (document {self.index}): "
            f"{field + ': ' if field else ''}{message}"
        )

    def field(self) -> str:
        """Where the value being built goes, e.g. ``spec.subnets[0].mtu``."""
        parts = []
        for frame in self.stack:
            if not frame.is_map:
                parts.append(f"[{len(frame.container)}]")
            elif frame.key is _MERGE:
                parts.append(".<<")
            elif frame.key is not _NO_KEY:
                key = frame.key
                parts.append(f".{key}" if re.fullmatch(r"[A-Za-z0-9_/-]{1,60}", key) else f"[{_short(key)}]")
        field = "".join(parts).lstrip(".")
        return field if len(field) <= 120 else f"{field[:60]}...{field[-40:]}"

    def document(self) -> tuple[int, Any]:
        """(line of the root node, the document), consuming up to its end event."""
        get_event = self.loader.get_event
        stack = self.stack
        resolved_first = _RESOLVED_FIRST
        root, line = None, self.loader.peek_event().start_mark.line + 1
        while True:
            event = get_event()
            kind = type(event)
            if kind is ScalarEvent:
                self.nodes += 1
                value = event.value
                if (
                    event.tag is not None
                    or event.anchor is not None
                    or event.style == '"'
                    or (event.implicit[0] and value[:1] in resolved_first)
                ):
                    value = self.scalar(event)
                    if event.anchor is not None:
                        self.define(event, value, 1)
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                is_map = kind is MappingStartEvent
                if (
                    event.tag is None
                    and event.anchor is None
                    and len(stack) < MAX_DEPTH
                    and not (stack and stack[-1].is_map and stack[-1].key is _NO_KEY)
                    and self.nodes < MAX_EXPANDED_NODES
                ):  # what ``start`` checks, in the common case
                    self.nodes += 1
                    stack.append(_Frame({} if is_map else [], is_map, None, self.nodes - 1))
                else:
                    self.start(event, {} if is_map else [], is_map)
                continue
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                frame = stack.pop()
                value = frame.container
                if frame.merges:
                    self.merge(frame)
                if frame.anchor is not None:
                    self.anchors[frame.anchor] = (value, self.nodes - frame.first_node)
            elif kind is AliasEvent:
                value = self.alias(event)
            elif kind is DocumentEndEvent:
                return line, root
            else:  # pragma: no cover - libyaml emits nothing else inside a document
                raise ManifestError(f"{self.path}: unexpected YAML event {event}")

            if not stack:
                root = value
                continue
            frame = stack[-1]
            if not frame.is_map:
                frame.container.append(value)
            elif frame.key is _NO_KEY:
                if type(value) is str and value not in frame.container:
                    frame.key = value
                else:
                    frame.key = self.key(event, value, frame)
            else:
                if frame.key is _MERGE:
                    self.add_merge(event, value, frame)
                else:
                    frame.container[frame.key] = value
                frame.key = _NO_KEY

    def scalar(self, event: Any) -> Any:
        value = event.value
        if event.style == '"' and _UNSTORABLE.search(value):
            bad = "a NUL character" if "\x00" in value else "a lone surrogate escape"
            raise self.fail(event.start_mark, f"{bad} in {_short(value)} cannot be stored")
        tag = event.tag
        if tag is None or tag == "!":
            if not event.implicit[0]:  # quoted, literal or folded: a string
                return value
            tag = _resolve(value)
        if tag in (_STR, _VALUE):  # "=" is a plain string to Kubernetes too
            return value
        if tag == _NULL:
            return None
        if tag == _MERGE_TAG:
            if not (self.stack and self.stack[-1].is_map and self.stack[-1].key is _NO_KEY):
                raise self.fail(event.start_mark, "'<<' (merge) may only be used as a mapping key")
            return _MERGE
        if tag not in (_BOOL, _INT, _FLOAT) and tag not in _AS_WRITTEN:
            raise self.fail(event.start_mark, f"unsupported tag {_short(tag, 80)} on {_short(value)}")
        node = ScalarNode(tag, value, event.start_mark, event.end_mark, event.style)
        try:
            converted = self.loader.yaml_constructors[tag](self.loader, node)
        except (ValueError, KeyError, IndexError, TypeError) as exc:  # e.g. "!!int x", 5,000 digits
            if tag == _INT and _DIGITS.fullmatch(value):  # over int()'s own limit of 4,300 digits
                raise self.out_of_range(event) from exc
            raise self.fail(event.start_mark, f"{_short(value)} is not a valid {tag[len(_TAG) :]}") from exc
        if tag in _AS_WRITTEN:
            return value
        if tag == _INT and not MIN_INT <= converted <= MAX_INT:
            raise self.out_of_range(event)
        if tag == _FLOAT and not math.isfinite(converted):
            raise self.fail(event.start_mark, f"{_short(value)} is not a finite number (no NaN or infinity in JSON)")
        return converted

    def out_of_range(self, event: Any) -> ManifestError:
        return self.fail(event.start_mark, f"{_short(event.value)} is outside the signed 64-bit integer range")

    def start(self, event: Any, container: Any, is_map: bool) -> None:
        stack = self.stack
        if len(stack) >= MAX_DEPTH:
            raise self.fail(event.start_mark, f"nested deeper than {MAX_DEPTH} levels")
        if stack and stack[-1].is_map and stack[-1].key is _NO_KEY:
            raise self.fail(event.start_mark, "a mapping key must be a string, number, boolean or null")
        if event.tag not in (None, "!", _MAP if type(container) is dict else _SEQ):
            raise self.fail(event.start_mark, f"unsupported tag {_short(event.tag, 80)}")
        self.nodes += 1
        self.count(event)
        if event.anchor is not None:
            self.define(event, _OPEN, 0)
        stack.append(_Frame(container, is_map, event.anchor, self.nodes - 1))

    def define(self, event: Any, value: Any, size: int) -> None:
        if value is _MERGE:
            raise self.fail(event.start_mark, "'<<' (merge) cannot carry an anchor")
        if event.anchor in self.anchors:
            raise self.fail(event.start_mark, f"anchor &{_short(event.anchor, quote='')} is defined twice")
        self.anchors[event.anchor] = (value, size)

    def alias(self, event: Any) -> Any:
        found = self.anchors.get(event.anchor)
        if found is None or found[0] is _OPEN:
            anchor = _short(event.anchor, quote="")
            problem = "has no anchor before it" if found is None else "is inside its own anchor (a cycle)"
            raise self.fail(event.start_mark, f"alias *{anchor} {problem}")
        self.nodes += found[1]
        self.count(event)
        return found[0]

    def count(self, event: Any) -> None:
        if self.nodes > MAX_EXPANDED_NODES:
            raise self.fail(
                event.start_mark,
                f"the document expands to too many nodes (over {MAX_EXPANDED_NODES:,}; a YAML alias bomb?)",
            )

    def key(self, event: Any, value: Any, frame: _Frame) -> Any:
        if type(value) is not str and value is not _MERGE:
            if isinstance(value, (dict, list)):
                raise self.fail(event.start_mark, "a mapping key must be a string, number, boolean or null")
            value = json.dumps(value)  # 1 -> "1", true -> "true", null -> "null", as JSON would
        if value in frame.container:
            raise self.fail(event.start_mark, f"duplicate key {_short(value)}")
        return value

    def add_merge(self, event: Any, value: Any, frame: _Frame) -> None:
        merged = value if type(value) is list else [value]
        if not merged or any(type(item) is not dict for item in merged):
            raise self.fail(event.start_mark, "'<<' needs a mapping or a list of mappings to merge")
        if frame.merges is None:
            frame.merges = []
        frame.merges.extend(reversed(merged))  # earlier mappings in a list win

    def merge(self, frame: _Frame) -> None:
        """Merged keys first, explicit keys override them (SafeLoader's order)."""
        explicit = dict(frame.container)
        frame.container.clear()
        for merged in frame.merges or ():
            frame.container.update(merged)
        frame.container.update(explicit)


# The identifying fields: (field, pattern, maximum length, what the pattern allows).
_FIELD_RULES = (
    ("apiVersion", _API_VERSION, MAX_API_VERSION_LENGTH, "'group/version' or 'version', e.g. 'vpc.githedgehog.com/v1'"),
    ("kind", _KIND, MAX_KIND_LENGTH, "letters, digits and '-', starting with a letter"),
    ("metadata.name", _NAME, MAX_NAME_LENGTH, "a DNS-1123 subdomain: lower-case letters, digits, '-' and '.'"),
    ("metadata.namespace", _NAMESPACE, MAX_NAMESPACE_LENGTH, "a DNS-1123 label: lower-case letters, digits and '-'"),
)


def _field(document: Mapping[str, Any], dotted: str, where: str) -> str:
    """The string at ``dotted``; "" only for an absent (or null) namespace."""
    value: Any = document
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if dotted == "metadata.namespace" and value in (None, ""):
        return ""
    if dotted == "metadata.namespace" and not isinstance(value, str):
        raise ManifestError(f"{where}: metadata.namespace must be a string")
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{where}: missing or empty required field '{dotted}'")
    return value


def _to_resource(document: Any, path: str, where: str) -> ParsedResource:
    if not isinstance(document, dict):
        raise ManifestError(f"{where}: a manifest must be a mapping, not {type(document).__name__}")
    values = []
    for dotted, pattern, limit, allowed in _FIELD_RULES:
        value = _field(document, dotted, where)
        if len(value) > limit:
            raise ManifestError(f"{where}: {dotted} is {len(value):,} characters long; the limit is {limit}")
        if value and not pattern.fullmatch(value):
            raise ManifestError(f"{where}: {dotted} {_short(value)} is not valid (expected {allowed})")
        values.append(value)
    api_version, kind, name, namespace = values
    # Built from JSON types only, so the document is stored as it is.
    canonical = canonical_json(document)
    return ParsedResource(
        api_version, kind, namespace, name, document, content_hash(document, canonical), path, canonical
    )


def parse_manifests(files: Mapping[str, bytes]) -> list[ParsedResource]:
    """Parse every file; reject two manifests that declare the same resource.

    ``files`` may be only the files that changed since the last sync: the resources
    of the others are checked against these by ``sync.resources.plan_changes``.
    """
    seen: dict[tuple[str, str, str], ParsedResource] = {}
    for path in sorted(files):
        for resource in parse_file(path, files[path]):
            if (first := seen.get(resource.key)) is not None:
                raise duplicate_error(resource, first.source_file, path)
            seen[resource.key] = resource
    return list(seen.values())
