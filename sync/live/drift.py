"""Drift: desired objects (Git) against live objects (the cluster), as pure functions.

``compare(desired, live, ...)`` gives every object in scope one state:

- ``in_sync``: every field the desired document sets has that value live.
- ``drifted``: some do not; ``diffs`` lists each as (JSON pointer, desired, live).
- ``missing``: in Git, not in the cluster.
- ``unmanaged``: in the cluster (a managed namespace, a tracked kind), not in Git.

Objects are matched by (API group, kind, namespace, name): the version is not part of
the key, so a document written for another version of a kind still meets its object.

What is compared (the rule), for each desired document and its live object:

1. Only what the desired document sets. Top level: every field but ``apiVersion``,
   ``kind`` (the key), ``status`` (controllers write it; an apply never does) and
   ``metadata``. Of ``metadata``, only the ``labels`` and ``annotations`` the document
   sets; the rest is identity (name, namespace) or the server's (uid,
   resourceVersion, generation, creationTimestamp, managedFields). So the fields the
   API server defaults and the annotations and labels others add never count.
2. Objects (mappings): each key the desired side sets, recursively. A key live lacks
   is a diff whose live side is absent (``live_absent``), unless the desired value is
   null or an empty object or list: "nothing set" matches "absent" (servers drop them).
3. Lists: compared element by element, by position, with rules 2-4 applied to each
   pair (so defaults the server adds inside list elements do not count). A list of
   another length is one diff for the whole list: both lists, in full.
4. Scalars: equal values of the same JSON type; integers and floats compare by value
   (1 == 1.0), booleans only with booleans (true != 1). A desired null matches an
   absent or null live value.

Ignore rules (``IgnoreRule``, like Argo CD's ``ignoreDifferences``) name JSON pointers
(RFC 6901, ``~1`` for ``/``, plus ``*`` for any one key or list index), optionally
only for a group, kind, namespace or name. A diff at or under an ignored pointer does
not count; a diff above one is recomputed with the ignored part removed from both
sides (as Argo CD does). The empty pointer ``""`` ignores the whole object: it is left
out of the comparison (``report.ignored``).

The overall status is ``in_sync`` when every object in scope is, else ``out_of_sync``.
Measured: 5,000 object pairs in about 0.15 s of CPU (``bench/drift.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sync.live.kinds import Kind, split_api_version

IN_SYNC = "in_sync"
DRIFTED = "drifted"
MISSING = "missing"
UNMANAGED = "unmanaged"
STATES = (IN_SYNC, DRIFTED, MISSING, UNMANAGED)
OUT_OF_SYNC = "out_of_sync"

# Top-level fields never compared: the key, and what controllers write.
_NOT_COMPARED = frozenset({"apiVersion", "kind", "metadata", "status"})
# The metadata compared, when the desired document sets it.
_COMPARED_METADATA = ("labels", "annotations")
_ABSENT: Any = object()
DEFAULT_MAX_DIFFS = 100  # per object; more are summed up as ``truncated``

Segment = str | int
Path = tuple[Segment, ...]


class ObjectKey(NamedTuple):
    group: str
    kind: str
    namespace: str  # "" for cluster-scoped kinds
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind}.{self.group} {where}{self.name}" if self.group else f"{self.kind} {where}{self.name}"

    @classmethod
    def of(cls, obj: Mapping[str, Any], default_namespace: str = "") -> ObjectKey:
        group, _ = split_api_version(str(obj.get("apiVersion", "")))
        metadata = obj.get("metadata") or {}
        return cls(
            group,
            str(obj.get("kind", "")),
            str(metadata.get("namespace") or default_namespace),
            str(metadata.get("name", "")),
        )


@dataclass(frozen=True, slots=True)
class FieldDiff:
    path: str  # a JSON pointer: "/spec/subnets/default/vlan"
    desired: Any
    live: Any  # None when live_absent
    live_absent: bool = False  # the live object does not have this field at all

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "desired": self.desired, "live": self.live, "live_absent": self.live_absent}


@dataclass(frozen=True, slots=True)
class ObjectDrift:
    key: ObjectKey
    state: str
    api_version: str
    diffs: tuple[FieldDiff, ...] = ()
    truncated: int = 0  # diffs left out past the per-object limit
    live_uid: str = ""  # for a delete that must hit exactly this object (prune)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.key.group,
            "kind": self.key.kind,
            "namespace": self.key.namespace,
            "name": self.key.name,
            "api_version": self.api_version,
            "state": self.state,
            "diffs": [d.to_dict() for d in self.diffs],
            "truncated": self.truncated,
            "live_uid": self.live_uid,
        }


@dataclass
class DriftReport:
    objects: list[ObjectDrift]
    counts: dict[str, int]
    out_of_scope: list[ObjectKey] = field(default_factory=list)  # desired, but an untracked kind or namespace
    ignored: list[ObjectKey] = field(default_factory=list)  # whole objects an ignore rule leaves out
    invalid: int = 0  # desired documents without apiVersion, kind or name

    @property
    def status(self) -> str:
        return IN_SYNC if all(self.counts[s] == 0 for s in (DRIFTED, MISSING, UNMANAGED)) else OUT_OF_SYNC

    def of_state(self, state: str) -> list[ObjectDrift]:
        return [o for o in self.objects if o.state == state]

    def to_dict(self, include_in_sync: bool = False) -> dict[str, Any]:
        """JSON-able; in-sync objects only when asked (they carry no diff)."""
        return {
            "status": self.status,
            "counts": dict(self.counts),
            "objects": [o.to_dict() for o in self.objects if include_in_sync or o.state != IN_SYNC],
            "out_of_scope": [list(k) for k in self.out_of_scope],
            "ignored": [list(k) for k in self.ignored],
            "invalid": self.invalid,
        }


# --- ignore rules -------------------------------------------------------------------------


def parse_pointer(pointer: str) -> tuple[str, ...]:
    """RFC 6901: ``""`` is the whole document, else ``/``-separated segments with
    ``~1`` for ``/`` and ``~0`` for ``~``. ``ValueError`` for anything else."""
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise ValueError(f"a JSON pointer starts with '/': {pointer!r}")
    return tuple(s.replace("~1", "/").replace("~0", "~") for s in pointer[1:].split("/"))


def format_pointer(path: Path) -> str:
    return "".join("/" + str(s).replace("~", "~0").replace("/", "~1") for s in path)


@dataclass(frozen=True)
class IgnoreRule:
    """Differences under ``pointers`` never count, for the objects the other fields select
    (None selects all). ``group``/``kind``/``namespace``/``name`` as in Argo CD."""

    pointers: tuple[str, ...]
    group: str | None = None
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        for pointer in self.pointers:
            parse_pointer(pointer)

    def selects(self, key: ObjectKey) -> bool:
        return (
            (self.group is None or self.group == key.group)
            and (self.kind is None or self.kind == key.kind)
            and (self.namespace is None or self.namespace == key.namespace)
            and (self.name is None or self.name == key.name)
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IgnoreRule:
        pointers = data.get("jsonPointers", data.get("json_pointers", data.get("pointers")))
        if isinstance(pointers, str):
            pointers = [pointers]
        if not pointers or not all(isinstance(p, str) for p in pointers):
            raise ValueError(f"an ignore rule needs jsonPointers (a list of JSON pointers): {dict(data)!r}")

        def optional(name: str) -> str | None:
            value = data.get(name)
            return None if value in (None, "", "*") else str(value)

        return cls(tuple(pointers), optional("group"), optional("kind"), optional("namespace"), optional("name"))

    def to_dict(self) -> dict[str, Any]:
        selectors = {"group": self.group, "kind": self.kind, "namespace": self.namespace, "name": self.name}
        return {"jsonPointers": list(self.pointers), **{k: v for k, v in selectors.items() if v is not None}}


def parse_ignore_rules(value: Iterable[Mapping[str, Any]] | None) -> tuple[IgnoreRule, ...]:
    """Rules from a fabric's JSON setting (a list of Argo-CD-style objects)."""
    return tuple(IgnoreRule.from_dict(entry) for entry in value or ())


