"""A fabric in failure backoff whose remote has a new commit is due on the next tick.

A fabric that failed on a commit (bad YAML, a validation error) backs off for up to
``SYNC_FAILURE_BACKOFF_MAX`` (an hour). The usual fix is a new commit, and waiting out
the backoff for it helps nobody. A push webhook cuts the backoff short at once
(``sync.push_sync``); for repositories without one, the tick sends ``sync.probe_backoff``
at most every ``SYNC_BACKOFF_PROBE_SECONDS``. That task asks each remote of the
backed-off fabrics for its branch head (one ``git ls-remote`` per repository, branch
and credential, through the remote's breaker like every git call) and makes the
fabrics whose failed commit is no longer the head due now, for the next tick's claim.

Only fabrics whose last run recorded the commit it failed on are probed: one that
failed before a commit was known (the remote refused or was unreachable) gains nothing
from asking the same remote again. Suspended fabrics stay suspended, and a fabric
under a lease is left alone. A failed probe changes nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime

import redis
from django.conf import settings
from django.core.cache import cache
from django.db.models import OuterRef, QuerySet, Subquery
from django.utils import timezone

from core.clients import redis_client
from core.credentials import CredentialError, git_credential_env
from core.tick import tick_step
from sync.errors import SyncError
from sync.models import Fabric, SyncRun, SyncStatus
from sync.sources.git import GitSource, RemoteUnavailable

logger = logging.getLogger(__name__)

PROBE_KEY = "sync:backoff-probe"  # under the cache key prefix: one per deployment
MAX_REMOTES = 200  # per probe: a bound on the git processes one task starts


def in_backoff(now: datetime) -> QuerySet[Fabric]:
    """Enabled fabrics waiting out a failure backoff, unleased, with the commit they failed on."""
    failed_commit = SyncRun.objects.filter(fabric=OuterRef("pk")).order_by("-started_at").values("commit")[:1]
    return (
        Fabric.objects.filter(sync_enabled=True, consecutive_failures__gt=0, next_sync_at__gt=now, lease_token="")
        .exclude(sync_status=SyncStatus.SUSPENDED)
        .annotate(failed_commit=Subquery(failed_commit))
        .exclude(failed_commit__isnull=True)
        .exclude(failed_commit="")
    )


def probe(now: datetime) -> dict[str, int]:
    """Make due every backed-off fabric whose remote branch moved past its failed commit."""
    groups: dict[tuple[str, str, int | None], list[Fabric]] = {}
    for fabric in in_backoff(now).select_related("git_credential"):
        groups.setdefault((fabric.git_url, fabric.git_branch, fabric.git_credential_id), []).append(fabric)
    made_due = remotes = errors = 0
    for (url, branch, _credential), fabrics in list(groups.items())[:MAX_REMOTES]:
        remotes += 1
        try:
            extra_env = git_credential_env(fabrics[0].git_credential, url)
            # ls-remote never touches the cache folder.
            head = GitSource(url, branch, settings.SYNC_GIT_CACHE_DIR, settings.SYNC_GIT_TIMEOUT,
                             extra_env=extra_env).remote_commit()  # fmt: skip
        except (SyncError, RemoteUnavailable, CredentialError) as exc:
            errors += 1
            logger.info("backoff probe: remote not asked or refused (%s)", type(exc).__name__)
            continue
        moved = [fabric.id for fabric in fabrics if fabric.failed_commit != head]  # type: ignore[attr-defined]
        if moved:
            made_due += (
                Fabric.objects.filter(id__in=moved, consecutive_failures__gt=0, next_sync_at__gt=now, lease_token="")
                .exclude(sync_status=SyncStatus.SUSPENDED)
                .update(next_sync_at=timezone.now())
            )
    return {"remotes_asked": remotes, "remote_errors": errors, "fabrics_made_due": made_due}


@tick_step("backoff_probe", order=20)
def send_probe(now: datetime) -> dict[str, int]:
    """Send ``sync.probe_backoff`` when fabrics wait in backoff and no probe ran lately."""
    seconds = settings.SYNC_BACKOFF_PROBE_SECONDS
    if seconds <= 0 or not in_backoff(now).exists():
        return {"probe_sent": 0}
    try:
        # Several ticks (beats, hosts) may run at once: one probe per period.
        if not redis_client().set(cache.make_key(PROBE_KEY), now.isoformat(), nx=True, ex=seconds):
            return {"probe_sent": 0}
    except redis.RedisError as exc:
        logger.warning("backoff probe skipped: Redis unavailable (%s)", type(exc).__name__)
        return {"probe_sent": 0}
    from sync.tasks import probe_backoff

    probe_backoff.delay()
    return {"probe_sent": 1}
