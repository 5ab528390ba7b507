"""Unchanged fabrics of a claimed chunk, recorded in bulk: one remote check per remote.

A scheduled sync of a Git-only fabric whose remote still has the commit it last synced
does nothing but ask the remote and record that nothing changed. Per fabric that cost a
Celery task, five statements and a WAL flush (docs/benchmarks.md, "Sync throughput"),
and most of the 250 fabrics of a ``sync.fan_out`` chunk follow a few repositories. So
``sync.fan_out`` hands its chunk to ``process_chunk`` before expanding it:

1. Select, in one query, the chunk's fabrics that may be recorded in bulk: still QUEUED
   under the claim's token, no cluster (the live step stays per fabric), synced before,
   no failure and no worker death counted since, and the source (URL, branch, path)
   fingerprint of that last success. The others go to their own ``sync.sync_fabric``
   task at once, exactly as before.
2. Group the candidates by remote identity (URL, branch and credential) and ask each
   remote once, concurrently (``sync.remote_check``: one answer per claim, shared with
   the claim's other chunks), within ``REMOTE_DEADLINE`` seconds. A remote that fails
   in any way (URL refused, breaker open, branch missing, timeout, no answer by the
   deadline) sends its fabrics to their own tasks, which record that outcome
   truthfully. A fabric whose remote commit differs goes to its own task to fetch.
3. In one transaction, the outcome's only commit (it waits for the WAL flush like
   every outcome): one UPDATE ... RETURNING moves each unchanged fabric from QUEUED
   straight to IN_SYNC where the claim's token and step 1's conditions still hold and
   no other session has the row locked (``SKIP LOCKED``), writing the columns the
   per-fabric success writes (``sync.runner._commit_success``): last sync, the next
   due time of ``sync.scheduling.next_sync_after_success`` anchored on the due time
   read in step 1 (kept if it moved meanwhile: a push or an edit), failures, failure
   streak and error cleared, the lease cleared and its death count reset; then one
   INSERT of a finished UNCHANGED ``SyncRun`` per fabric the UPDATE returned (trigger,
   commit, resource count, worker, start, finish, duration). A candidate the UPDATE
   did not return (a newer claim, a cluster added meanwhile) goes to its own task,
   which drops it if its claim is gone.
4. Failures: an exception in steps 1-2 sends the chunk's fabrics to their own tasks;
   one in step 3 rolls the transaction back and sends its fabrics too. Nothing is lost
   (every claim not recorded is still QUEUED under its token and gets its task) and
   nothing is recorded twice (a task for a fabric whose outcome did commit, say
   before its connection dropped, finds its token gone and is dropped).

The lease is taken and given back inside one transaction, so no session ever sees these
fabrics SYNCING and no run is ever RUNNING. A worker killed mid-chunk leaves the
database as it was before step 3 (PostgreSQL rolls an open transaction back; SQLite's
journal does), every claim of the chunk still QUEUED; ``sync.fan_out`` is acknowledged
late, so the broker gives the chunk to another worker, which finds the fabrics already
recorded no longer QUEUED under the token and handles the rest. Had the message been
lost instead, the tick's stranded-claim check releases the claims and dispatches them
again (``sync.broker_inventory`` reads ``sync.fan_out`` messages too).

Only scheduled syncs take this path (``BULK_TRIGGERS``): a "Sync now", a compare, a
reconcile and a push are single, explicit requests, each with a run of its own.
``SYNC_BULK_UNCHANGED = False`` turns the path off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import Case, DateTimeField, Exists, F, OuterRef, Q, Value, When
from django.utils import timezone

from core.credentials import git_credential_env
from sync import leases, remote_check
from sync.models import Fabric, FabricCluster, RunStatus, SyncRun, SyncStatus, SyncTrigger
from sync.runner import RESOURCE_TOTAL
from sync.scheduling import next_sync_after_success
from sync.sources.git import GitSource, cache_dir_for, source_fingerprint

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Dispatch = Callable[[list[int]], None]
BranchCommit = Callable[[GitSource, str], str]

BULK_TRIGGERS = frozenset({SyncTrigger.SCHEDULE.value})
# Seconds the remote checks of one chunk may take together; a remote that has not
# answered by then sends its fabrics to their own tasks (each bounded by the git
# timeout), so one hanging remote never holds the chunk's other fabrics up for long.
REMOTE_DEADLINE = 15.0
REMOTE_CHECK_THREADS = 8


@dataclass(frozen=True)
class Candidate:
    """A fabric that step 1 found eligible, with what steps 2-3 need of it."""

    fabric_id: int
    commit: str
    due_at: datetime
    interval: int
    resources: int
    source: GitSource


@dataclass
class ChunkOutcome:
    recorded: list[int] = field(default_factory=list)
    per_fabric: list[int] = field(default_factory=list)
    remotes_asked: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "recorded_in_bulk": len(self.recorded),
            "dispatched": len(self.per_fabric),
            "remotes_asked": self.remotes_asked,
        }


def applies(trigger: str) -> bool:
    """Whether a claim with ``trigger`` takes the bulk path at all."""
    return bool(settings.SYNC_BULK_UNCHANGED) and trigger in BULK_TRIGGERS


def process_chunk(
    fabric_ids: list[int],
    token: str,
    trigger: str,
    worker: str,
    dispatch: Dispatch,
    *,
    clock: Clock = timezone.now,
    branch_commit: BranchCommit = remote_check.branch_commit,
) -> ChunkOutcome:
    """Record the chunk's unchanged fabrics in bulk; ``dispatch`` the others to their own tasks.

    Steps in the module's docstring. ``dispatch`` publishes per-fabric tasks; an
    exception from it (the broker is down) propagates, as from the plain fan-out.
    """
    outcome = ChunkOutcome()
    if not applies(trigger):
        outcome.per_fabric = list(fabric_ids)
        dispatch(outcome.per_fabric)
        return outcome
    started = clock()
    try:
        candidates = select_candidates(fabric_ids, token)
    except Exception:  # the database failed, or a bug: every fabric to its own task
        logger.exception("bulk step: selecting the chunk's unchanged candidates failed; dispatching per fabric")
        candidates = []
    chosen = {candidate.fabric_id for candidate in candidates}
    others = [fabric_id for fabric_id in fabric_ids if fabric_id not in chosen]
    _send(outcome, others, dispatch)  # they need not wait for the remote checks

    unchanged, changed, outcome.remotes_asked = check_remotes(candidates, token, branch_commit)
    try:
        outcome.recorded = record_unchanged(unchanged, token, trigger, worker, started, clock)
    except Exception:  # the transaction rolled back: nothing of it was recorded
        logger.exception("bulk step: recording %d unchanged fabrics failed; dispatching per fabric", len(unchanged))
        outcome.recorded = []
    taken = set(outcome.recorded)
    _send(outcome, [*changed, *(c.fabric_id for c in unchanged if c.fabric_id not in taken)], dispatch)
    return outcome


def _send(outcome: ChunkOutcome, fabric_ids: list[int], dispatch: Dispatch) -> None:
    if fabric_ids:
        dispatch(fabric_ids)
        outcome.per_fabric.extend(fabric_ids)


def _not_clustered() -> Q:
    return ~Q(Exists(FabricCluster.objects.filter(fabric=OuterRef("pk"))))


def _eligible(fabric_ids: list[int], token: str) -> Q:
    """Step 1's conditions on the row, checked when selecting and again when recording."""
    return Q(
        id__in=fabric_ids,
        lease_token=token,
        sync_status=SyncStatus.QUEUED,
        consecutive_failures=0,
        lease_deliveries=0,
        last_sync__isnull=False,
    ) & ~Q(current_commit="")


