"""Validation of a scaling policy's container template, with messages an operator can act on.

A template must never make a container that is root on the host. Only what an
operator allowed in the deployment settings passes:

- volumes: named volumes; bind mounts only below ``SCALING_ALLOWED_BIND_ROOTS``
  (default none), and never of the Docker engine's socket or a directory holding it;
- networks: Docker's default bridge and ``none``, plus ``SCALING_ALLOWED_NETWORKS``
  (``host`` and ``container:<name>`` only when listed there);
- nothing else: ``validate_run_options`` checks the engine call's options once more
  right before a container is created, and refuses privileged mode, added
  capabilities, devices, host PID/IPC/user/UTS namespaces, security options and any
  option the backend does not set itself.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from django.conf import settings
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
_NETWORK = re.compile(r"^(?:container:[A-Za-z0-9_.-]+|[A-Za-z0-9][A-Za-z0-9_.-]{0,127})$")
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Always allowed: Docker's default network (what an empty network means) and no network.
DEFAULT_NETWORKS = ("bridge", "none")
# Whoever can reach the engine's socket is root on the host.
ENGINE_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


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


def _listed(values: list[str]) -> str:
    return ", ".join(values) if values else "none"


def _engine_sockets() -> set[str]:
    url = str(getattr(settings, "DOCKER_URL", ""))
    own = [url.removeprefix("unix://")] if url.startswith("unix://") else []
    return {posixpath.normpath(path) for path in (*ENGINE_SOCKETS, *own)}


def _check_bind_source(spec: str, source: str) -> None:
    roots = [str(root) for root in settings.SCALING_ALLOWED_BIND_ROOTS]
    if ".." in source.split("/"):
        raise ValidationError(
            "%(spec)r: a bind mount source may not contain '..'; write the path it means.",
            params={"spec": spec},
            code="bind_dotdot",
        )
    path = PurePosixPath(posixpath.normpath(source))
    if any(PurePosixPath(socket).is_relative_to(path) for socket in _engine_sockets()):
        raise ValidationError(
            "%(spec)r would give the container the Docker engine's socket (root on the host): never allowed.",
            params={"spec": spec},
            code="bind_engine_socket",
        )
    if not any(path.is_relative_to(posixpath.normpath(root)) for root in roots if root.startswith("/")):
        raise ValidationError(
            "%(spec)r bind-mounts %(path)s from the host, which is not below an allowed root "
            "(SCALING_ALLOWED_BIND_ROOTS: %(roots)s). Use a named volume (name:/container/path), "
            "or have an operator add a root to SCALING_ALLOWED_BIND_ROOTS.",
            params={"spec": spec, "path": str(path), "roots": _listed(roots)},
            code="bind_not_allowed",
        )


def validate_volumes(value: Any) -> None:
    """Named volumes ("name:/container/path[:ro|rw]") and bind mounts below an allowed root."""
    if not isinstance(value, list):
        raise ValidationError('Volumes must be a JSON list, e.g. ["data:/data", "/srv/app:/app:ro"].', code="invalid")
    for spec in value:
        parts = spec.split(":") if isinstance(spec, str) else []
        if not (
            len(parts) in (2, 3)
            and (parts[0].startswith("/") or _VOLUME_NAME.match(parts[0]))
            and parts[1].startswith("/")
            and (len(parts) == 2 or parts[2] in ("ro", "rw"))
        ):
            raise ValidationError(
                "%(spec)r is not a volume: use volume-name:/container/path[:ro|rw] "
                "or /host/path:/container/path[:ro|rw].",
                params={"spec": spec},
                code="invalid_volume",
            )
        if parts[0].startswith("/"):
            _check_bind_source(spec, parts[0])


def validate_queue_names(value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(q, str) and _QUEUE_NAME.match(q) for q in value):
        raise ValidationError(
            'Queues must be a JSON list of Celery queue names, e.g. ["celery"].', code="invalid_queues"
        )


def validate_network(value: str) -> None:
    """Empty (Docker's default network), bridge, none, or a network an operator allowed."""
    if not value or value in DEFAULT_NETWORKS:
        return
    if not _NETWORK.match(value):
        raise ValidationError(
            "%(value)r is not a Docker network: use a network name, bridge, none, host or container:<name>.",
            params={"value": value},
            code="invalid_network",
        )
    allowed = [str(name) for name in settings.SCALING_ALLOWED_NETWORKS]
    if value not in allowed:
        shares = value == "host" or value.startswith("container:")
        raise ValidationError(
            "%(value)r is not an allowed network%(why)s. Docker's default bridge and none are always "
            "allowed; others only when an operator lists them in SCALING_ALLOWED_NETWORKS (now: %(allowed)s).",
            params={
                "value": value,
                "why": " (it shares the host's or another container's network namespace)" if shares else "",
                "allowed": _listed(allowed),
            },
            code="network_not_allowed",
        )


# What ``scaling.docker_backend.run_options`` sets, and nothing more.
RUN_OPTIONS = frozenset(
    {"name", "hostname", "labels", "environment", "detach", "stop_signal", "command", "working_dir", "volumes"}
    | {"network", "network_mode"}
)
# Options that make a container root on the host, with why, for a clear refusal.
FORBIDDEN_RUN_OPTIONS = {
    "privileged": "privileged mode gives the container every capability and every host device",
    "cap_add": "added capabilities (SYS_ADMIN, NET_ADMIN, ...) open ways out of the container",
    "devices": "host devices give direct access to the host's hardware and disks",
    "device_requests": "host devices give direct access to the host's hardware",
    "device_cgroup_rules": "device rules give access to host devices",
    "pid_mode": "sharing a PID namespace lets the container see and signal host processes",
    "ipc_mode": "sharing an IPC namespace exposes host shared memory",
    "userns_mode": "leaving the user namespace makes root in the container root on the host",
    "uts_mode": "sharing the UTS namespace lets the container rename the host",
    "security_opt": "security options can turn off seccomp and AppArmor (unconfined)",
    "cgroupns": "the host cgroup namespace exposes the host's cgroups",
    "mounts": "mounts bypass the volume rules",
    "volumes_from": "volumes from another container bypass the volume rules",
    "sysctls": "kernel parameters are not the template's to change",
}


def validate_run_options(image: str, options: Mapping[str, Any]) -> None:
    """Defence in depth, right before the engine creates a container from ``options``.

    A policy written around ``full_clean`` (a queryset update, a fixture, SQL) must
    still never start a container that is root on the host, so the image, volumes and
    network are checked again against the current settings, and any option outside
    ``RUN_OPTIONS`` is refused, each message naming the option.
    """
    problems: list[str] = []
    for key in sorted(set(options) - RUN_OPTIONS):
        why = FORBIDDEN_RUN_OPTIONS.get(key, "the control plane does not set it, so it was not reviewed")
        problems.append(f"{key}: refused: {why}.")
    checks: list[tuple[str, Any, Any]] = [("image", validate_image_reference, image)]
    checks += [(key, validate_volumes, options[key]) for key in ("volumes",) if key in options]
    # Named after the policy's field: "network" becomes network_mode for host, none, bridge, container:.
    checks += [("network", validate_network, options[key]) for key in ("network", "network_mode") if key in options]
    for name, check, value in checks:
        try:
            check(value)
        except ValidationError as exc:
            problems.extend(f"{name}: {message}" for message in exc.messages)
    if problems:
        raise ValidationError(problems, code="refused_run_options")
