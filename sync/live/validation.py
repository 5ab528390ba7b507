"""Validation of a fabric's cluster settings (``sync.models.FabricCluster``), for the model and the admin.

Every refusal is a ``ValidationError`` whose message never echoes a credential: a URL
with user info is refused without repeating it, and a CA bundle is not quoted.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
from django.core.exceptions import ValidationError

from sync.live.client import KubeTLSError, ssl_context
from sync.live.drift import parse_ignore_rules
from sync.live.kinds import parse_kinds

# A namespace is a DNS-1123 label.
_NAMESPACE = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
MAX_NAMESPACES = 50


def validate_cluster_url(value: str) -> None:
    """``https://host[:port][/path]``: no other scheme, no user info, no query or fragment."""
    try:
        url = httpx.URL(value.strip())
    except (httpx.InvalidURL, TypeError, ValueError):
        raise ValidationError("The API server URL is not a valid URL.") from None
    if url.userinfo:
        # Not repeated in the message: the user info may be a password or a token.
        raise ValidationError(
            "The API server URL must not carry credentials: choose a bearer-token credential for the cluster instead."
        )
    if url.scheme != "https" or not url.host:
        raise ValidationError("The API server URL must be https://host[:port] (a cluster is never reached over http).")
    if url.query or url.fragment:
        raise ValidationError("The API server URL must not have a query or a fragment.")


def validate_ca_bundle(value: str) -> None:
    """Empty (the system's trust store) or PEM certificates Python can load."""
    if not value.strip():
        return
    if "-----BEGIN CERTIFICATE-----" not in value:
        raise ValidationError("The CA bundle must be PEM text (-----BEGIN CERTIFICATE----- ...).")
    try:
        ssl_context(value)
    except KubeTLSError as exc:
        raise ValidationError(str(exc)) from None


def validate_namespaces(value: Any) -> None:
    """A non-empty list of distinct namespace names."""
    if not isinstance(value, list) or not value:
        raise ValidationError('Namespaces must be a non-empty JSON list of names, e.g. ["default"].')
    if len(value) > MAX_NAMESPACES:
        raise ValidationError(f"At most {MAX_NAMESPACES} namespaces per fabric.")
    for name in value:
        if not isinstance(name, str) or not _NAMESPACE.fullmatch(name):
            raise ValidationError(f"{str(name)[:70]!r} is not a namespace name (a DNS-1123 label).")
    if len(set(value)) != len(value):
        raise ValidationError("Each namespace may appear once.")


def validate_kinds(value: Any) -> None:
    """A JSON list of kinds (``sync.live.kinds.parse_kinds``); empty means the Hedgehog defaults."""
    if not isinstance(value, list):
        raise ValidationError("Kinds must be a JSON list (empty for the Hedgehog defaults).")
    try:
        parse_kinds(value)
    except (ValueError, TypeError) as exc:
        raise ValidationError(str(exc)) from None


def validate_ignore_rules(value: Any) -> None:
    """A JSON list of Argo-CD-style rules (``sync.live.drift.parse_ignore_rules``)."""
    if not isinstance(value, list) or not all(isinstance(rule, dict) for rule in value):
        raise ValidationError('Ignore rules must be a JSON list of objects, e.g. [{"jsonPointers": ["/spec/x"]}].')
    try:
        parse_ignore_rules(value)
    except (ValueError, TypeError) as exc:
        raise ValidationError(str(exc)) from None


def default_namespaces() -> list[str]:
    return ["default"]