def select_candidates(fabric_ids: list[int], token: str) -> list[Candidate]:
    """Step 1: one query for the fabrics, their credential and their resource count."""
    rows = (
        Fabric.objects.filter(_eligible(fabric_ids, token))
        .filter(_not_clustered())
        .select_related("git_credential")
        .annotate(stored_resources=RESOURCE_TOTAL)
    )
    credential_env: dict[tuple[int | None, str], dict[str, str]] = {}
    candidates: list[Candidate] = []
    for fabric in rows:
        if source_fingerprint(fabric.git_url, fabric.git_branch, fabric.git_path) != fabric.source_fingerprint:
            continue  # the source changed since the last success: a full sync
        key = (fabric.git_credential_id, fabric.git_url)
        try:
            if key not in credential_env:
                credential_env[key] = git_credential_env(fabric.git_credential, fabric.git_url)
        except Exception:  # noqa: S112  (an unusable credential: its own task fails it with the reason)
            continue
        source = GitSource(
            fabric.git_url,
            fabric.git_branch,
            cache_dir_for(settings.SYNC_GIT_CACHE_DIR, fabric.id, fabric.git_url),
            settings.SYNC_GIT_TIMEOUT,
            extra_env=credential_env[key],
        )
        candidates.append(
            Candidate(
                fabric.id,
                fabric.current_commit,
                fabric.next_sync_at,
                fabric.sync_interval,
                fabric.stored_resources,  # type: ignore[attr-defined]  # annotated above
                source,
            )
        )
    return candidates


