"""System checks for the credential keys (``core/credentials.py``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from core.credentials import KEY_HINT, invalid_key_positions


@register()
def check_credentials_keys(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """A key that is not a Fernet key would fail every credential at the moment of use: fail at start-up."""
    keys = [key.strip().encode() for key in settings.CREDENTIALS_KEYS if key.strip()]
    bad = invalid_key_positions(keys)
    if not bad:
        return []
    positions = ", ".join(str(p) for p in bad)
    return [
        Error(
            f"CREDENTIALS_KEYS entry {positions} is not a Fernet key (32 url-safe base64-encoded bytes).",
            hint=KEY_HINT,
            id="core.E001",
        )
    ]


@register(deploy=True)
def check_credentials_keys_deploy(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if any(key.strip() for key in settings.CREDENTIALS_KEYS):
        return []
    return [
        Warning(
            "CREDENTIALS_KEYS is not set: stored credentials are encrypted with a key derived from SECRET_KEY, "
            "so changing SECRET_KEY makes every stored credential unreadable.",
            hint="Set CREDENTIALS_KEYS to one or more Fernet keys (the first encrypts, all decrypt), then run "
            "manage.py reencrypt_credentials: secrets stored under the derived key stay readable until then.",
            id="core.W001",
        )
    ]
