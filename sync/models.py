"""Fabrics, their sync attempts, the resources the last successful sync found, and
each fabric's Kubernetes cluster with the drift between the two.

State fields on ``Fabric`` are written only by ``sync.leases`` and ``sync.runner``
through explicit conditional updates, never by signals or ``save()`` overrides, so
bulk updates cannot bypass a rule. The same holds for the system-written fields of
``FabricCluster`` (``sync.live.sync_step`` writes them inside the sync's success
transaction, under the lease) and for ``DriftedObject`` rows.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from core.redaction import redact_url
from sync.live.validation import (
    default_namespaces,
    validate_ca_bundle,
    validate_cluster_url,
    validate_ignore_rules,
    validate_kinds,
    validate_namespaces,
)
from sync.validators import validate_git_branch, validate_git_path, validate_git_url


class SyncStatus(models.TextChoices):
    NEVER_SYNCED = "never_synced", "Never synced"
    QUEUED = "queued", "Queued"
    SYNCING = "syncing", "Syncing"
    IN_SYNC = "in_sync", "In sync"
    ERROR = "error", "Error"
    SUSPENDED = "suspended", "Suspended"


class FabricQuerySet(models.QuerySet["Fabric"]):
    def with_cluster(self) -> FabricQuerySet:
        """Each fabric with its cluster row (drift status, counts, last compared) in the
        same query, without the cluster's stored live objects (megabytes on a big fabric).
        For lists: a changelist stays one query however many fabrics it shows."""
        return self.select_related("cluster").defer("cluster__live_state")


class Fabric(models.Model):
    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)

    git_url = models.CharField(
        "Git URL",
        max_length=500,
        validators=[validate_git_url],
        help_text="https://, ssh:// or user@host:path, or a local path below an allowed root.",
    )
    git_credential = models.ForeignKey(
        "core.Credential",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="fabrics",
        verbose_name="Git credential",
        help_text="For https:// sources that need a token: sent by git as an HTTP header, never in the URL.",
    )
    git_branch = models.CharField(max_length=200, default="main", validators=[validate_git_branch])
    git_path = models.CharField(
        max_length=300,
        blank=True,
        default="",
        validators=[validate_git_path],
        help_text="Folder of manifests inside the repository; empty for the whole repository.",
    )
    sync_interval = models.PositiveIntegerField(
        default=300, validators=[MinValueValidator(60)], help_text="Seconds between syncs (minimum 60)."
    )
    sync_enabled = models.BooleanField(default=True)

    # --- Written only by the system -------------------------------------------------
    last_sync = models.DateTimeField(null=True, blank=True, help_text="Last successful sync.")
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_sync_at = models.DateTimeField(default=timezone.now)
    sync_status = models.CharField(max_length=20, choices=SyncStatus.choices, default=SyncStatus.NEVER_SYNCED)
    consecutive_failures = models.PositiveIntegerField(default=0)
    # The start of the attempt whose failure began the current streak: set by the first
    # failure counted (``sync.runner.record_failure``, ``sync.leases.reap_expired``), kept
    # by later ones, cleared by a success or a reset. Stored rather than computed from the
    # runs so the admin can sort 10,000 fabrics by it with an index (issue 11).
    failing_since = models.DateTimeField(
        null=True, blank=True, db_index=True, help_text="Start of the failed attempt that began the failure streak."
    )
    last_error = models.TextField(blank=True)
    current_commit = models.CharField(max_length=64, blank=True)
    # Hash of (url, branch, path) at the last success: a changed source forces a full
    # sync even when the commit is the same.
    source_fingerprint = models.CharField(max_length=64, blank=True)

    # The lease: who may sync this fabric until when. A claim is a conditional UPDATE
    # that sets a fresh token; every later step checks the token it was handed.
    lease_token = models.CharField(max_length=64, blank=True, db_index=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_deliveries = models.PositiveSmallIntegerField(default=0)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = FabricQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        indexes = [
            # The tick's due query: enabled fabrics ordered by next_sync_at.
            models.Index(fields=["sync_enabled", "next_sync_at"], name="fabric_due_idx"),
            models.Index(fields=["lease_expires_at"], name="fabric_lease_idx"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        if self.git_credential_id is not None and not self.git_url.lower().startswith("https://"):
            raise ValidationError(
                {"git_credential": "A Git credential is sent over HTTPS only: use an https:// URL, or no credential."}
            )

    @property
    def safe_git_url(self) -> str:
        """The Git URL with any embedded credentials masked, for display and logs."""
        return redact_url(self.git_url)

    @property
    def short_commit(self) -> str:
        return self.current_commit[:10]


class SyncTrigger(models.TextChoices):
    SCHEDULE = "schedule", "Schedule"
    MANUAL = "manual", "Manual"
    # A manual sync that also re-reads the whole cluster (a full LIST) and recomputes drift.
    COMPARE = "compare", "Compare now"
    # A compare that also applies Git's objects (reconcile mode only; observe never writes).
    RECONCILE = "reconcile", "Reconcile now"


class LiveStatus(models.TextChoices):
    """What a sync's live step did (``sync.live.sync_step``); empty for a fabric without a cluster."""

    NONE = "", "No cluster"
    COMPARED = "compared", "Compared"
    UNCHANGED = "unchanged", "Unchanged (no live change, same desired state)"
    INCOMPLETE = "incomplete", "Incomplete read"
    UNREACHABLE = "unreachable", "Cluster unreachable (breaker open)"
    FAILED = "failed", "Failed"


class RunStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCESS = "success", "Success"
    UNCHANGED = "unchanged", "Unchanged (same commit)"
    FAILED = "failed", "Failed"
    RETRYING = "retrying", "Failed, will retry"
    LOST = "lost", "Lost (worker died)"
    SKIPPED = "skipped", "Skipped (remote unavailable)"


class SyncRun(models.Model):
    fabric = models.ForeignKey(Fabric, on_delete=models.CASCADE, related_name="runs")
    trigger = models.CharField(max_length=20, choices=SyncTrigger.choices)
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.RUNNING)
    attempt = models.PositiveSmallIntegerField(default=1)
    lease_token = models.CharField(max_length=64, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    commit = models.CharField(max_length=64, blank=True)
    resources_created = models.PositiveIntegerField(default=0)
    resources_updated = models.PositiveIntegerField(default=0)
    resources_deleted = models.PositiveIntegerField(default=0)
    resources_total = models.PositiveIntegerField(default=0)
    error_class = models.CharField(max_length=200, blank=True)
    error_message = models.TextField(blank=True)
    # The live step (a fabric with a cluster): a live error never fails the run, whose
    # status says how the Git step went.
    live_status = models.CharField(max_length=20, choices=LiveStatus.choices, blank=True, default=LiveStatus.NONE)
    live_error = models.TextField(blank=True)
    live_applied = models.PositiveIntegerField(default=0, help_text="Objects applied to the cluster (reconcile).")
    live_pruned = models.PositiveIntegerField(default=0, help_text="Unmanaged objects deleted (prune).")
    # {"read": {lists, watches, events, ...}, "counts": {...}, "applied": [...], "pruned": [...],
    #  "failed": [{"object", "error"}], "prune_refused": "..."}
    live_report = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [
            models.Index(fields=["fabric", "-started_at"], name="syncrun_fabric_recent_idx"),
            models.Index(fields=["status"], name="syncrun_status_idx"),
            # Retention (sync/retention.py) per fabric: its newest K routine runs (a walk of K
            # entries), its latest success and first failure (a probe each), and the older
            # runs as one range each. The two split the rows: together one index's writes.
            models.Index(
                fields=["fabric", "-started_at"],
                condition=models.Q(status__in=["unchanged", "skipped"]),
                name="syncrun_routine_idx",
            ),
            models.Index(
                fields=["fabric", "-started_at"],
                condition=~models.Q(status__in=["unchanged", "skipped"]),
                name="syncrun_notable_idx",
            ),
            # The run list's default order (newest first) and its "started in the last …" filter.
            models.Index(fields=["-started_at", "-id"], name="syncrun_recent_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.fabric_id} {self.status} @ {self.started_at:%Y-%m-%d %H:%M:%S}"


class Resource(models.Model):
    fabric = models.ForeignKey(Fabric, on_delete=models.CASCADE, related_name="resources")
    api_version = models.CharField(max_length=200)
    kind = models.CharField(max_length=200)
    namespace = models.CharField(max_length=253, blank=True, default="")
    name = models.CharField(max_length=253)
    spec = models.JSONField(default=dict)
    content_hash = models.CharField(max_length=64)
    source_file = models.CharField(max_length=500)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["fabric", "kind", "namespace", "name"]
        constraints = [
            models.UniqueConstraint(fields=["fabric", "kind", "namespace", "name"], name="resource_unique_per_fabric")
        ]
        # The resource list's kind filter reads the distinct kinds through it, one probe per kind.
        indexes = [
            models.Index(fields=["kind"], name="resource_kind_idx"),
            # A sync that changed a few files of thousands finds the rows of those files (sync.resources).
            models.Index(fields=["fabric", "source_file"], name="resource_source_idx"),
        ]

    def __str__(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {ns}{self.name}"


class ManifestFile(models.Model):
    """A manifest file the fabric's last successful sync read: its Git blob and what it held.

    A later sync reads and parses again only the files whose blob (or the parser's
    version) differs; the ``Resource`` rows of the others stand as they are
    (``sync.resources``). Written only in a sync's success transaction, with the
    resources.
    """

    fabric = models.ForeignKey(Fabric, on_delete=models.CASCADE, related_name="manifest_files")
    path = models.CharField(max_length=500)  # as Resource.source_file
    blob = models.CharField(max_length=64)  # Git object id: 40 hex digits (SHA-1) or 64 (SHA-256)
    parser = models.PositiveSmallIntegerField()  # sync.manifests.PARSER_VERSION that parsed it
    resources = models.PositiveIntegerField()  # Resource rows with this source_file

    class Meta:
        constraints = [models.UniqueConstraint(fields=["fabric", "path"], name="manifestfile_unique_per_fabric")]

    def __str__(self) -> str:
        return f"{self.path} @ {self.blob[:10]}"


# --- The fabric's Kubernetes cluster and drift ------------------------------------------


class ClusterMode(models.TextChoices):
    OBSERVE = "observe", "Observe (read-only)"
    RECONCILE = "reconcile", "Reconcile (apply Git's objects)"


class DriftStatus(models.TextChoices):
    UNKNOWN = "unknown", "Unknown"
    IN_SYNC = "in_sync", "In sync"
    OUT_OF_SYNC = "out_of_sync", "Out of sync"


class DriftState(models.TextChoices):
    DRIFTED = "drifted", "Drifted"
    MISSING = "missing", "Missing (in Git, not live)"
    UNMANAGED = "unmanaged", "Unmanaged (live, not in Git)"


class FabricCluster(models.Model):
    """A fabric's Kubernetes connection, what it tracks there, and the drift last found.

    Operators set the connection and the policy; the sync writes the rest (below the
    marker), only through ``sync.live.sync_step`` with ``update()`` of those columns,
    so an operator's edit and a sync never overwrite each other. The token lives in the
    ``Credential`` only (encrypted, write-only); this row holds a reference to it.
    """

    fabric = models.OneToOneField(Fabric, on_delete=models.CASCADE, related_name="cluster")
    server_url = models.CharField(
        "API server URL",
        max_length=500,
        validators=[validate_cluster_url],
        help_text="https://host[:port] of the fabric's Kubernetes API server (no credentials in it).",
    )
    ca_bundle = models.TextField(
        "CA bundle",
        blank=True,
        validators=[validate_ca_bundle],
        help_text="PEM certificate(s) the API server's certificate must chain to (not secret). "
        "Empty: the system's trust store.",
    )
    token = models.ForeignKey(
        "core.Credential",
        on_delete=models.PROTECT,
        related_name="fabric_clusters",
        limit_choices_to={"kind": "bearer_token"},
        help_text="A bearer-token credential (e.g. a ServiceAccount token). Observe needs get/list/watch; "
        "reconcile also patch (and delete with prune).",
    )
    namespaces = models.JSONField(
        default=default_namespaces,
        validators=[validate_namespaces],
        help_text='Namespaces the fabric manages, e.g. ["default"]. Git documents without a namespace go to the first.',
    )
    kinds = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_kinds],
        help_text='Tracked kinds; empty for the Hedgehog defaults. e.g. ["vpc.githedgehog.com/v1beta1/VPC"].',
    )
    ignore_rules = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_ignore_rules],
        help_text='Differences never counted, like Argo CD\'s ignoreDifferences: [{"kind": "VPC", '
        '"jsonPointers": ["/spec/x"]}]; the pointer "" leaves whole objects out (never pruned).',
    )
    mode = models.CharField(max_length=20, choices=ClusterMode.choices, default=ClusterMode.OBSERVE)
    prune_enabled = models.BooleanField(
        default=False, help_text="Reconcile mode only: delete live objects that Git does not have."
    )
    prune_max_share = models.FloatField(
        default=0.1,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="A prune deleting more than this share of the fabric's live objects waits for confirmation. "
        "Deleting everything (Git has nothing) always does.",
    )
    # An operator's one-shot confirmation of the refused prune (``prune_pending``),
    # valid when later than ``prune_refused_at``; the prune that uses it clears it.
    prune_confirmed_at = models.DateTimeField(null=True, blank=True)
    prune_confirmed_by = models.CharField(max_length=150, blank=True)

    # --- Written only by the system -------------------------------------------------
    # sync.live.state's JSON: per collection, the objects and the resourceVersion to watch from.
    live_state = models.JSONField(default=dict, blank=True, editable=False)
    live_read_at = models.DateTimeField(null=True, blank=True, help_text="Last complete read of the cluster.")
    # Hash of (commit, Git source, kinds, namespaces, ignore rules) the stored drift was computed for.
    desired_fingerprint = models.CharField(max_length=64, blank=True, editable=False)
    drift_status = models.CharField(
        max_length=20, choices=DriftStatus.choices, default=DriftStatus.UNKNOWN, db_index=True
    )
    drift_counts = models.JSONField(default=dict, blank=True)  # {"in_sync": n, "drifted": n, "missing": n, ...}
    drift_compared_at = models.DateTimeField(
        null=True, blank=True, help_text="When the stored drift was last confirmed against the cluster."
    )
    last_error = models.TextField(blank=True)
    latency_p50_ms = models.FloatField(null=True, blank=True)
    latency_p95_ms = models.FloatField(null=True, blank=True)
    prune_refused = models.TextField(blank=True, help_text="Why the pending prune waits for an operator.")
    prune_refused_at = models.DateTimeField(null=True, blank=True)
    prune_pending = models.JSONField(default=list, blank=True)  # the objects the refused prune would delete

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["fabric__name"]

    def __str__(self) -> str:
        return f"{self.fabric} @ {self.server_url}"

    def clean(self) -> None:
        super().clean()
        if self.token_id is not None and self.token.kind != "bearer_token":
            raise ValidationError({"token": "Choose a bearer-token credential: a cluster takes a bearer token."})
        if self.prune_enabled and self.mode != ClusterMode.RECONCILE:
            raise ValidationError({"prune_enabled": "Prune deletes objects: it needs reconcile mode."})

    @property
    def prune_confirmed(self) -> bool:
        """An operator confirmed the pending prune after it was refused."""
        return bool(
            self.prune_refused_at and self.prune_confirmed_at and self.prune_confirmed_at >= self.prune_refused_at
        )

    def count(self, state: str) -> int:
        return int((self.drift_counts or {}).get(state, 0))


