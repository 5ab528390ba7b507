"""Model factories: plain functions with sensible defaults."""

from __future__ import annotations

from datetime import datetime
from itertools import count
from typing import Any

from django.utils import timezone

from sync.models import Fabric

_numbers = count(1)


def make_fabric(git_url: str = "/nonexistent/repo", *, now: datetime | None = None, **fields: Any) -> Fabric:
    defaults: dict[str, Any] = {
        "name": f"fabric-{next(_numbers)}",
        "git_branch": "main",
        "git_path": "manifests",
        "sync_interval": 300,
        "next_sync_at": now or timezone.now(),
    }
    defaults.update(fields)
    return Fabric.objects.create(git_url=git_url, **defaults)
