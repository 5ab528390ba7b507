"""Validation of a fabric's Git source, applied by the model and the admin form.

Only three kinds of source are accepted: ``https://``, ``ssh://`` (or scp-like
``user@host:path``), and local paths (plain or ``file://``) below one of
``SYNC_ALLOWED_LOCAL_ROOTS``. Everything else, notably git's ``ext::`` transport
that runs a command, is rejected before git ever sees it.

Credentials never live in the URL (git echoes URLs in its errors, and the admin shows
them): a URL with a password or token is refused with a message pointing to the
fabric's Git credential (``core.models.Credential``). Every refusal is a
``ValidationError`` with the URL redacted, never another exception (an admin 500).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

from core.redaction import has_secret_query, looks_like_port, redact, url_userinfo

_SCP_LIKE = re.compile(r"^(?P<user>[A-Za-z0-9._-]+@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>[^:\\].*)$")
# git check-ref-format's rules within a safe character set; fullmatch, so no trailing newline slips through.
_BRANCH = re.compile(r"(?!-)(?!\.)(?!.*\.\.)(?!.*//)(?!.*/\.)(?!.*\.lock/)[A-Za-z0-9._/-]+(?<!\.lock)(?<![/.])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# "user:password@host:path": git's scp-like form with a password (ssh would never use it)
_SCP_PASSWORD = re.compile(r"^[^@/:]*:.*@")
CREDENTIALS_HELP = (
    "remove them from the URL and choose a Git credential for the fabric instead "
    "(stored encrypted; manage them under Platform core > Credentials)"
)


def allowed_local_roots() -> list[Path]:
    return [Path(root).resolve() for root in settings.SYNC_ALLOWED_LOCAL_ROOTS]


def _check_local_path(path_text: str, shown: str) -> None:
    path = Path(path_text)
    if not path.is_absolute():
        raise ValidationError(f"Local Git path must be absolute: {shown}")
    resolved = path.resolve()
    roots = allowed_local_roots()
    if not any(resolved == root or root in resolved.parents for root in roots):
        allowed = ", ".join(str(r) for r in roots) or "(none configured)"
        raise ValidationError(
            f"Local Git path {shown} is outside the allowed roots ({allowed}); "
            "set SYNC_ALLOWED_LOCAL_ROOTS to allow it."
        )


def _refuse_credentials(value: str, shown: str) -> None:
    """Refuse a URL that carries a password or token (in the user info or the query)."""
    refused = ValidationError(f"Git URL contains credentials ({shown}): {CREDENTIALS_HELP}.")
    scheme, sep, rest = value.partition("://")
    if not sep:
        if _SCP_PASSWORD.match(value):
            # Redaction does not read this form: the message must not echo the URL.
            raise ValidationError(f"Git URL contains credentials (user:password@host:path): {CREDENTIALS_HELP}.")
        return
    if has_secret_query(value):
        raise refused
    if scheme.lower() == "ssh":
        # A user name is how ssh logs in; a password can never be used (BatchMode) and is refused.
        parts = url_userinfo(value)
        if parts and parts[2] is not None and not looks_like_port(parts[2]):
            raise refused
        return
    if "@" in rest.split("/", 1)[0]:
        raise refused  # any user info, a lone token included
    if "@" in rest:
        # A password with an unencoded "/" (git would read a host that is not one), or a path.
        raise ValidationError(
            f"Git URL contains credentials ({shown}): {CREDENTIALS_HELP}. "
            "An '@' that belongs to the path must be written %40."
        )


def validate_git_url(value: str) -> None:
    shown = redact(value)
    if not value or value != value.strip() or _CONTROL.search(value):
        raise ValidationError("Git URL must be a single line without surrounding spaces or control characters.")
    if value.startswith("-"):
        raise ValidationError(f"Git URL may not start with '-': {shown}")
    if "::" in value.split("/", 1)[0]:
        raise ValidationError(f"Git transport helpers such as 'ext::' are not allowed: {shown}")
    if value.startswith("/"):
        _check_local_path(value, shown)
        return
    _refuse_credentials(value, shown)
    if "://" in value:
        try:
            parts = urlsplit(value)
            hostname, _port = parts.hostname, parts.port  # both parse, and may raise ValueError
        except ValueError:  # "Invalid IPv6 URL", a port that is not a number (its text may echo the URL)
            raise ValidationError(f"Not a valid URL (malformed host or port): {shown}") from None
        scheme = parts.scheme.lower()
        if scheme == "file":
            _check_local_path(parts.path, shown)
            return
        if scheme not in {"https", "ssh"}:
            raise ValidationError(
                f"Unsupported Git URL scheme '{scheme}': use https://, ssh:// or a local path ({shown})."
            )
        if not hostname:
            raise ValidationError(f"Git URL has no host: {shown}")
        return
    if _SCP_LIKE.match(value):
        return
    raise ValidationError(f"Not a Git URL (https://, ssh://, user@host:path or /local/path): {shown}")


def validate_git_branch(value: str) -> None:
    if not _BRANCH.fullmatch(value):
        raise ValidationError(f"Not a valid branch name: {value!r}")


def validate_git_path(value: str) -> None:
    """The manifest folder must stay inside the repository."""
    if not value:
        return
    if _CONTROL.search(value):
        raise ValidationError(f"Manifest path may not contain control characters: {value!r}")
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or value.startswith("-"):
        raise ValidationError(f"Manifest path must be relative and stay inside the repository: {value!r}")
