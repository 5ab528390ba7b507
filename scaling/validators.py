"""Validation of a scaling policy's container template, with messages an operator can act on."""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError

# Labels under this prefix mark containers as ours; only the Docker backend sets them.
RESERVED_LABEL_PREFIX = "io.fabric-control-plane."

# Docker's reference grammar (distribution/reference): [registry[:port]/]path[:tag][@digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REFERENCE = re.compile(
    r"^(?:(?P<registry>(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)/)?"
    rf"(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?$"
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,200}$")
_NETWORK = re.compile(r"^(?:host|none|bridge|container:[A-Za-z0-9_.-]+|[A-Za-z0-9][A-Za-z0-9_.-]{0,127})$")


def validate_image_reference(value: str) -> None:
    if not value or len(value) > 255 or not _IMAGE_REFERENCE.match(value):
        raise ValidationError(
            "%(value)r is not a Docker image reference: use [registry/]name[:tag][@digest] "
            "with a lower-case name, e.g. 'fcp-tiny:latest' or 'registry.example.com/team/app:1.2'.",
            params={"value": value},
            code="invalid_image",
        )


def validate_command(value: Any) -> None:
    """Exec form only: a list of strings, so SIGTERM reaches the process instead of a shell."""
    if not isinstance(value, list) or not all(isinstance(arg, str) for arg in value):
        raise ValidationError(
            'The command must be a JSON list of strings (exec form), e.g. ["celery", "-A", "project", "worker"].',
            code="invalid_command",
        )


def validate_environment(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValidationError('The environment must be a JSON object, e.g. {"LOG_LEVEL": "INFO"}.', code="invalid_env")
    for name, setting in value.items():
        if not _ENV_NAME.match(str(name)):
            raise ValidationError("%(name)r is not a valid environment variable name.", params={"name": name})
        if not isinstance(setting, str):
            raise ValidationError("Environment variable %(name)s must be a string.", params={"name": name})


def validate_labels(value: Any) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValidationError('Labels must be a JSON object of strings, e.g. {"team": "infra"}.', code="invalid_labels")
    reserved = sorted(key for key in value if key.startswith(RESERVED_LABEL_PREFIX))
    if reserved:
        raise ValidationError(
            "Labels under %(prefix)s are set by the control plane itself (ownership): remove %(keys)s.",
            params={"prefix": RESERVED_LABEL_PREFIX, "keys": ", ".join(reserved)},
            code="reserved_label",
        )


def validate_volumes(value: Any) -> None:
    """Bind mounts as Docker writes them: "/host/path:/container/path[:ro|rw]"."""
    if not isinstance(value, list):
        raise ValidationError('Volumes must be a JSON list, e.g. ["/srv/data:/data:ro"].', code="invalid_volumes")
    for spec in value:
        parts = spec.split(":") if isinstance(spec, str) else []
        if not (
            len(parts) in (2, 3)
            and parts[0].startswith("/")
            and parts[1].startswith("/")
            and (len(parts) == 2 or parts[2] in ("ro", "rw"))
        ):
            raise ValidationError(
                "%(spec)r is not a bind mount: use /host/path:/container/path[:ro|rw].", params={"spec": spec}
            )


def validate_queue_names(value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(q, str) and _QUEUE_NAME.match(q) for q in value):
        raise ValidationError(
            'Queues must be a JSON list of Celery queue names, e.g. ["celery"].', code="invalid_queues"
        )


def validate_network(value: str) -> None:
    if value and not _NETWORK.match(value):
        raise ValidationError(
            "%(value)r is not a Docker network: use host, none, bridge, container:<name> or a network name.",
            params={"value": value},
        )