def _matches(pattern: tuple[str, ...], path: Path) -> bool:
    """``pattern`` (segments, ``*`` = any one) matches the start of ``path``."""
    if len(pattern) > len(path):
        return False
    return all(p == "*" or p == str(s) for p, s in zip(pattern, path, strict=False))


def _remove(value: Any, pattern: tuple[str, ...]) -> Any:
    """``value`` with every part ``pattern`` selects removed (a changed copy; lists keep
    their other elements in order, so both sides stay aligned)."""
    if not pattern:
        return _ABSENT
    head, rest = pattern[0], pattern[1:]
    if isinstance(value, dict):
        keys = list(value) if head == "*" else [head] if head in value else []
        out = dict(value)
        for k in keys:
            stripped = _remove(out[k], rest)
            if stripped is _ABSENT:
                del out[k]
            else:
                out[k] = stripped
        return out
    if isinstance(value, list):
        if head == "*":
            indexes = list(range(len(value)))
        elif head.isdigit() and int(head) < len(value):
            indexes = [int(head)]
        else:
            return value
        out_list: list[Any] = []
        for i, item in enumerate(value):
            if i in indexes:
                item = _remove(item, rest)
                if item is _ABSENT:
                    continue
            out_list.append(item)
        return out_list
    return value


# --- comparison -------------------------------------------------------------------------------


