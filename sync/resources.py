"""Replace a fabric's stored resources with what a sync parsed: upsert changed, delete removed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.utils import timezone

from sync.manifests import ParsedResource
from sync.models import Fabric, Resource

BATCH = 500


@dataclass(frozen=True)
class ResourceCounts:
    created: int = 0
    updated: int = 0
    deleted: int = 0
    total: int = 0


def replace_resources(fabric: Fabric, parsed: Iterable[ParsedResource]) -> ResourceCounts:
    """Make the fabric's resources equal ``parsed``. Call inside a transaction.

    Unchanged resources (same content hash and source file) are not written at all,
    so a sync that changes one manifest of thousands writes one row.
    """
    desired = {p.key: p for p in parsed}
    existing = {
        (r.kind, r.namespace, r.name): r
        for r in Resource.objects.filter(fabric=fabric).only(
            "id", "kind", "namespace", "name", "content_hash", "source_file"
        )
    }
    to_create = [
        Resource(
            fabric=fabric,
            api_version=p.api_version,
            kind=p.kind,
            namespace=p.namespace,
            name=p.name,
            spec=p.spec,
            content_hash=p.content_hash,
            source_file=p.source_file,
        )
        for key, p in desired.items()
        if key not in existing
    ]
    to_update = []
    for key, p in desired.items():
        current = existing.get(key)
        if current is None or (current.content_hash == p.content_hash and current.source_file == p.source_file):
            continue
        current.api_version, current.spec = p.api_version, p.spec
        current.content_hash, current.source_file = p.content_hash, p.source_file
        current.updated_at = timezone.now()  # bulk_update skips auto_now
        to_update.append(current)
    stale_ids = [r.id for key, r in existing.items() if key not in desired]

    Resource.objects.bulk_create(to_create, batch_size=BATCH)
    if to_update:
        Resource.objects.bulk_update(
            to_update, ["api_version", "spec", "content_hash", "source_file", "updated_at"], batch_size=BATCH
        )
    for start in range(0, len(stale_ids), BATCH):
        Resource.objects.filter(id__in=stale_ids[start : start + BATCH]).delete()
    return ResourceCounts(len(to_create), len(to_update), len(stale_ids), len(desired))
