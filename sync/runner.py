"""One sync of one fabric, start to finish, under a lease the caller already holds.

Plain functions, no Celery: the task in ``sync.tasks`` and the ``sync`` management
command both call ``run_sync``. The caller decides about retries; this module
records every attempt as a ``SyncRun`` and every outcome on the fabric, guarded by
the lease token so a sync that lost its lease can never overwrite newer state.

Errors leave here unchained (raised outside any ``except``): an original exception's
text or traceback may hold a URL with credentials, and Celery logs and stores the
whole chain.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, transaction
from django.db.models import Case, Count, DateTimeField, F, IntegerField, OuterRef, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from core.credentials import CredentialError, git_credential_env
from core.process_limits import is_resource_exhaustion
from core.redaction import redact
from sync import leases, remote_check
from sync.errors import (
    DatabaseUnavailable,
    PermanentSyncError,
    SyncError,
    TransientSyncError,
    WorkerResourcesExhausted,
)
from sync.live.sync_step import LiveOutcome, run_live_step, store_outcome, stored_documents
from sync.manifests import parse_manifests
from sync.models import Fabric, FabricCluster, Resource, RunStatus, SyncRun, SyncStatus
from sync.progress_commit import progress_transaction
from sync.resources import ResourceCounts, apply_changes, plan_changes, stored_files
from sync.scheduling import next_sync_after_failure, next_sync_after_success, should_suspend
from sync.sources.git import GitSource, RemoteUnavailable, cache_dir_for, source_fingerprint

logger = logging.getLogger(__name__)
Clock = Callable[[], datetime]


class LeaseLost(SyncError):
    """Our lease was taken over (it expired); this attempt's results are discarded."""


@dataclass(frozen=True)
class SyncResult:
    fabric: str
    status: str
    commit: str
    resources: int
    counts: ResourceCounts
    duration_ms: int
    # A fabric with a cluster: the drift status after this sync, what the live step did
    # (a ``LiveStatus``) and its error. Empty without a cluster.
    drift: str = ""
    live: str = ""
    live_error: str = ""
    drift_counts: dict[str, int] | None = None

    def as_dict(self) -> dict[str, object]:
        result: dict[str, object] = {
            "fabric": self.fabric,
            "status": self.status,
            "commit": self.commit,
            "resources": self.resources,
            "created": self.counts.created,
            "updated": self.counts.updated,
            "deleted": self.counts.deleted,
            "files_read": self.counts.files_read,
            "duration_ms": self.duration_ms,
        }
        if self.live:
            result.update(drift=self.drift, live=self.live, live_error=self.live_error)
        return result


def _elapsed_ms(start: datetime, end: datetime) -> int:
    return max(0, int((end - start).total_seconds() * 1000))


def run_sync(
    fabric_id: int,
    token: str,
    *,
    trigger: str,
    worker: str,
    attempt: int = 1,
    may_retry: bool = False,
    clock: Clock = timezone.now,
) -> SyncResult:
    """Sync one fabric whose lease (``token``) is held in SYNCING.

    1. Record a RUNNING ``SyncRun``.
    2. Ask the remote for the branch's commit. Same commit and same source as the
       last success: finish fast as UNCHANGED.
    3. Otherwise fetch (shallow, cached) and list ``*.yaml``/``*.yml`` under
       ``git_path`` with their Git blob ids; read, parse and validate the files whose
       blob the last success did not read (``sync.resources``: every file on a first
       sync or a changed source).
    4. A fabric with a cluster: the live step (``sync.live.sync_step``) reads the
       cluster, compares it with the desired documents and, in reconcile mode,
       applies them. Its failures never fail the sync: they are recorded beside the
       Git result (the run's ``live_status``/``live_error``, drift ``unknown``).
    5. In one transaction: upsert changed resources, delete removed ones (rows of
       unchanged files are not written), store the live step's outcome, and mark
       the fabric IN_SYNC, but only if our lease token is still on it.
    On failure the run and the fabric record a redacted reason and the error is
    re-raised, so Celery's task state is truthful. A transient failure with
    ``may_retry`` keeps the lease (QUEUED) for the caller's retry. When the remote's
    breaker rejects the call, the run is SKIPPED (``record_skip``) and
    ``RemoteUnavailable`` is raised: no failure is counted and no retry is due.
    """
    try:
        return _run_sync(fabric_id, token, trigger=trigger, worker=worker, attempt=attempt, may_retry=may_retry,
                         clock=clock)  # fmt: skip
    except (OperationalError, InterfaceError) as exc:
        # Wherever the connection broke (even while recording another failure), the
        # database is the one that failed; the caller waits for it and resumes.
        raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}") from None
    except OSError as exc:
        if not is_resource_exhaustion(exc):
            raise
        raise WorkerResourcesExhausted(f"worker out of file descriptors: {exc.strerror}") from None


