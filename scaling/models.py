"""Scaling policies, the recommendations behind scale-down stabilisation, and the audit trail.

Everything a decision depends on across ticks lives here, not in process memory:
the stabilisation window is ``ScalingRecommendation`` rows and the cooldown is the
last successful ``ScalingEvent``. Any worker process evaluating a service therefore
reaches the same decision as any other.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from scaling.decisions import MetricName, ScaleDirection
from scaling.validators import (
    validate_command,
    validate_environment,
    validate_image_reference,
    validate_labels,
    validate_network,
    validate_queue_names,
    validate_volumes,
)

# Target field -> the metric it drives, in the order operators read them.
TARGET_FIELDS: dict[str, MetricName] = {
    "target_cpu_percent": MetricName.CPU,
    "target_memory_percent": MetricName.MEMORY,
    "target_db_connections_per_instance": MetricName.DB_CONNECTIONS,
    "target_response_time_ms": MetricName.RESPONSE_TIME,
    "target_queue_latency_seconds": MetricName.QUEUE_LATENCY,
    "target_queue_depth_per_instance": MetricName.QUEUE_DEPTH,
}
TARGET_LABELS = {
    "target_cpu_percent": "CPU % target",
    "target_memory_percent": "memory % target",
    "target_db_connections_per_instance": "DB connections per instance",
    "target_response_time_ms": "response time target (ms)",
    "target_queue_latency_seconds": "queue latency target (s)",
    "target_queue_depth_per_instance": "queue depth per instance",
}
QUEUE_TARGET_FIELDS = ("target_queue_latency_seconds", "target_queue_depth_per_instance")


def _target(field: str, help_text: str) -> models.FloatField:
    return models.FloatField(TARGET_LABELS[field], null=True, blank=True, help_text=help_text)


class ScalingPolicy(models.Model):
    service = models.SlugField(
        max_length=50,
        unique=True,
        help_text="Service name: the value of the io.fabric-control-plane.service label on its containers.",
    )
    enabled = models.BooleanField(default=False, help_text="Evaluated on every tick when enabled.")
    dry_run = models.BooleanField(default=False, help_text="Decide and record events, but never start or stop.")
    min_instances = models.PositiveIntegerField(default=1)
    max_instances = models.PositiveIntegerField(default=3)

    # --- Targets: any subset; a blank target is not used --------------------------------
    target_cpu_percent = _target("target_cpu_percent", "Average CPU % per instance (100 = one full core).")
    target_memory_percent = _target("target_memory_percent", "Average memory % of each instance's limit.")
    target_db_connections_per_instance = _target(
        "target_db_connections_per_instance", "Active PostgreSQL connections to our database, per instance."
    )
    target_response_time_ms = _target("target_response_time_ms", "Average request duration over the window.")
    target_queue_latency_seconds = _target("target_queue_latency_seconds", "Age of the oldest waiting message.")
    target_queue_depth_per_instance = _target(
        "target_queue_depth_per_instance", "Waiting plus reserved messages in the queues, per instance."
    )
    queues = models.JSONField(
        default=list, blank=True, validators=[validate_queue_names], help_text='Celery queues, e.g. ["celery"].'
    )
    celery_worker = models.BooleanField(
        default=False,
        help_text="Instances are Celery workers: drain them (cancel_consumer, wait for active tasks) before stopping.",
    )

    # --- Behaviour ----------------------------------------------------------------------
    tolerance = models.FloatField(
        default=0.1,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="No change while each metric is within ±tolerance of its target.",
    )
    scale_up_step_limit = models.PositiveIntegerField(
        default=4, validators=[MinValueValidator(1)], help_text="At most this many new instances per tick."
    )
    scale_down_stabilization_seconds = models.PositiveIntegerField(
        default=300, help_text="Scale down only to the highest recommendation seen over this window."
    )
    cooldown_seconds = models.PositiveIntegerField(
        default=60, help_text="No metric-driven scaling this soon after the last successful one."
    )

    # --- Container template for new instances -------------------------------------------
    image = models.CharField(max_length=255, validators=[validate_image_reference])
    command = models.JSONField(default=list, blank=True, validators=[validate_command], help_text="Exec form list.")
    environment = models.JSONField(
        default=dict, blank=True, validators=[validate_environment], help_text="May hold secrets: never listed."
    )
    labels = models.JSONField(default=dict, blank=True, validators=[validate_labels])
    network = models.CharField(max_length=140, blank=True, validators=[validate_network])
    volumes = models.JSONField(default=list, blank=True, validators=[validate_volumes])
    working_dir = models.CharField(max_length=500, blank=True)
    stop_timeout = models.PositiveIntegerField(
        default=10, help_text="Seconds between SIGTERM and SIGKILL (for workers: at least the task soft time limit)."
    )

    # --- Written by evaluations only (``save(update_fields=...)``), read by the admin ---
    observed_instances = models.PositiveIntegerField(
        null=True, blank=True, help_text="Owned running instances the engine reported at the last evaluation."
    )
    observed_at = models.DateTimeField(null=True, blank=True, help_text="When the engine last reported them.")

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["service"]
        verbose_name_plural = "scaling policies"

    def __str__(self) -> str:
        return self.service

    def targets(self) -> dict[str, float]:
        """The configured targets by metric name."""
        return {
            str(metric): float(value)
            for field, metric in TARGET_FIELDS.items()
            if (value := getattr(self, field)) is not None
        }

    def observe(self, instances: int, at: datetime) -> None:
        """Remember what the engine reported; only these two columns are written, so an
        operator's concurrent edit of the policy is never overwritten."""
        self.observed_instances, self.observed_at = instances, at
        self.save(update_fields=["observed_instances", "observed_at"])

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        low, high = self.min_instances, self.max_instances
        if low is not None and high is not None and low > high:
            errors.setdefault("min_instances", []).append(
                f"min_instances ({self.min_instances}) cannot exceed max_instances ({self.max_instances})."
            )
        for field in TARGET_FIELDS:
            value = getattr(self, field)
            if value is not None and not value > 0:
                label = TARGET_LABELS[field]
                errors.setdefault(field, []).append(f"The {label} must be greater than 0 (got {value:g}).")
        if all(getattr(self, field) is None for field in TARGET_FIELDS):
            errors.setdefault("__all__", []).append(
                "Set at least one target (CPU, memory, DB connections, response time, queue latency or depth)."
            )
        if any(getattr(self, f) is not None for f in QUEUE_TARGET_FIELDS) and not self.queues:
            errors.setdefault("queues", []).append("Queue targets need at least one queue name.")
        if errors:
            raise ValidationError(errors)


