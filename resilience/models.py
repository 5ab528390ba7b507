"""What operators see of resilience: breaker snapshots, component health and its history, healing.

The live breaker state is in Redis (``core.breaker_redis``); ``CircuitBreakerState``
is its snapshot, refreshed each tick, so the admin can list and act on breakers.
Fields marked "system" are written only by ``resilience.tracking`` and
``resilience.healing`` through explicit updates.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from core.health import ComponentType, HealthStatus


class BreakerStateChoice(models.TextChoices):
    CLOSED = "closed", "Closed"
    OPEN = "open", "Open"
    HALF_OPEN = "half_open", "Half-open"
    FORCED_OPEN = "forced_open", "Forced open"
    DISABLED = "disabled", "Disabled"


class CircuitBreakerState(models.Model):
    """Snapshot of one shared breaker, refreshed every tick from Redis."""

    name = models.CharField(max_length=200, unique=True)
    state = models.CharField(max_length=20, choices=BreakerStateChoice.choices, default=BreakerStateChoice.CLOSED)
    total_calls = models.PositiveBigIntegerField(default=0)
    successful_calls = models.PositiveBigIntegerField(default=0)
    failed_calls = models.PositiveBigIntegerField(default=0)
    rejected_calls = models.PositiveBigIntegerField(default=0)
    failure_rate = models.FloatField(default=0.0, help_text="Percent of the current sliding window.")
    consecutive_failures = models.PositiveIntegerField(default=0)
    opened_at = models.DateTimeField(null=True, blank=True)
    open_until = models.DateTimeField(null=True, blank=True, help_text="Trial calls are admitted from then on.")
    last_failure_at = models.DateTimeField(null=True, blank=True)
    refreshed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        verbose_name = "circuit breaker"

    def __str__(self) -> str:
        return f"{self.name} ({self.state})"


class ComponentHealth(models.Model):
    """The current, threshold-smoothed health of one component, plus its healing budget."""

    name = models.CharField(max_length=200, unique=True)
    component_type = models.CharField(max_length=20, choices=ComponentType.choices)
    critical = models.BooleanField(default=False, help_text="UNHEALTHY here makes the whole system UNHEALTHY.")

    # --- system: status -----------------------------------------------------------------
    status = models.CharField(max_length=20, choices=HealthStatus.choices, default=HealthStatus.UNKNOWN)
    status_since = models.DateTimeField(default=timezone.now)
    consecutive_failures = models.PositiveIntegerField(default=0)
    consecutive_successes = models.PositiveIntegerField(default=0)
    last_message = models.TextField(blank=True)
    last_latency_ms = models.FloatField(null=True, blank=True)
    last_details = models.JSONField(default=dict, blank=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)

    # --- operator -----------------------------------------------------------------------
    in_maintenance = models.BooleanField(default=False, help_text="Healing leaves this component alone.")
    needs_attention = models.BooleanField(
        default=False, help_text="Healing used its budget and stopped; an operator must look and resume it."
    )

    # --- system: healing budget (resilience.healing) -------------------------------------
    heal_attempts = models.PositiveIntegerField(default=0, help_text="Attempts in the current window.")
    heal_window_started_at = models.DateTimeField(null=True, blank=True)
    heal_backoff_seconds = models.PositiveIntegerField(default=0)
    next_heal_at = models.DateTimeField(null=True, blank=True)
    heal_lock_until = models.DateTimeField(null=True, blank=True)
    heal_lock_owner = models.CharField(max_length=200, blank=True)

    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "component health"
        verbose_name_plural = "component health"
        indexes = [models.Index(fields=["status", "name"], name="component_status_idx")]

    def __str__(self) -> str:
        return f"{self.name}: {self.status}"


class HealthTransition(models.Model):
    """One change of a component's (smoothed) status: the history operators read."""

    component = models.ForeignKey(ComponentHealth, on_delete=models.CASCADE, related_name="transitions")
    from_status = models.CharField(max_length=20, choices=HealthStatus.choices)
    to_status = models.CharField(max_length=20, choices=HealthStatus.choices)
    message = models.TextField(blank=True)
    at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.component.name}: {self.from_status} -> {self.to_status}"


class HealingOutcome(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded (check passes again)"
    NOT_HEALED = "not_healed", "Action ran, check still fails"
    FAILED = "failed", "Action failed"


class HealingAttempt(models.Model):
    component = models.ForeignKey(ComponentHealth, on_delete=models.CASCADE, related_name="healing_attempts")
    action = models.CharField(max_length=100)
    host = models.CharField(max_length=200, blank=True)
    attempt = models.PositiveIntegerField(help_text="Number of this attempt in the budget window.")
    backoff_seconds = models.PositiveIntegerField(help_text="Wait before the next attempt may start.")
    started_at = models.DateTimeField(db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=20, choices=HealingOutcome.choices, default=HealingOutcome.RUNNING)
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"{self.action} on {self.component.name}: {self.outcome}"
