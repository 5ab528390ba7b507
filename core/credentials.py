"""Secrets at rest: encrypted with Fernet, revealed only at the moment of use.

Every secret the control plane keeps (Git tokens today, Kubernetes bearer tokens
next) is stored as a Fernet token (AES-128-CBC + HMAC-SHA256, with a timestamp)
in ``core.models.Credential``. The keys come from the deployment setting
``CREDENTIALS_KEYS``: a comma-separated list of Fernet keys, the first encrypts,
all decrypt (``MultiFernet``), so a key is rotated by putting a new one first and
running ``manage.py reencrypt_credentials`` before dropping the old one. Without
the setting one key is derived from ``SECRET_KEY`` with HKDF, and ``check --deploy``
says so (``core.W001``): changing ``SECRET_KEY`` would then make every secret
unreadable. The derived key is always tried last, so setting ``CREDENTIALS_KEYS``
later loses nothing; ``reencrypt_credentials`` then moves the old secrets over.

A decrypted secret is a ``Secret``: its ``str`` and ``repr`` are masked, so it can
pass through a log call, an f-string or a traceback without leaking; only
``reveal()`` returns the text, and only the code that hands it to git (or to an
HTTP client) calls it. No message raised here ever contains a secret or a key.
"""

from __future__ import annotations

import base64
import hmac
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

if TYPE_CHECKING:
    from core.models import Credential

MASK = "***"
KEY_HINT = "make one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
# Fixed HKDF parameters: the derived key must be the same in every process and release.
_HKDF_SALT = b"fabric-control-plane/core.credentials"
_HKDF_INFO = b"credential encryption key v1"


class CredentialError(Exception):
    """A secret could not be encrypted or revealed. The message names the credential, never the secret."""


class Secret:
    """A revealed secret that stays masked wherever it is printed, logged or compared by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The plain text. Call it only where the secret is handed over (git's environment, an HTTP header)."""
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(Secret)

    def __bool__(self) -> bool:
        return bool(self._value)


# --- Keys ------------------------------------------------------------------------------


def derived_key(secret_key: str) -> bytes:
    """HKDF-SHA256 of ``SECRET_KEY``: the key when ``CREDENTIALS_KEYS`` is unset, else the last one to try."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO)
    return base64.urlsafe_b64encode(hkdf.derive(secret_key.encode()))


def configured_keys() -> list[bytes]:
    """The keys of ``CREDENTIALS_KEYS`` in order (the first encrypts); empty when unset."""
    return [key.strip().encode() for key in settings.CREDENTIALS_KEYS if key.strip()]


def decryption_keys() -> list[bytes]:
    """``CREDENTIALS_KEYS`` in order, then the ``SECRET_KEY``-derived key.

    The derived key stays last so that secrets stored before ``CREDENTIALS_KEYS`` was
    set remain readable until ``manage.py reencrypt_credentials`` moves them to the
    first key; it never encrypts once ``CREDENTIALS_KEYS`` is set.
    """
    keys = configured_keys()
    derived = derived_key(str(settings.SECRET_KEY))
    return keys if derived in keys else [*keys, derived]


def invalid_key_positions(keys: list[bytes]) -> list[int]:
    """1-based positions of entries that are not Fernet keys (for the system check; keys are never echoed)."""
    bad = []
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            bad.append(position)
    return bad


@lru_cache(maxsize=8)
def _multifernet(keys: tuple[bytes, ...]) -> MultiFernet:
    if bad := invalid_key_positions(list(keys)):
        positions = ", ".join(str(p) for p in bad)
        raise CredentialError(
            f"CREDENTIALS_KEYS entry {positions} is not a Fernet key (32 url-safe base64-encoded bytes; {KEY_HINT})."
        )
    return MultiFernet([Fernet(key) for key in keys])


def _cipher() -> MultiFernet:
    # Cached per key list, so a settings override (tests, rotation) takes effect at once.
    return _multifernet(tuple(decryption_keys()))


# --- Encrypt, decrypt, rotate ------------------------------------------------------------


def encrypt(plaintext: str) -> str:
    """A Fernet token (ASCII) for ``plaintext``, under the first key of ``decryption_keys()``."""
    return _cipher().encrypt(plaintext.encode()).decode("ascii")


def decrypt(token: str, *, name: str = "") -> Secret:
    """The secret inside ``token``; ``CredentialError`` (naming ``name`` only) if no configured key opens it."""
    try:
        return Secret(_cipher().decrypt(token.encode("ascii")).decode())
    except (InvalidToken, UnicodeError) as exc:
        label = f"credential {name!r}" if name else "a credential"
        raise CredentialError(
            f"{label} cannot be decrypted: the key that encrypted it is not in CREDENTIALS_KEYS "
            "(or SECRET_KEY changed while CREDENTIALS_KEYS was unset). Set the secret again, or restore the key."
        ) from exc


def reencrypt(token: str, *, name: str = "") -> str:
    """``token`` re-encrypted under the first configured key (key rotation); the secret is unchanged."""
    try:
        return _cipher().rotate(token.encode("ascii")).decode("ascii")
    except (InvalidToken, UnicodeError) as exc:
        label = f"credential {name!r}" if name else "a credential"
        raise CredentialError(f"{label} cannot be re-encrypted: no configured key opens it") from exc


# --- Using a credential ----------------------------------------------------------------


def http_authorization(credential: Credential) -> Secret:
    """The value of an HTTP ``Authorization`` header for ``credential``.

    ``https_token``: ``Basic base64(username:secret)`` (Git hosts take a token as the
    password). ``bearer_token``: ``Bearer <secret>`` (Kubernetes API tokens, and Git
    hosts that accept bearer tokens).
    """
    secret = credential.secret().reveal()
    if credential.kind == credential.Kind.BEARER_TOKEN:
        return Secret(f"Bearer {secret}")
    pair = f"{credential.username}:{secret}".encode()
    return Secret(f"Basic {base64.b64encode(pair).decode('ascii')}")


def git_credential_env(credential: Credential | None, url: str) -> dict[str, str]:
    """Environment that makes git send ``credential`` to ``url``'s host, or ``{}`` for none.

    Git reads ``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n`` as
    command-line configuration, so the header reaches git through its environment
    (readable only by the same user) and never through its argument list (which
    ``ps`` shows to everyone) or the URL (which git echoes in its errors). The key is
    scoped to ``scheme://host[:port]/`` of ``url`` (git's ``http.<url>.*``), so the
    header goes to that server only.
    """
    if credential is None:
        return {}
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = urlsplit("")
    if parts.scheme.lower() != "https" or not parts.netloc or "@" in parts.netloc:
        raise CredentialError(f"credential {credential.name!r} is sent over https:// only, to a URL without user info")
    header = http_authorization(credential)
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"http.https://{parts.netloc}/.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: {header.reveal()}",
    }