def check_remotes(
    candidates: list[Candidate], token: str, branch_commit: BranchCommit
) -> tuple[list[Candidate], list[int], int]:
    """Step 2: (unchanged candidates, ids to sync per fabric, remotes asked)."""
    groups: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        groups.setdefault(candidate.source.remote_identity(), []).append(candidate)
    if not groups:
        return [], [], 0
    executor = ThreadPoolExecutor(max_workers=min(REMOTE_CHECK_THREADS, len(groups)), thread_name_prefix="bulk-ls")
    try:
        futures: dict[str, Future[str]] = {
            identity: executor.submit(branch_commit, members[0].source, token) for identity, members in groups.items()
        }
        wait_for_futures(futures.values(), timeout=REMOTE_DEADLINE)
    finally:
        # A remote still running past the deadline finishes on its own thread (bounded by
        # the git timeout); its fabrics do not wait for it.
        executor.shutdown(wait=False, cancel_futures=True)
    unchanged: list[Candidate] = []
    changed: list[int] = []
    for identity, members in groups.items():
        future = futures[identity]
        commit = _answer(future)
        for candidate in members:
            if commit is not None and commit == candidate.commit:
                unchanged.append(candidate)
            else:
                changed.append(candidate.fabric_id)
    return unchanged, changed, len(groups)


def _answer(future: Future[str]) -> str | None:
    """The remote's commit, or None when it failed or did not answer in time."""
    if not future.done() or future.cancelled():
        return None
    error = future.exception()
    if error is not None:
        # Its fabrics' own tasks ask again and record the failure, redacted, as always.
        logger.info("bulk step: remote check failed (%s); its fabrics sync one by one", type(error).__name__)
        return None
    return future.result()


def record_unchanged(
    unchanged: list[Candidate], token: str, trigger: str, worker: str, started: datetime, clock: Clock
) -> list[int]:
    """Step 3: the UPDATE ... RETURNING and the runs' INSERT, in one transaction; the ids recorded."""
    if not unchanged:
        return []
    by_id = {candidate.fabric_id: candidate for candidate in unchanged}
    ids = list(by_id)
    finished = clock()
    schedules: dict[tuple[datetime, int], list[int]] = {}
    for candidate in unchanged:
        schedules.setdefault((candidate.due_at, candidate.interval), []).append(candidate.fabric_id)
    # Per fabric: its next due time as the per-fabric path computes it, unless its due
    # time moved after step 1 read it (sync.runner._unless_moved).
    next_due = Case(
        *(
            When(
                Q(id__in=members, next_sync_at=due),
                then=Value(next_sync_after_success(finished, interval, due, grace_seconds=settings.TICK_SECONDS)),
            )
            for (due, interval), members in schedules.items()
        ),
        default=F("next_sync_at"),
        output_field=DateTimeField(),
    )
    eligible = Fabric.objects.filter(_eligible(ids, token)).filter(_not_clustered())
    # A row another session holds locked (an operator's edit) is left to its own task.
    unlocked = eligible.select_for_update(skip_locked=True).values("id")
    with transaction.atomic():
        taken = leases.update_returning_ids(
            eligible.filter(id__in=unlocked),
            {
                "sync_status": SyncStatus.IN_SYNC,
                "last_attempt_at": started,
                "last_sync": finished,
                "next_sync_at": next_due,
                "consecutive_failures": 0,
                "failing_since": None,
                "last_error": "",
                "lease_token": "",
                "lease_expires_at": None,
                "lease_owner": "",
                "lease_deliveries": 0,
            },
        )
        duration_ms = max(0, int((finished - started).total_seconds() * 1000))
        SyncRun.objects.bulk_create(
            SyncRun(
                fabric_id=fabric_id,
                trigger=trigger,
                status=RunStatus.UNCHANGED,
                attempt=1,
                lease_token=token,
                worker=worker[:200],
                started_at=started,
                finished_at=finished,
                duration_ms=duration_ms,
                commit=by_id[fabric_id].commit,
                resources_total=by_id[fabric_id].resources,
            )
            for fabric_id in sorted(taken)
        )
    return sorted(taken)