# The number of a fabric's stored resources, as a subquery of the fabric's own query.
RESOURCE_TOTAL = Coalesce(
    Subquery(
        Resource.objects.filter(fabric=OuterRef("pk")).order_by().values("fabric").annotate(n=Count("*")).values("n"),
        output_field=IntegerField(),
    ),
    0,
)


def _run_sync(
    fabric_id: int, token: str, *, trigger: str, worker: str, attempt: int, may_retry: bool, clock: Clock
) -> SyncResult:
    # The cluster row (if any) and its token come in the same query: a Git-only fabric
    # costs no extra query for having no cluster. So does the number of stored
    # resources, which an unchanged sync records on its run.
    fabrics = Fabric.objects.select_related("cluster__token").annotate(stored_resources=RESOURCE_TOTAL)
    fabric = fabrics.get(id=fabric_id)
    started = clock()
    with progress_transaction():  # a progress marker: sync.progress_commit
        run = SyncRun.objects.create(
            fabric=fabric, trigger=trigger, attempt=attempt, lease_token=token, worker=worker[:200], started_at=started
        )
    try:
        return _sync(fabric, token, run, started, clock)
    except RemoteUnavailable as exc:
        record_skip(fabric, token, run, exc, clock=clock)
        raise
    except LeaseLost:
        _finish_run(run, RunStatus.LOST, clock(), error=LeaseLost("lease expired before the sync finished"))
        raise
    except SyncError as exc:
        record_failure(
            fabric, token, run, exc, will_retry=may_retry and isinstance(exc, TransientSyncError), clock=clock
        )
        raise
    except SoftTimeLimitExceeded:
        error: SyncError = TransientSyncError(f"sync exceeded its soft time limit of {settings.SYNC_SOFT_TIME_LIMIT} s")
        will_retry = False
    except (OperationalError, InterfaceError, DatabaseUnavailable):
        raise  # the database went away (or no connection can be opened): not this fabric's failure (run_sync)
    except DatabaseError as exc:
        error = TransientSyncError(f"database error: {redact(str(exc))}")
        will_retry = may_retry
    except Exception as exc:  # a bug or an unforeseen input: fail this fabric only, loudly
        if is_resource_exhaustion(exc):
            raise  # the worker is out of file descriptors: the machine's failure (run_sync)
        # The traceback redacted: the logging filter redacts messages, not tracebacks.
        details = redact("".join(traceback.format_exception(exc)))
        logger.error("unexpected error syncing fabric %s:\n%s", fabric.name, details)
        error = PermanentSyncError(f"unexpected {type(exc).__name__}: {redact(str(exc))}")
        will_retry = False
    record_failure(fabric, token, run, error, will_retry=will_retry, clock=clock)
    raise error  # outside the handlers: the original is neither its __cause__ nor its __context__


