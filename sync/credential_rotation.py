"""A rotated credential retries the fabrics that were failing, without waiting out their backoff.

A fabric whose Git or cluster credential was rejected (revoked, expired, rotated on
the host) fails and backs off for up to ``SYNC_FAILURE_BACKOFF_MAX`` (an hour). When an
operator then sets the new secret, waiting that hour helps nobody: the fabrics using
the credential that are failing become due at once, for the next tick's claim (never a
second code path; a fabric under a lease keeps it). Suspended fabrics stay suspended:
that is an operator's decision to undo, and the suspension says why. Re-encrypting a
secret under a new key (``reencrypt_credentials``) is not a rotation: ``rotated_at``
only moves when the secret itself is set.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Q
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver
from django.utils import timezone

from core.models import Credential
from sync.models import Fabric, SyncStatus


def retry_failing_fabrics(credential_id: int, now: datetime) -> int:
    """Make the fabrics that use ``credential_id`` and are failing for it due at ``now``.

    Failing means a failure streak (a Git credential, or a cluster token whose 401 failed
    the sync) or a cluster whose live step last failed: a rejected cluster token never
    fails the Git sync, so its fabric is not in backoff, but its drift stays unknown
    until the next interval unless the rotation brings the comparison forward.
    """
    uses_it = Q(git_credential_id=credential_id) | Q(cluster__token_id=credential_id)
    failing = Q(consecutive_failures__gt=0) | (Q(cluster__token_id=credential_id) & ~Q(cluster__last_error=""))
    return (
        Fabric.objects.filter(uses_it, failing, next_sync_at__gt=now)
        .exclude(sync_status=SyncStatus.SUSPENDED)
        .update(next_sync_at=now)
    )


@receiver(pre_save, sender=Credential)
def _note_rotation(sender: type[Credential], instance: Credential, **kwargs: Any) -> None:
    if instance.pk is None:
        return
    before = Credential.objects.filter(pk=instance.pk).values_list("rotated_at", flat=True).first()
    instance._fcp_rotated = before is not None and before != instance.rotated_at  # type: ignore[attr-defined]


@receiver(post_save, sender=Credential)
def _retry_after_rotation(sender: type[Credential], instance: Credential, created: bool, **kwargs: Any) -> None:
    if getattr(instance, "_fcp_rotated", False):
        retry_failing_fabrics(instance.pk, timezone.now())
