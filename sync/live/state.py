"""The live objects of a fabric's cluster, read incrementally.

A *collection* is one tracked kind in one managed namespace. ``read_live`` keeps, per
collection, the objects and the resourceVersion they are current at, in a plain
JSON-able dict the caller stores (the fabric's row) and hands back next time:

1. A collection without a stored entry (first read, a kind or namespace added, another
   API server, or a full LIST older than ``relist_after``) is LISTed in pages of
   ``page_size``; the list's resourceVersion is kept.
2. Otherwise it is WATCHed from the stored resourceVersion (``KubeClient.watch_changes``:
   every change since, then it stops once the stream is quiet) and the events are
   applied: ADDED/MODIFIED replace an object, DELETED removes it, BOOKMARK only moves
   the resourceVersion. An unchanged cluster costs one short watch per collection.
3. A 410 Gone (the resourceVersion was compacted away) relists that collection.
4. First one ``GET /version`` (a probe): a dead or refusing cluster costs one call, not
   one per collection, and an open breaker one rejection. Then the collections are read
   ``max_workers`` at a time, so an unchanged cluster costs about one quiet watch
   (``idle_seconds``) of wall time, however many collections it has. The threads are
   one pool per process, reused by every read: each thread keeps its breaker's Redis
   connection (``core.breaker_redis`` opens one per thread and counts it against the
   pool's limit for good), so a long-lived worker does not use up Redis connections
   one sync at a time.
5. Errors about the cluster (unreachable, breaker open, token refused, TLS) stop the
   read and raise; nothing of it is kept, the caller keeps its old state. Errors about
   one collection (403 for that kind, 404 when its CRD is missing) are collected in
   ``errors``; its previous entry is kept, and the read is not ``complete``: drift
   computed from it would call that kind's objects missing, so the caller should not.

State layout (``STATE_VERSION``)::

    {"version": 1, "server": "https://host:6443",
     "collections": {"vpc.githedgehog.com/v1beta1/vpcs@fab": {
         "group": ..., "version": ..., "plural": ..., "namespace": "fab",
         "resource_version": "4711", "listed_at": 1795329831.0,
         "objects": {"vpc-1": {...}, ...}}}}

Objects are stored as the server sent them minus ``metadata.managedFields`` (often half
an object's size, and never compared).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from sync.live.client import (
    ClusterUnavailable,
    Gone,
    KubeClient,
    KubeError,
    KubeTLSError,
    KubeTransientError,
    KubeUnauthorized,
)
from sync.live.kinds import Kind

STATE_VERSION = 1
MAX_READERS = 16  # threads of the per-process reading pool
# Errors that are about the cluster, not one collection: they stop the whole read.
CLUSTER_ERRORS = (ClusterUnavailable, KubeTransientError, KubeUnauthorized, KubeTLSError)


@dataclass(frozen=True)
class Collection:
    kind: Kind
    namespace: str  # "" for a cluster-scoped kind

    @property
    def id(self) -> str:
        k = self.kind
        return f"{k.group}/{k.version}/{k.plural}@{self.namespace}"


@dataclass
class ReadStats:
    collections: int = 0
    probes: int = 0  # GET /version before the collections
    lists: int = 0  # collections read with a full LIST (first reads and relists)
    list_pages: int = 0
    relists: int = 0  # of those, after a 410 Gone
    watches: int = 0
    events: int = 0  # ADDED/MODIFIED/DELETED applied

    def add(self, other: ReadStats) -> None:
        for name in ("lists", "list_pages", "relists", "watches", "events"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class LiveRead:
    state: dict[str, Any]  # store it, hand it back next time
    changed: bool  # False: the state equals the one handed in, nothing to store
    stats: ReadStats
    errors: dict[str, str] = field(default_factory=dict)  # collection id -> operator message

    @property
    def complete(self) -> bool:
        return not self.errors

    def objects(self) -> list[dict[str, Any]]:
        """Every live object of every collection, in collection then name order."""
        out: list[dict[str, Any]] = []
        for _, entry in sorted(self.state.get("collections", {}).items()):
            out.extend(entry["objects"][name] for name in sorted(entry["objects"]))
        return out


def collections_for(kinds: Iterable[Kind], namespaces: Iterable[str]) -> list[Collection]:
    """One collection per namespaced kind and namespace, one per cluster-scoped kind."""
    spaces = list(dict.fromkeys(namespaces))
    out: list[Collection] = []
    for kind in kinds:
        out.extend(Collection(kind, ns) for ns in spaces) if kind.namespaced else out.append(Collection(kind, ""))
    return out


def empty_state(server: str) -> dict[str, Any]:
    return {"version": STATE_VERSION, "server": server, "collections": {}}


def _slim(obj: Mapping[str, Any]) -> dict[str, Any]:
    metadata = obj.get("metadata")
    if isinstance(metadata, Mapping) and "managedFields" in metadata:
        return {**obj, "metadata": {k: v for k, v in metadata.items() if k != "managedFields"}}
    return dict(obj)


def _object_key(obj: Mapping[str, Any], collection: Collection) -> str:
    metadata = obj.get("metadata") or {}
    name = str(metadata.get("name", ""))
    return name if collection.namespace or not collection.kind.namespaced else f"{metadata.get('namespace', '')}/{name}"


def _list(client: KubeClient, collection: Collection, page_size: int, now: float) -> tuple[dict[str, Any], ReadStats]:
    kind = collection.kind
    result = client.list(kind.group, kind.version, kind.plural, collection.namespace or None, limit=page_size)
    entry = {
        "group": kind.group,
        "version": kind.version,
        "plural": kind.plural,
        "namespace": collection.namespace,
        "resource_version": result.resource_version,
        "listed_at": now,
        "objects": {_object_key(obj, collection): _slim(obj) for obj in result.items},
    }
    return entry, ReadStats(lists=1, list_pages=result.pages)


def read_collection(
    client: KubeClient,
    collection: Collection,
    entry: Mapping[str, Any] | None,
    *,
    now: float,
    page_size: int = 500,
    watch_timeout: int = 5,
    idle_seconds: float = 0.05,
    relist_after: float | None = 3600.0,
) -> tuple[dict[str, Any], bool, ReadStats]:
    """One collection, steps 1-3 of the module docstring: (new entry, changed, stats)."""
    stale = relist_after is not None and now - float((entry or {}).get("listed_at", 0)) >= relist_after
    if entry is None or stale or not entry.get("resource_version"):
        new, stats = _list(client, collection, page_size, now)
        return new, True, stats
    kind = collection.kind
    try:
        result = client.watch_changes(
            kind.group,
            kind.version,
            kind.plural,
            collection.namespace or None,
            str(entry["resource_version"]),
            timeout_seconds=watch_timeout,
            idle_seconds=idle_seconds,
        )
    except Gone:
        new, stats = _list(client, collection, page_size, now)
        stats.relists = 1
        return new, True, stats
    stats = ReadStats(watches=1)
    if not result.events:
        return dict(entry), False, stats
    objects = dict(entry["objects"])
    for event in result.events:
        if event.type == "BOOKMARK":
            continue
        key = _object_key(event.object, collection)
        if event.type == "DELETED":
            objects.pop(key, None)
        else:
            objects[key] = _slim(event.object)
        stats.events += 1
    new = {**entry, "objects": objects, "resource_version": result.resource_version}
    return new, True, stats


# One collection's read: (collection, new entry or None, changed, stats, its error or None).
_Outcome = tuple[Collection, dict[str, Any] | None, bool, ReadStats, KubeError | None]
_pool: ThreadPoolExecutor | None = None  # threads, not state: rebuilt after a fork
_pool_pid = 0
_pool_lock = threading.Lock()


def reading_pool() -> ThreadPoolExecutor:
    """This process's pool of ``MAX_READERS`` reading threads (step 4)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=MAX_READERS, thread_name_prefix="kube-read")
            _pool_pid = os.getpid()
        return _pool


