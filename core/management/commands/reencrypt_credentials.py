"""``manage.py reencrypt_credentials``: re-encrypt every stored secret under the first key.

Key rotation: put a new Fernet key first in ``CREDENTIALS_KEYS`` (keeping the old
ones after it), deploy, run this command, then drop the old keys. A credential no
configured key opens is reported by name and left alone; the exit code is then
non-zero. Secrets are never printed.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from core.credentials import CredentialError, reencrypt
from core.models import Credential


class Command(BaseCommand):
    help = "Re-encrypt every stored credential under the first key of CREDENTIALS_KEYS."

    def handle(self, *args: Any, **options: Any) -> None:
        done, failed = 0, []
        for credential in Credential.objects.order_by("id").only("id", "name", "encrypted_secret"):
            try:
                token = reencrypt(credential.encrypted_secret, name=credential.name)
            except CredentialError as exc:
                failed.append(credential.name)
                self.stderr.write(str(exc))
                continue
            # A conditional UPDATE: a secret set meanwhile is already under the first key; keep it.
            done += Credential.objects.filter(id=credential.id, encrypted_secret=credential.encrypted_secret).update(
                encrypted_secret=token
            )
        self.stdout.write(f"Re-encrypted {done} credential(s) under the first key.")
        if failed:
            raise CommandError(f"{len(failed)} credential(s) could not be opened: {', '.join(failed)}")
