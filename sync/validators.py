"""Validation of a fabric's Git source, applied by the model and the admin form.

Only three kinds of source are accepted: ``https://``, ``ssh://`` (or scp-like
``user@host:path``), and local paths (plain or ``file://``) below one of
``SYNC_ALLOWED_LOCAL_ROOTS``. Everything else, notably git's ``ext::`` transport
that runs a command, is rejected before git ever sees it.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

from core.redaction import redact

_SCP_LIKE = re.compile(r"^(?P<user>[A-Za-z0-9._-]+@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>[^:\\].*)$")
_BRANCH = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)[A-Za-z0-9._/-]+(?<!\.lock)(?<![/.])$")


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


def validate_git_url(value: str) -> None:
    shown = redact(value)
    if not value or value != value.strip() or any(c in value for c in "\n\r\0"):
        raise ValidationError("Git URL must be a single line without surrounding spaces.")
    if value.startswith("-"):
        raise ValidationError(f"Git URL may not start with '-': {shown}")
    if "::" in value.split("/", 1)[0]:
        raise ValidationError(f"Git transport helpers such as 'ext::' are not allowed: {shown}")
    if value.startswith("/"):
        _check_local_path(value, shown)
        return
    if "://" in value:
        parts = urlsplit(value)
        scheme = parts.scheme.lower()
        if scheme == "file":
            _check_local_path(parts.path, shown)
            return
        if scheme not in {"https", "ssh"}:
            raise ValidationError(
                f"Unsupported Git URL scheme '{scheme}': use https://, ssh:// or a local path ({shown})."
            )
        if not parts.hostname:
            raise ValidationError(f"Git URL has no host: {shown}")
        return
    if _SCP_LIKE.match(value):
        return
    raise ValidationError(f"Not a Git URL (https://, ssh://, user@host:path or /local/path): {shown}")


def validate_git_branch(value: str) -> None:
    if not _BRANCH.match(value):
        raise ValidationError(f"Not a valid branch name: {value!r}")


def validate_git_path(value: str) -> None:
    """The manifest folder must stay inside the repository."""
    if not value:
        return
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or value.startswith("-"):
        raise ValidationError(f"Manifest path must be relative and stay inside the repository: {value!r}")
