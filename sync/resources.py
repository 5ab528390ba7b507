"""A fabric's stored resources after a sync, reading again only the manifest files that changed.

A fabric's stored state is its ``Resource`` rows and, for every manifest file the
last successful sync read, a ``ManifestFile`` row: path, Git blob id, parser version
and how many resources the file held. A sync (``sync.runner``):

1. lists the tree with blob ids (``GitSource.manifest_files``: the size and count
   limits apply to every file, read or not);
2. ``StoredFiles.changed``: the files whose blob (or parser version) is not the
   stored one. Only those are read and parsed. A blob id names the file's content,
   so a file whose blob was parsed before parses the same way again, whatever
   happened between the two commits (a force-push, an unrelated history);
3. ``plan_changes``: reads the stored resources those files touch, refuses a
   resource that an unchanged file declares too (the duplicate check a full parse
   makes), and works out what to create, update and delete (a file that is gone
   loses its resources). Before the live step, which gets the desired documents
   from the plan;
4. ``apply_changes``, in the sync's success transaction: the writes. Rows of
   unchanged files, and unchanged documents of a changed file, are not written.

Every file is read and parsed (``NO_FILES``) on a fabric's first sync, when
its source (URL, branch or folder) changed, and when the stored rows do not add up
(the per-file counts differ from the fabric's resources).

New rows go to PostgreSQL with ``COPY`` (``_insert``), the spec as the canonical JSON
the parser made for its hash (``ParsedResource.spec_json``): serialised once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import connection
from django.db.models import Model, Q
from django.utils import timezone

from sync.manifests import PARSER_VERSION, ParsedResource, canonical_json, duplicate_error
from sync.models import Fabric, ManifestFile, Resource
from sync.sources.git import TreeFile

logger = logging.getLogger(__name__)

BATCH = 2000
# A change of more documents or files than this reads all of the fabric's resource
# rows in one pass instead of looking up the ones it touches.
LOOKUP_LIMIT = 1000
_RESOURCE_FIELDS = (
    "fabric_id", "api_version", "kind", "namespace", "name", "spec", "content_hash", "source_file", "updated_at"
)  # fmt: skip
_FILE_FIELDS = ("fabric_id", "path", "blob", "parser", "resources")
_UPDATED = ["api_version", "spec", "content_hash", "source_file", "updated_at"]


@dataclass(frozen=True)
class ResourceCounts:
    created: int = 0
    updated: int = 0
    deleted: int = 0
    total: int = 0
    files_read: int = 0  # manifest files read and parsed by this sync
    files: int = 0  # manifest files in the tree


@dataclass(frozen=True)
class StoredFiles:
    """What the fabric's last successful sync read: path -> (blob id, parser version)."""

    blobs: dict[str, tuple[str, int]]
    resources: int  # the fabric's Resource rows, as many as the files' counts add up to

    def changed(self, tree: Iterable[TreeFile]) -> list[TreeFile]:
        """The files to read: new ones, and those whose blob or parser version differs."""
        return [f for f in tree if self.blobs.get(f.path) != (f.oid, PARSER_VERSION)]

    @property
    def full(self) -> bool:
        return not self.blobs


NO_FILES = StoredFiles({}, 0)  # nothing known: every file is read


def stored_files(fabric: Fabric, fingerprint: str) -> StoredFiles:
    """The files of the fabric's last successful sync, or ``NO_FILES`` to read every file."""
    if fabric.last_sync is None or fabric.source_fingerprint != fingerprint:
        return NO_FILES
    blobs, counted = {}, 0
    for path, blob, parser, resources in (
        ManifestFile.objects.filter(fabric=fabric).order_by().values_list("path", "blob", "parser", "resources")
    ):
        blobs[path] = (blob, parser)
        counted += resources
    if not blobs:
        return NO_FILES
    # sync.runner reads the count with the fabric; anyone else pays a query.
    stored = getattr(fabric, "stored_resources", None)
    if stored is None:
        stored = Resource.objects.filter(fabric=fabric).order_by().count()
    if stored != counted:  # rows written some other way: do not trust the file list
        logger.warning("fabric %s: %d resources, its files list %d: reading every file", fabric.name, stored, counted)
        return NO_FILES
    return StoredFiles(blobs, stored)


@dataclass
class ResourcePlan:
    """The writes that make the fabric's stored state what this sync read (``plan_changes``)."""

    fabric: Fabric
    full: bool
    replaced: frozenset[str]  # paths whose resources this sync replaces: read again, or gone
    parsed: list[ParsedResource]
    create: list[ParsedResource]
    update: list[tuple[int, ParsedResource]]
    delete: list[int]
    files: list[TreeFile]  # the files read, whose ManifestFile rows are written
    counts: ResourceCounts
    per_file: Counter[str] = field(default_factory=Counter)

    def desired_documents(self) -> list[dict[str, Any]]:
        """Every document of the fabric after this sync: the stored ones of unchanged files, then the parsed ones."""
        kept: list[dict[str, Any]] = []
        if not self.full:
            rows = Resource.objects.filter(fabric=self.fabric).exclude(source_file__in=self.replaced).order_by()
            kept = list(rows.values_list("spec", flat=True))
        return kept + [p.spec for p in self.parsed]


