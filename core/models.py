"""Shared platform records. Today: ``Credential``, a named secret several objects can use.

A credential's secret is encrypted at rest (``core.credentials``) and write-only:
it is set through ``set_secret`` and read back only as a masked ``Secret`` whose
plain text ``reveal()`` hands to git or an HTTP client at the moment of use. Its
``str`` is the name and its ``repr`` shows no ciphertext, so neither a log line
nor an admin page can show the secret by accident.
"""

from __future__ import annotations

from datetime import datetime

from django.db import models
from django.utils import timezone

from core.credentials import Secret, decrypt, encrypt


class Credential(models.Model):
    class Kind(models.TextChoices):
        HTTPS_TOKEN = "https_token", "HTTPS user name + token or password"
        BEARER_TOKEN = "bearer_token", "Bearer token"

    name = models.CharField(max_length=100, unique=True, help_text="What operators choose it by, e.g. 'gitlab-deploy'.")
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.HTTPS_TOKEN)
    username = models.CharField(
        max_length=200,
        blank=True,
        help_text="Not secret. For HTTPS tokens: the user name the Git host expects (e.g. 'oauth2', 'x-access-token').",
    )
    description = models.TextField(blank=True)
    # A Fernet token (core.credentials); never shown, searched or logged.
    encrypted_secret = models.TextField(editable=False)
    # When the secret itself was last set: "set on <date>" for operators who may not see it.
    rotated_at = models.DateTimeField(editable=False, default=timezone.now)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Credential {self.pk}: {self.name} ({self.kind})>"

    def set_secret(self, plaintext: str, now: datetime | None = None) -> None:
        """Encrypt and keep ``plaintext``; the caller saves. ``rotated_at`` records when."""
        self.encrypted_secret = encrypt(plaintext)
        self.rotated_at = now or timezone.now()

    def secret(self) -> Secret:
        """The decrypted secret, masked until ``reveal()``; ``CredentialError`` if no key opens it."""
        return decrypt(self.encrypted_secret, name=self.name)


class PeriodicStep(models.Model):
    """When a tick step that runs less often than every tick may run next (``core.retention``).

    Claimed by a conditional UPDATE on ``next_run_at`` (``core.periodic.claim``), so of
    several ticks on several hosts exactly one runs the step per interval, on the
    application clock (tests travel through time with freezegun).
    """

    name = models.CharField(max_length=100, unique=True)
    next_run_at = models.DateTimeField()
    last_started_at = models.DateTimeField(null=True, blank=True)
    last_finished_at = models.DateTimeField(null=True, blank=True)
    last_metrics = models.JSONField(default=dict, blank=True, help_text="What the last run reported to its tick.")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} (next at {self.next_run_at:%Y-%m-%d %H:%M:%S})"
