"""Fabrics, their sync attempts and the resources the last successful sync found.

State fields on ``Fabric`` are written only by ``sync.leases`` and ``sync.runner``
through explicit conditional updates, never by signals or ``save()`` overrides, so
bulk updates cannot bypass a rule.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from core.redaction import redact_url
from sync.validators import validate_git_branch, validate_git_path, validate_git_url


class SyncStatus(models.TextChoices):
    NEVER_SYNCED = "never_synced", "Never synced"
    QUEUED = "queued", "Queued"
    SYNCING = "syncing", "Syncing"
    IN_SYNC = "in_sync", "In sync"
    ERROR = "error", "Error"
    SUSPENDED = "suspended", "Suspended"


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

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [
            models.Index(fields=["fabric", "-started_at"], name="syncrun_fabric_recent_idx"),
            models.Index(fields=["status"], name="syncrun_status_idx"),
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

    def __str__(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {ns}{self.name}"