def plan_changes(
    fabric: Fabric,
    stored: StoredFiles,
    tree: Sequence[TreeFile],
    read: Sequence[TreeFile],
    parsed: Sequence[ParsedResource],
) -> ResourcePlan:
    """What to write so that the fabric holds ``parsed`` for the files ``read`` and keeps the rest.

    ``parsed`` comes from ``parse_manifests`` of the files ``read`` (no duplicates
    among them). Raises ``ManifestError`` when an unchanged file declares one of its
    resources too: the error a full parse gives for the first clash in path order.
    (A change with several errors may have another one reported than a full parse
    would report first; it is refused all the same.)
    """
    full = stored.full
    paths = {f.path for f in tree}
    replaced = frozenset({f.path for f in read} | (set(stored.blobs) - paths))
    desired = {p.key: p for p in parsed}

    columns = ("id", "kind", "namespace", "name", "source_file", "content_hash")
    rows = Resource.objects.filter(fabric=fabric).order_by()  # no ordering: it joins the fabric to sort
    if full or len(desired) + len(replaced) > LOOKUP_LIMIT:
        found = rows.values_list(*columns)
    else:
        # The rows of the files replaced, and any row (of another file) with a key read
        # here: index probes (resource_source_idx, the unique key), planned apart so a
        # new fabric's missing statistics cannot turn them into a pass over every row.
        same_key = Q(pk__in=[])
        for kind, namespace, name in desired:
            same_key |= Q(kind=kind, namespace=namespace, name=name)
        found = (
            rows.filter(source_file__in=replaced)
            .values_list(*columns)
            .union(rows.filter(same_key).values_list(*columns))
        )
    replaceable: dict[tuple[str, str, str], tuple[int, str, str]] = {}
    unchanged: dict[tuple[str, str, str], str] = {}
    for row_id, kind, namespace, name, source, digest in found:
        if full or source in replaced:
            replaceable[(kind, namespace, name)] = (row_id, source, digest)
        else:
            unchanged[(kind, namespace, name)] = source

    clashes = [
        (max(p.source_file, other), index, p, other)
        for index, p in enumerate(parsed)
        if (other := unchanged.get(p.key)) is not None
    ]
    if clashes:
        _, _, resource, other = min(clashes, key=lambda clash: clash[:2])
        first, second = sorted((resource.source_file, other))
        raise duplicate_error(resource, first, second)

    create, update = [], []
    for key, p in desired.items():
        current = replaceable.get(key)
        if current is None:
            create.append(p)
        elif current[2] != p.content_hash or current[1] != p.source_file:
            update.append((current[0], p))
    delete = [row[0] for key, row in replaceable.items() if key not in desired]
    kept = 0 if full else stored.resources - len(replaceable)
    counts = ResourceCounts(len(create), len(update), len(delete), kept + len(desired), len(read), len(tree))
    per_file = Counter(p.source_file for p in desired.values())
    return ResourcePlan(fabric, full, replaced, list(parsed), create, update, delete, list(read), counts, per_file)


def apply_changes(plan: ResourcePlan) -> ResourceCounts:
    """Write the plan. Call inside the sync's success transaction."""
    now = timezone.now()
    for start in range(0, len(plan.delete), BATCH):
        Resource.objects.filter(id__in=plan.delete[start : start + BATCH]).delete()
    if plan.update:
        Resource.objects.bulk_update(
            [
                Resource(
                    id=row_id,
                    api_version=p.api_version,
                    spec=p.spec,
                    content_hash=p.content_hash,
                    source_file=p.source_file,
                    updated_at=now,  # bulk_update skips auto_now
                )
                for row_id, p in plan.update
            ],
            _UPDATED,
            batch_size=BATCH,
        )
    copying = _copies()
    _insert(
        Resource,
        _RESOURCE_FIELDS,
        (
            (plan.fabric.id, p.api_version, p.kind, p.namespace, p.name,
             (p.spec_json or canonical_json(p.spec)) if copying else p.spec,
             p.content_hash, p.source_file, now)
            for p in plan.create
        ),
    )  # fmt: skip

    files = ManifestFile.objects.filter(fabric=plan.fabric)
    if plan.full:
        files.delete()
    else:
        replaced = sorted(plan.replaced)
        for start in range(0, len(replaced), BATCH):
            files.filter(path__in=replaced[start : start + BATCH]).delete()
    _insert(
        ManifestFile,
        _FILE_FIELDS,
        ((plan.fabric.id, f.path, f.oid, PARSER_VERSION, plan.per_file[f.path]) for f in plan.files),
    )
    return plan.counts


def _copies() -> bool:
    return connection.vendor == "postgresql"


def _insert(model: type[Model], fields: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> None:
    """Insert rows (values in ``fields`` order): one ``COPY`` on PostgreSQL, else ``bulk_create``.

    ``COPY`` because Django's bulk insert costs more than the database does: on
    PostgreSQL it sends each column as an array, and psycopg's array dumper escapes
    every quote of every JSON document in Python (under the profiler, 9.6 s of a 35 s
    first sync of 15,000 documents); model instances cost about 50 µs a row more. A
    JSON column gets its JSON text (``_copies``), which PostgreSQL parses as it would
    any other.
    """
    if not _copies():
        model._default_manager.bulk_create(
            (model(**dict(zip(fields, row, strict=True))) for row in rows), batch_size=BATCH
        )
        return
    quote = connection.ops.quote_name
    column = {f.attname: f.column for f in model._meta.concrete_fields}
    columns = ", ".join(quote(column[name]) for name in fields)
    # The COPY goes to psycopg's own cursor, past Django's error translation: without it
    # a connection the server terminated mid-COPY raised psycopg's AdminShutdown, not
    # Django's OperationalError, and the sync blamed the fabric for a database outage.
    with (
        connection.wrap_database_errors,
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {quote(model._meta.db_table)} ({columns}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)


def replace_resources(fabric: Fabric, parsed: Iterable[ParsedResource]) -> ResourceCounts:
    """Make the fabric's resources exactly ``parsed``. Call inside a transaction.

    Without the files they came from: the fabric's next sync reads every file.
    """
    parsed = list(parsed)
    plan = plan_changes(fabric, NO_FILES, [], [], parsed)
    return apply_changes(plan)