def read_live(
    client: KubeClient,
    kinds: Sequence[Kind],
    namespaces: Sequence[str],
    state: Mapping[str, Any] | None = None,
    *,
    now: float,
    page_size: int = 500,
    watch_timeout: int = 5,
    idle_seconds: float = 0.05,
    relist_after: float | None = 3600.0,
    max_workers: int = 16,
) -> LiveRead:
    """The live objects of ``kinds`` in ``namespaces``, from ``state`` onwards (the module
    docstring's steps). ``now`` is epoch seconds. Raises the ``CLUSTER_ERRORS``."""
    if not state or state.get("version") != STATE_VERSION or state.get("server") != client.server:
        old: dict[str, Any] = {}
        reset = bool(state)
    else:
        old = dict(state.get("collections") or {})
        reset = False
    collections = collections_for(kinds, namespaces)
    wanted = {c.id for c in collections}
    stats = ReadStats(collections=len(collections))
    new_collections: dict[str, Any] = {}
    errors: dict[str, str] = {}
    changed = reset or any(cid not in wanted for cid in old)

    def one(collection: Collection) -> tuple[Collection, dict[str, Any] | None, bool, ReadStats, KubeError | None]:
        try:
            entry, was_changed, read_stats = read_collection(
                client,
                collection,
                old.get(collection.id),
                now=now,
                page_size=page_size,
                watch_timeout=watch_timeout,
                idle_seconds=idle_seconds,
                relist_after=relist_after,
            )
        except CLUSTER_ERRORS:
            raise
        except KubeError as exc:
            return collection, None, False, ReadStats(), exc
        return collection, entry, was_changed, read_stats, None

    def record(outcome: tuple[Collection, dict[str, Any] | None, bool, ReadStats, KubeError | None]) -> None:
        nonlocal changed
        collection, entry, was_changed, read_stats, error = outcome
        stats.add(read_stats)
        if error is not None:
            errors[collection.id] = str(error)
            if collection.id in old:
                new_collections[collection.id] = old[collection.id]  # the last known, kept
            return
        new_collections[collection.id] = entry
        changed = changed or was_changed

    if collections:
        client.version()  # step 4: the probe; raises the classified error
        stats.probes = 1
        slots = threading.BoundedSemaphore(max(1, min(max_workers, MAX_READERS)))

        def limited(collection: Collection) -> _Outcome:
            with slots:
                return one(collection)

        pool = reading_pool()
        futures: list[Future[Any]] = [pool.submit(limited, c) for c in collections]
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f.done() and f.exception() is not None), None)
        if failed is not None:
            for future in pending:
                future.cancel()
            wait(futures)  # those already running finish before we return: no call outlives the read
            exc = failed.exception()
            assert exc is not None
            raise exc
        for future in futures:
            record(future.result())
    new_state = {"version": STATE_VERSION, "server": client.server, "collections": new_collections}
    return LiveRead(new_state, changed, stats, errors)