def _sync(fabric: Fabric, token: str, run: SyncRun, started: datetime, clock: Clock) -> SyncResult:
    source = GitSource(
        fabric.git_url,
        fabric.git_branch,
        cache_dir_for(settings.SYNC_GIT_CACHE_DIR, fabric.id, fabric.git_url),
        settings.SYNC_GIT_TIMEOUT,
        extra_env=_git_credential_env(fabric),
    )
    fingerprint = source_fingerprint(fabric.git_url, fabric.git_branch, fabric.git_path)
    commit = remote_check.branch_commit(source, token)  # one ls-remote per repository and claim
    run.commit = commit  # from here on a failure, saved by _finish_run, says which commit it failed on
    unchanged = (
        commit == fabric.current_commit
        and fingerprint == fabric.source_fingerprint
        and fabric.last_sync is not None
        and fabric.consecutive_failures == 0
    )
    cluster = cluster_of(fabric)
    if unchanged:
        counts = ResourceCounts(total=fabric.stored_resources)  # type: ignore[attr-defined]  # annotated above
        live = _live_step(cluster, stored_documents(fabric.id), commit, fingerprint, run, clock)
        _commit_success(fabric, token, run, commit, fingerprint, counts, RunStatus.UNCHANGED, clock, live)
    else:
        _store_commit(run, commit)
        commit = source.fetch()
        if commit != run.commit:  # the branch moved since ls-remote
            _store_commit(run, commit)
        tree = source.manifest_files(
            commit, fabric.git_path, settings.SYNC_MAX_MANIFEST_BYTES, settings.SYNC_MAX_MANIFESTS
        )
        # Only the files whose Git blob the last success did not read (sync.resources).
        stored = stored_files(fabric, fingerprint)
        read = stored.changed(tree)
        parsed = parse_manifests(source.read_blobs(read))
        plan = plan_changes(fabric, stored, tree, read, parsed)
        live = _live_step(cluster, plan.desired_documents, commit, fingerprint, run, clock)
        with transaction.atomic():
            counts = apply_changes(plan)
            _commit_success(fabric, token, run, commit, fingerprint, counts, RunStatus.SUCCESS, clock, live)
    finished = run.finished_at or clock()
    result = SyncResult(fabric.name, run.status, commit, counts.total, counts, _elapsed_ms(started, finished))
    if live is not None:
        result = replace(
            result,
            drift=live.drift_status,
            live=live.status,
            live_error=live.error,
            drift_counts=live.drift_counts,
        )
    return result


def _store_commit(run: SyncRun, commit: str) -> None:
    """Store the commit on the RUNNING run before the slow part (fetch, parse, apply): a
    worker killed there leaves its LOST run saying which commit it died on. One UPDATE,
    only on the path that fetches; the unchanged path keeps the commit in memory."""
    run.commit = commit
    SyncRun.objects.filter(id=run.id).update(commit=commit)


def _live_step(
    cluster: FabricCluster | None,
    desired: Callable[[], list[dict[str, Any]]],
    commit: str,
    fingerprint: str,
    run: SyncRun,
    clock: Clock,
) -> LiveOutcome | None:
    """Step 4 of ``run_sync`` for a fabric with a cluster; None without one."""
    if cluster is None:
        return None
    return run_live_step(cluster, desired=desired, source=(commit, fingerprint), trigger=run.trigger, now=clock())


def cluster_of(fabric: Fabric) -> FabricCluster | None:
    """The fabric's cluster, or None; no query when it was selected with the fabric."""
    try:
        return fabric.cluster
    except FabricCluster.DoesNotExist:
        return None


def _git_credential_env(fabric: Fabric) -> dict[str, str]:
    """The fabric's Git credential as git's environment; one that cannot be used fails the sync for good."""
    try:
        return git_credential_env(fabric.git_credential, fabric.git_url)
    except CredentialError as exc:  # the message names the credential, never its secret
        raise PermanentSyncError(str(exc)) from None


def _commit_success(
    fabric: Fabric,
    token: str,
    run: SyncRun,
    commit: str,
    fingerprint: str,
    counts: ResourceCounts,
    status: RunStatus,
    clock: Clock,
    live: LiveOutcome | None = None,
) -> None:
    finished = clock()
    with transaction.atomic():
        won = Fabric.objects.filter(id=fabric.id, lease_token=token, sync_status=SyncStatus.SYNCING).update(
            sync_status=SyncStatus.IN_SYNC,
            last_sync=finished,
            next_sync_at=_unless_moved(
                fabric,
                next_sync_after_success(
                    finished, fabric.sync_interval, due_at=fabric.next_sync_at, grace_seconds=settings.TICK_SECONDS
                ),
            ),
            consecutive_failures=0,
            failing_since=None,
            # The Git result stands; a live failure is still what an operator should see.
            last_error=live.fabric_error if live is not None else "",
            current_commit=commit,
            source_fingerprint=fingerprint,
            lease_token="",
            lease_expires_at=None,
            lease_owner="",
            lease_deliveries=0,
        )
        if not won:
            raise LeaseLost(f"fabric {fabric.name}: lease lost before the sync could be recorded")
        run.commit = commit
        run.resources_created, run.resources_updated = counts.created, counts.updated
        run.resources_deleted, run.resources_total = counts.deleted, counts.total
        if live is not None:
            store_outcome(live, fabric.cluster, run, finished)
        _finish_run(run, status, finished)