class ScalingRecommendation(models.Model):
    """One tick's clamped recommendation; the stabilisation window reads the recent ones."""

    policy = models.ForeignKey(ScalingPolicy, on_delete=models.CASCADE, related_name="recommendations")
    recommended_instances = models.PositiveIntegerField()
    recorded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["policy", "recorded_at"], name="scaling_rec_window_idx")]

    def __str__(self) -> str:
        return f"{self.policy_id}: {self.recommended_instances} at {self.recorded_at:%H:%M:%S}"


class ScalingTrigger(models.TextChoices):
    TICK = "tick", "Tick"
    MANUAL = "manual", "Manual (scale command)"
    ADMIN = "admin", "Admin action"


class ScalingEvent(models.Model):
    """Every decision, including "no change", with the numbers and the rule that decided it."""

    service = models.CharField(max_length=50, db_index=True)
    policy = models.ForeignKey(ScalingPolicy, null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    action = models.CharField(max_length=10, choices=ScaleDirection.choices)
    from_instances = models.PositiveIntegerField()
    desired_instances = models.PositiveIntegerField(help_text="What the metrics recommended, clamped to [min, max].")
    to_instances = models.PositiveIntegerField(help_text="Instances after acting (the same as from for no change).")
    reason = models.TextField()
    metrics = models.JSONField(default=dict, blank=True, help_text="Each metric's value, target, proposal and age.")
    rule = models.CharField(max_length=80, help_text="The rule or limit that had the last word.")
    success = models.BooleanField(default=True)
    error = models.TextField(blank=True)
    dry_run = models.BooleanField(default=False)
    trigger = models.CharField(max_length=10, choices=ScalingTrigger.choices, default=ScalingTrigger.TICK)
    details = models.JSONField(default=dict, blank=True, help_text="Containers started or stopped, drain results.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["service", "-created_at"], name="scaling_event_service_idx"),
            # The cooldown query: the last successful action of a service.
            models.Index(fields=["service", "success", "action", "-created_at"], name="scaling_event_cooldown_idx"),
            # The same question as one index probe whatever the actions' mix (the policy list asks it
            # per policy; without it a dry-run policy, which never really scales, read every event).
            models.Index(
                fields=["service", "dry_run", "-created_at"],
                condition=models.Q(success=True, action__in=["up", "down"]),
                name="scaling_event_scaled_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.service} {self.action} {self.from_instances}→{self.to_instances} ({self.rule})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.pk,
            "service": self.service,
            "action": self.action,
            "from": self.from_instances,
            "desired": self.desired_instances,
            "to": self.to_instances,
            "rule": self.rule,
            "reason": self.reason,
            "success": self.success,
            "error": self.error,
            "dry_run": self.dry_run,
            "trigger": self.trigger,
            "at": self.created_at.isoformat(),
        }
