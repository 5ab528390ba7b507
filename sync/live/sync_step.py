"""The live step of a sync: read the fabric's cluster, compare it with Git, reconcile when asked.

``sync.runner`` calls ``run_live_step`` for a fabric with a cluster once the Git step has
read and parsed the desired state, under the sync's lease and before the success is
recorded. It talks to the cluster and returns what to store (``LiveOutcome``);
``store_outcome`` writes that in the transaction that records the Git success, only
while the lease holds, so a sync that lost its lease stores nothing of either.

The Git result stands whatever happens here: a live failure is recorded on the run
(``live_status``, ``live_error``), on the cluster (``last_error``, drift ``unknown``)
and on the fabric (``last_error``, prefixed "live state:"), and never fails or retries
the sync. Each call to the cluster already retried transient failures within its
deadline (``core.rpc``), and the shared breaker ``k8s:<host:port>`` counts them; the next
due sync reads again. A breaker that rejects the call skips the live part at the cost
of one Redis round trip: "cluster unreachable (breaker open until …)".

``run_live_step``:

1. Parse the settings and build the client (the token is decrypted there only).
2. Read the live objects from the stored state (``sync.live.state.read_live``: an
   unchanged cluster costs one quiet WATCH per collection, no LIST). "Compare now" and
   "Reconcile now" re-LIST everything. Errors: open breaker -> UNREACHABLE; any other
   cluster error (timeouts, 5xx, 401, TLS) -> FAILED with its classified message; some
   collections unreadable (403, a CRD missing) -> INCOMPLETE, drift unknown: their
   objects would otherwise look missing.
3. Nothing changed (no watch event, the same commit and settings, the drift known and
   nothing left to reconcile): UNCHANGED, the stored drift stands and is stamped as
   confirmed now. Neither Git's documents nor the drift rows are read or written.
4. Compare Git's documents with the live objects (``sync.live.drift.compare``).
5. Reconcile mode only (observe never calls apply or delete): server-side apply each
   drifted and missing object with our field manager and ``force`` (Git wins over
   other managers, as Argo CD's server-side apply does); then, with prune enabled,
   delete the unmanaged objects the guard allows (``sync.live.prune``), each with a
   uid precondition. The objects the cluster answered replace the read ones, and the
   drift is computed again: what was applied is in sync unless the server changed it.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import DatabaseError

from core.redaction import redact
from sync.live.client import ClusterUnavailable, KubeClient, KubeConflict, KubeError
from sync.live.cluster import FIELD_MANAGER, ClusterConfig, client_for, config_of
from sync.live.drift import DRIFTED, IN_SYNC, MISSING, UNMANAGED, DriftReport, ObjectKey, compare
from sync.live.prune import PruneDecision, decide_prune
from sync.live.state import CLUSTER_ERRORS, Collection, LiveRead, read_live
from sync.models import (
    ClusterMode,
    DriftedObject,
    DriftStatus,
    FabricCluster,
    LiveStatus,
    Resource,
    SyncRun,
    SyncTrigger,
)

logger = logging.getLogger(__name__)

RELIST_AFTER = 3600.0  # a full LIST per collection at least hourly: the backstop for a missed event
FORCED_TRIGGERS = frozenset({SyncTrigger.COMPARE.value, SyncTrigger.RECONCILE.value})
REPORT_LIMIT = 100  # entries per list in a run's live_report
Documents = Callable[[], Iterable[dict[str, Any]]]


@dataclass
class LiveOutcome:
    """What one live step found and did, and the cluster columns to write."""

    status: str
    drift_status: str
    error: str = ""
    drift_counts: dict[str, int] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)  # FabricCluster columns
    drift: DriftReport | None = None  # recomputed: replaces the fabric's DriftedObject rows
    applied: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def fabric_error(self) -> str:
        return f"live state: {self.error}"[:2000] if self.error else ""


def stored_documents(fabric_id: int) -> Callable[[], list[dict[str, Any]]]:
    """The desired documents of the last successful Git step, read only when called."""
    return lambda: list(Resource.objects.filter(fabric_id=fabric_id).values_list("spec", flat=True))


def run_live_step(
    cluster: FabricCluster, *, desired: Documents, source: tuple[str, ...], trigger: str, now: datetime
) -> LiveOutcome:
    """The module docstring's steps. ``source``: the commit and the Git source's fingerprint.

    Never raises for the cluster's sake; a bug here is logged and recorded as FAILED.
    The soft time limit and database errors go up: they are the sync's, not the cluster's.
    """
    try:
        return _live_step(cluster, desired, source, trigger, now)
    except (SoftTimeLimitExceeded, DatabaseError):
        raise
    except Exception as exc:
        logger.error(
            "unexpected error in the live step of fabric %s:\n%s",
            cluster.fabric_id,
            redact("".join(traceback.format_exception(exc))),
        )
        return _failed(f"unexpected {type(exc).__name__}: {redact(str(exc))}", {})


def _failed(message: str, fields: dict[str, Any], status: str = LiveStatus.FAILED) -> LiveOutcome:
    message = redact(message)[:2000]
    fields = {**fields, "last_error": message, "drift_status": DriftStatus.UNKNOWN}
    return LiveOutcome(status, DriftStatus.UNKNOWN, message, fields=fields, report={"error": message})


def _latency(client: KubeClient) -> dict[str, Any]:
    summary = client.latency()
    return {"latency_p50_ms": summary.p50_ms, "latency_p95_ms": summary.p95_ms} if summary.calls else {}


def _live_step(
    cluster: FabricCluster, desired: Documents, source: tuple[str, ...], trigger: str, now: datetime
) -> LiveOutcome:
    forced = trigger in FORCED_TRIGGERS
    try:
        config = config_of(cluster)
        client = client_for(cluster)
    except KubeError as exc:  # settings, credential or CA bundle: nothing was sent
        return _failed(str(exc), {})
    with client:
        try:
            live = read_live(
                client,
                config.kinds,
                config.namespaces,
                cluster.live_state or None,
                now=now.timestamp(),
                relist_after=0.0 if forced else RELIST_AFTER,
            )
        except ClusterUnavailable as exc:
            return _failed(str(exc), _latency(client), LiveStatus.UNREACHABLE)
        except KubeError as exc:
            return _failed(str(exc), _latency(client))
        return _after_read(cluster, config, client, live, desired, source, forced, trigger, now)


def _after_read(
    cluster: FabricCluster,
    config: ClusterConfig,
    client: KubeClient,
    live: LiveRead,
    desired: Documents,
    source: tuple[str, ...],
    forced: bool,
    trigger: str,
    now: datetime,
) -> LiveOutcome:
    fields: dict[str, Any] = {}
    if live.changed:
        fields["live_state"] = live.state
    report: dict[str, Any] = {"read": live.stats.to_dict()}
    if not live.complete:
        first = next(iter(sorted(live.errors.items())))
        message = f"could not read {len(live.errors)} of {live.stats.collections} collections ({first[0]}: {first[1]})"
        outcome = _failed(message, {**fields, **_latency(client)}, LiveStatus.INCOMPLETE)
        outcome.report.update(report, collection_errors=dict(list(live.errors.items())[:REPORT_LIMIT]))
        return outcome

    fields.update(live_read_at=now, last_error="")
    fingerprint = config.fingerprint(*source)
    if (
        not forced
        and not live.changed
        and fingerprint == cluster.desired_fingerprint
        and cluster.drift_status != DriftStatus.UNKNOWN
        and not _reconcile_due(cluster)
    ):
        fields.update(drift_compared_at=now, **_latency(client))
        counts = dict(cluster.drift_counts or {})
        status = cluster.drift_status
        return LiveOutcome(LiveStatus.UNCHANGED, status, drift_counts=counts, fields=fields, report=report)

    documents = list(desired())
    drift = _compare(config, documents, live.objects())
    outcome = LiveOutcome(LiveStatus.COMPARED, drift.status, report=report)
    reconciling = cluster.mode == ClusterMode.RECONCILE
    if reconciling:
        state = _reconcile(client, cluster, config, drift, documents, live.state, outcome, now)
        if state is not live.state:
            fields["live_state"] = state
            drift = _compare(config, documents, _objects(state))
    if not (reconciling and cluster.prune_enabled):
        fields.update(prune_refused="", prune_pending=[], prune_refused_at=None)
    fields.update(
        desired_fingerprint=fingerprint,
        drift_status=drift.status,
        drift_counts=dict(drift.counts),
        drift_compared_at=now,
        last_error=outcome.error,
        **_latency(client),
    )
    outcome.fields.update(fields)
    outcome.drift = drift
    outcome.drift_status = drift.status
    outcome.drift_counts = dict(drift.counts)
    outcome.report.update(counts=dict(drift.counts))
    logger.info(
        "live step of fabric %s (%s): %s %s, applied %d, pruned %d",
        cluster.fabric_id,
        trigger,
        drift.status,
        dict(drift.counts),
        len(outcome.applied),
        len(outcome.pruned),
    )
    return outcome


def _compare(config: ClusterConfig, documents: list[dict[str, Any]], objects: list[dict[str, Any]]) -> DriftReport:
    return compare(
        documents,
        objects,
        kinds=config.kinds,
        namespaces=config.namespaces,
        ignore=config.ignore,
        default_namespace=config.default_namespace,
    )


def _reconcile_due(cluster: FabricCluster) -> bool:
    """In reconcile mode, whether the stored drift still asks for an apply or an allowed prune."""
    if cluster.mode != ClusterMode.RECONCILE:
        return False
    if cluster.count(DRIFTED) or cluster.count(MISSING):
        return True
    waiting = cluster.prune_refused_at is not None and not cluster.prune_confirmed
    return cluster.prune_enabled and cluster.count(UNMANAGED) > 0 and not waiting


# --- Reconcile ------------------------------------------------------------------------------


def _reconcile(
    client: KubeClient,
    cluster: FabricCluster,
    config: ClusterConfig,
    drift: DriftReport,
    documents: list[dict[str, Any]],
    state: dict[str, Any],
    outcome: LiveOutcome,
    now: datetime,
) -> dict[str, Any]:
    """Step 5 of the module docstring; returns the live state with the cluster's answers
    in it (``state`` itself when nothing was written). Fills ``outcome``."""
    by_key = {config.key_of(doc): doc for doc in documents}
    answers: dict[ObjectKey, dict[str, Any] | None] = {}  # None: deleted
    failed: list[dict[str, str]] = []
    stopped: KubeError | None = None
    for item in drift.objects:
        if item.state not in (DRIFTED, MISSING) or item.key not in by_key:
            continue
        kind = config.kind_of(item.key)
        try:
            answers[item.key] = client.apply(
                by_key[item.key],
                field_manager=FIELD_MANAGER,
                plural=kind.plural if kind else None,
                namespace=item.key.namespace or None,
                force=True,
                kinds=config.kinds,
            )
        except CLUSTER_ERRORS as exc:
            stopped = exc
            break
        except KubeError as exc:
            failed.append({"object": str(item.key), "action": "apply", "error": redact(str(exc))[:500]})
            continue
        outcome.applied.append(str(item.key))

    if cluster.prune_enabled and stopped is None:
        decision = decide_prune(
            drift,
            max_share=cluster.prune_max_share,
            pending=list(cluster.prune_pending or []),
            confirmed=cluster.prune_confirmed,
        )
        stopped = _prune(client, config, decision, answers, failed, outcome)
        if stopped is None:
            outcome.fields.update(_prune_fields(cluster, decision, outcome.report, now))

    errors = [f"{f['action']} {f['object']}: {f['error']}" for f in failed]
    if stopped is not None:
        errors.insert(0, f"reconcile stopped: {stopped}")
    if errors:
        outcome.error = redact("; ".join(errors))[:2000]
    outcome.report.update(
        applied=outcome.applied[:REPORT_LIMIT], pruned=outcome.pruned[:REPORT_LIMIT], failed=failed[:REPORT_LIMIT]
    )
    return _patched(state, config, answers) if answers else state


def _prune(
    client: KubeClient,
    config: ClusterConfig,
    decision: PruneDecision,
    answers: dict[ObjectKey, dict[str, Any] | None],
    failed: list[dict[str, str]],
    outcome: LiveOutcome,
) -> KubeError | None:
    """Delete what the guard allows, each only if it is still the object we read (its uid)."""
    for item in decision.delete:
        kind = config.kind_of(item.key)
        if kind is None:
            continue
        key, uid = item.key, item.live_uid or None
        try:
            client.delete(kind.group, kind.version, kind.plural, key.namespace or None, key.name, uid=uid)
        except CLUSTER_ERRORS as exc:
            return exc
        except KubeConflict:
            failed.append({"object": str(item.key), "action": "prune", "error": "re-created since it was read: left"})
            continue
        except KubeError as exc:
            failed.append({"object": str(item.key), "action": "prune", "error": redact(str(exc))[:500]})
            continue
        answers[item.key] = None
        outcome.pruned.append(str(item.key))
    return None


def _prune_fields(
    cluster: FabricCluster, decision: PruneDecision, report: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """The cluster's prune columns after ``decision``. A refusal of the same objects keeps
    its time, so a confirmation given since still counts; a confirmation used is cleared."""
    if decision.waiting:
        report["prune_refused"] = decision.refused
        same = sorted(decision.pending) == sorted(cluster.prune_pending or []) and cluster.prune_refused_at
        return {
            "prune_refused": decision.refused,
            "prune_pending": decision.pending,
            "prune_refused_at": cluster.prune_refused_at if same else now,
        }
    fields: dict[str, Any] = {"prune_refused": "", "prune_pending": [], "prune_refused_at": None}
    if decision.used_confirmation:
        fields.update(prune_confirmed_at=None, prune_confirmed_by="")
        report["prune_confirmed_by"] = cluster.prune_confirmed_by
    return fields


def _patched(
    state: dict[str, Any], config: ClusterConfig, answers: dict[ObjectKey, dict[str, Any] | None]
) -> dict[str, Any]:
    """``state`` with the objects the cluster answered (None: deleted), as a new dict."""
    collections = dict(state.get("collections") or {})
    for key, answer in answers.items():
        kind = config.kind_of(key)
        if kind is None:
            continue
        cid = Collection(kind, key.namespace if kind.namespaced else "").id
        entry = collections.get(cid)
        if entry is None:
            continue
        objects = dict(entry["objects"])
        if answer is None:
            objects.pop(key.name, None)
        else:
            metadata = {k: v for k, v in (answer.get("metadata") or {}).items() if k != "managedFields"}
            objects[key.name] = {**answer, "metadata": metadata}
        collections[cid] = {**entry, "objects": objects}
    return {**state, "collections": collections}


def _objects(state: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _, entry in sorted((state.get("collections") or {}).items()):
        out.extend(entry["objects"][name] for name in sorted(entry["objects"]))
    return out


# --- Storing ----------------------------------------------------------------------------------


def store_outcome(outcome: LiveOutcome, cluster: FabricCluster, run: SyncRun, now: datetime) -> None:
    """Write ``outcome``: the cluster's columns, the drift rows when recomputed, and the
    run's live fields (saved by the caller). Call inside the success transaction."""
    FabricCluster.objects.filter(id=cluster.id).update(**outcome.fields, updated_at=now)
    if outcome.drift is not None:
        DriftedObject.objects.filter(fabric_id=cluster.fabric_id).delete()
        DriftedObject.objects.bulk_create(
            [
                DriftedObject(
                    fabric_id=cluster.fabric_id,
                    group=item.key.group,
                    kind=item.key.kind,
                    namespace=item.key.namespace,
                    name=item.key.name,
                    api_version=item.api_version,
                    state=item.state,
                    diff=[d.to_dict() for d in item.diffs],
                    truncated=item.truncated,
                    live_uid=item.live_uid,
                    compared_at=now,
                )
                for item in outcome.drift.objects
                if item.state != IN_SYNC
            ],
            batch_size=500,
        )
    run.live_status = outcome.status
    run.live_error = outcome.error
    run.live_applied = len(outcome.applied)
    run.live_pruned = len(outcome.pruned)
    run.live_report = outcome.report