class DriftedObject(models.Model):
    """One object whose live state differs from Git (drifted, missing or unmanaged).

    Replaced as a whole each time a sync recomputes the fabric's drift; in-sync objects
    have no row. ``diff`` is a list of ``{"path", "desired", "live", "live_absent"}``
    (JSON pointers into the object), for the admin's "field / Git / live" table.
    """

    fabric = models.ForeignKey(Fabric, on_delete=models.CASCADE, related_name="drifted_objects")
    group = models.CharField(max_length=253, blank=True)
    kind = models.CharField(max_length=63)
    namespace = models.CharField(max_length=63, blank=True)
    name = models.CharField(max_length=253)
    api_version = models.CharField(max_length=200, blank=True)
    state = models.CharField(max_length=20, choices=DriftState.choices)
    diff = models.JSONField(default=list, blank=True)
    truncated = models.PositiveIntegerField(default=0, help_text="Field differences left out past the limit.")
    live_uid = models.CharField(max_length=64, blank=True)
    compared_at = models.DateTimeField()

    class Meta:
        ordering = ["fabric", "kind", "namespace", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["fabric", "group", "kind", "namespace", "name"], name="driftedobject_unique_per_fabric"
            )
        ]
        indexes = [models.Index(fields=["fabric", "state"], name="driftedobject_state_idx")]

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name} ({self.state})"