def _diff(desired: Any, live: Any, path: Path, out: list[tuple[Path, Any, Any]]) -> None:
    """Append (path, desired, live) for each difference, by rules 2-4 of the module docstring."""
    dtype = type(desired)
    if dtype is dict:
        if type(live) is not dict:
            out.append((path, desired, live))
            return
        for key, value in desired.items():
            current = live.get(key, _ABSENT)
            if current is _ABSENT:
                if value is None or value == {} or value == []:
                    continue
                out.append(((*path, key), value, _ABSENT))
            else:
                vtype = type(value)
                if (
                    vtype is not dict
                    and vtype is not list
                    and value == current
                    and value is not None
                    and current is not None
                    and (vtype is bool) is (type(current) is bool)
                ):
                    continue  # the common case, decided without building a path
                _diff(value, current, (*path, key), out)
        return
    if dtype is list:
        if type(live) is not list or len(live) != len(desired):
            out.append((path, desired, live))
            return
        for index, (value, current) in enumerate(zip(desired, live, strict=True)):
            _diff(value, current, (*path, index), out)
        return
    if desired is None:
        if live is not None:
            out.append((path, desired, live))
        return
    if live is None or (dtype is bool) != (type(live) is bool) or desired != live:
        out.append((path, desired, live))


def _compared(desired: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a desired document that is compared (rule 1)."""
    view = {k: v for k, v in desired.items() if k not in _NOT_COMPARED}
    metadata = desired.get("metadata") or {}
    picked = {k: metadata[k] for k in _COMPARED_METADATA if metadata.get(k)}
    if picked:
        view["metadata"] = picked
    return view


def diff_object(
    desired: Mapping[str, Any],
    live: Mapping[str, Any],
    ignore: Sequence[tuple[str, ...]] = (),
    max_diffs: int = DEFAULT_MAX_DIFFS,
) -> tuple[list[FieldDiff], int]:
    """The field diffs of one pair (the module docstring's rule) and how many were left out.

    ``ignore``: parsed pointers (``parse_pointer``) of the rules selecting this object.
    """
    raw: list[tuple[Path, Any, Any]] = []
    _diff(_compared(desired), live, (), raw)
    if ignore and raw:
        raw = _apply_ignores(raw, ignore)
    diffs = [FieldDiff(format_pointer(path), d, None if lv is _ABSENT else lv, lv is _ABSENT) for path, d, lv in raw]
    return diffs[:max_diffs], max(0, len(diffs) - max_diffs)


def _apply_ignores(raw: list[tuple[Path, Any, Any]], ignore: Sequence[tuple[str, ...]]) -> list[tuple[Path, Any, Any]]:
    kept: list[tuple[Path, Any, Any]] = []
    for path, desired, live in raw:
        if any(_matches(pattern, path) for pattern in ignore):
            continue  # at or under an ignored pointer
        below = [p[len(path) :] for p in ignore if len(p) > len(path) and _matches(p[: len(path)], path)]
        if not below:
            kept.append((path, desired, live))
            continue
        # An ignored pointer lies inside this difference: remove it from both sides, diff again.
        for pattern in below:
            desired = _remove(copy.deepcopy(desired), pattern)
            if live is not _ABSENT:
                live = _remove(copy.deepcopy(live), pattern)
        if desired is _ABSENT:
            continue
        if live is _ABSENT:
            if desired is None or desired == {} or desired == []:
                continue
            kept.append((path, desired, live))
            continue
        again: list[tuple[Path, Any, Any]] = []
        _diff(desired, live, path, again)
        kept.extend(again)
    return kept


def compare(
    desired: Iterable[Mapping[str, Any]],
    live: Iterable[Mapping[str, Any]],
    *,
    kinds: Iterable[Kind] | None = None,
    namespaces: Iterable[str] | None = None,
    ignore: Iterable[IgnoreRule] = (),
    default_namespace: str = "default",
    max_diffs: int = DEFAULT_MAX_DIFFS,
) -> DriftReport:
    """Drift of every object in scope (the module docstring's rules).

    1. Scope: tracked ``kinds`` (by group and kind) in managed ``namespaces`` (None:
       everything given). Desired documents outside it go to ``out_of_scope``; live
       objects outside it are not looked at. A namespaced desired document without a
       namespace is in ``default_namespace``, as ``kubectl apply`` would put it.
    2. Rules with the empty pointer leave their objects out (``ignored``).
    3. Each desired object: ``missing`` without a live one, else ``in_sync`` or
       ``drifted`` by ``diff_object``. Each remaining live object: ``unmanaged``.
    4. Objects come out sorted by key; ``counts`` has every state, zeros included.
    """
    tracked = {(k.group, k.kind): k for k in kinds} if kinds is not None else None
    managed = set(namespaces) if namespaces is not None else None
    rules = list(ignore)
    parsed_rules = [(rule, [parse_pointer(p) for p in rule.pointers]) for rule in rules]

    def scope_key(obj: Mapping[str, Any], default_ns: str) -> tuple[ObjectKey | None, bool]:
        """The key (None when invalid) and whether the object is in scope."""
        api_version, kind_name = obj.get("apiVersion"), obj.get("kind")
        metadata = obj.get("metadata")
        if not (api_version and kind_name and isinstance(metadata, Mapping) and metadata.get("name")):
            return None, False
        group, _ = split_api_version(str(api_version))
        kind = tracked.get((group, str(kind_name))) if tracked is not None else None
        if tracked is not None and kind is None:
            return ObjectKey.of(obj, ""), False
        namespaced = kind.namespaced if kind is not None else True
        namespace = str(metadata.get("namespace") or default_ns) if namespaced else ""
        key = ObjectKey(group, str(kind_name), namespace, str(metadata["name"]))
        in_scope = managed is None or not namespace or namespace in managed
        return key, in_scope

    def pointers_for(key: ObjectKey) -> list[tuple[str, ...]] | None:
        """The rules' pointers for ``key``; None when one ignores the whole object."""
        pointers: list[tuple[str, ...]] = []
        for rule, parsed in parsed_rules:
            if rule.selects(key):
                if () in parsed:
                    return None
                pointers.extend(parsed)
        return pointers

    report = DriftReport(objects=[], counts=dict.fromkeys(STATES, 0))
    wanted: dict[ObjectKey, Mapping[str, Any]] = {}
    for document in desired:
        key, in_scope = scope_key(document, default_namespace)
        if key is None:
            report.invalid += 1
        elif not in_scope:
            report.out_of_scope.append(key)
        else:
            wanted[key] = document
    present: dict[ObjectKey, Mapping[str, Any]] = {}
    for found in live:
        key, in_scope = scope_key(found, "")
        if key is not None and in_scope:
            present[key] = found

    for key in sorted(wanted.keys() | present.keys()):
        pointers = pointers_for(key) if parsed_rules else []
        if pointers is None:
            report.ignored.append(key)
            continue
        doc, obj = wanted.get(key), present.get(key)
        uid = str((obj.get("metadata") or {}).get("uid", "")) if obj is not None else ""
        if doc is None:
            assert obj is not None
            result = ObjectDrift(key, UNMANAGED, str(obj.get("apiVersion", "")), live_uid=uid)
        elif obj is None:
            result = ObjectDrift(key, MISSING, str(doc.get("apiVersion", "")))
        else:
            diffs, truncated = diff_object(doc, obj, pointers, max_diffs)
            state = DRIFTED if diffs else IN_SYNC
            result = ObjectDrift(key, state, str(doc.get("apiVersion", "")), tuple(diffs), truncated, uid)
        report.objects.append(result)
        report.counts[result.state] += 1
    report.out_of_scope.sort()
    return report