def _unless_moved(fabric: Fabric, computed: datetime) -> Case:
    """``computed``, unless the fabric's due time was moved while it synced: then the moved one.

    A push (``sync.push_sync``) or an operator's edit of the source makes a fabric due
    now even while its sync runs; that sync may have read the remote before the new
    commit or the new settings, so the tick must sync it again rather than have this
    outcome push the due time out by an interval.
    """
    return Case(
        When(next_sync_at=fabric.next_sync_at, then=Value(computed)),
        default=F("next_sync_at"),
        output_field=DateTimeField(),
    )


def _finish_run(run: SyncRun, status: str, finished: datetime, error: Exception | None = None) -> None:
    run.status = status
    run.finished_at = finished
    run.duration_ms = _elapsed_ms(run.started_at, finished)
    if error is not None:
        run.error_class = type(error).__name__
        run.error_message = redact(str(error))
    run.save(update_fields=_run_outcome_fields())


def _run_outcome_fields() -> list[str]:
    """Every column of a run but those fixed when it was created (``_run_sync``): the
    UPDATE that finishes a run leaves the fabric, trigger, lease and start alone."""
    fixed = {"id", "fabric", "trigger", "attempt", "lease_token", "worker", "started_at"}
    return [f.name for f in SyncRun._meta.concrete_fields if f.name not in fixed]


def record_skip(fabric: Fabric, token: str, run: SyncRun, skipped: RemoteUnavailable, *, clock: Clock) -> None:
    """Record a sync skipped because the remote's breaker rejected the call.

    A truthful, visible outcome that is not a failure: the run is SKIPPED with the
    reason, the fabric keeps its status and its failure count, says why in
    ``last_error``, gives its lease back and is due again when the breaker admits
    calls (``retry_at``), or after its interval if an operator holds the breaker open.
    """
    now = clock()
    _finish_run(run, RunStatus.SKIPPED, now, skipped)
    retry_at = skipped.retry_at or next_sync_after_success(now, fabric.sync_interval)
    leases.release_skipped(fabric.id, token, max(retry_at, now), redact(str(skipped))[:2000])
    logger.info("sync of fabric %s skipped: %s", fabric.name, skipped)


def record_failure(
    fabric: Fabric, token: str, run: SyncRun | None, error: Exception, *, will_retry: bool, clock: Clock
) -> None:
    """Record a failed attempt on the run and the fabric (only while we hold the lease).

    A retrying failure keeps the lease and returns the fabric to QUEUED. A final one
    counts a consecutive failure (the streak's first also sets ``failing_since``),
    pushes ``next_sync_at`` out exponentially and suspends the fabric once
    ``SYNC_SUSPEND_AFTER_FAILURES`` is reached.
    """
    now = clock()
    message = redact(str(error))[:2000]
    if run is not None:
        _finish_run(run, RunStatus.RETRYING if will_retry else RunStatus.FAILED, now, error)
    held = Fabric.objects.filter(id=fabric.id, lease_token=token)
    if will_retry:
        held.filter(sync_status=SyncStatus.SYNCING).update(last_error=message)
        return
    failures = fabric.consecutive_failures + 1
    suspended = should_suspend(failures, settings.SYNC_SUSPEND_AFTER_FAILURES)
    last_error = message
    if suspended:
        last_error = f"Suspended after {failures} consecutive failures; last: {message}"
    held.update(
        sync_status=SyncStatus.SUSPENDED if suspended else SyncStatus.ERROR,
        consecutive_failures=F("consecutive_failures") + 1,
        failing_since=leases.streak_start(now),
        last_error=last_error,
        next_sync_at=_unless_moved(
            fabric, next_sync_after_failure(now, failures, fabric.sync_interval, settings.SYNC_FAILURE_BACKOFF_MAX)
        ),
        lease_token="",
        lease_expires_at=None,
        lease_owner="",
        lease_deliveries=0,
    )
    logger.warning("sync of fabric %s failed (%s): %s", fabric.name, type(error).__name__, message)
