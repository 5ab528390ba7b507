"""The Docker Engine API, as the scaler needs it: count, start and stop *our* containers.

Ownership is a pair of labels only this module sets on the containers it creates
(``validate_labels`` refuses them in policy templates). A container is ours when it
carries both ``io.fabric-control-plane.managed=true`` and
``io.fabric-control-plane.service=<name>``; every other container on the engine, even
one with the same service label or name, is never counted, stopped or changed. The
filter is applied by the engine and checked again here before any stop.

Every call that cannot reach the engine raises ``EngineUnreachable``; start and stop
return results instead of raising for anything else, so a tick never sees an
exception from Docker.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import docker
import requests
from django.conf import settings
from docker.errors import APIError, DockerException, NotFound
from docker.models.containers import Container

from core.redaction import redact
from scaling.validators import RESERVED_LABEL_PREFIX

logger = logging.getLogger(__name__)

OWNER_LABEL = f"{RESERVED_LABEL_PREFIX}managed"
SERVICE_LABEL = f"{RESERVED_LABEL_PREFIX}service"
OWNER_VALUE = "true"
# Set on every instance so a process can tell which instance it is (e.g. a Celery
# worker naming itself); also the container's hostname and name.
INSTANCE_ENV = "FCP_INSTANCE"
SERVICE_ENV = "FCP_SERVICE"


class EngineUnreachable(Exception):
    """The Docker engine did not answer: nothing can be counted or changed."""


@dataclass(frozen=True)
class ContainerTemplate:
    image: str
    command: Sequence[str] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    network: str = ""
    volumes: Sequence[str] = ()
    working_dir: str = ""
    stop_timeout: int = 10


@dataclass(frozen=True)
class StartResult:
    ok: bool
    container_id: str = ""
    name: str = ""
    error: str = ""


@dataclass(frozen=True)
class StopResult:
    ok: bool
    container_id: str
    name: str
    error: str = ""


def is_owned(container: Container, service: str) -> bool:
    labels = container.labels or {}
    return labels.get(OWNER_LABEL) == OWNER_VALUE and labels.get(SERVICE_LABEL) == service


def hostname_of(container: Container) -> str:
    return str((container.attrs.get("Config") or {}).get("Hostname") or container.name)


def _describe(exc: BaseException) -> str:
    # Engine errors can echo URLs with credentials from an environment or image name.
    return redact(f"{type(exc).__name__}: {exc}")[:500]


class DockerBackend:
    """One engine connection for one evaluation; ``close()`` it when done."""

    def __init__(self, base_url: str | None = None, timeout: int | None = None, max_pool_size: int | None = None):
        self.base_url = base_url or settings.DOCKER_URL
        self.timeout = timeout or settings.DOCKER_TIMEOUT
        # The stats thread pool makes that many requests at once; a smaller pool would
        # serialise them again.
        self.max_pool_size = max_pool_size or max(10, settings.SCALING_STATS_WORKERS)
        self._client: docker.DockerClient | None = None

    # --- Connection ----------------------------------------------------------------------
    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.DockerClient(
                    base_url=self.base_url, timeout=self.timeout, max_pool_size=self.max_pool_size, version="auto"
                )
            except (DockerException, requests.RequestException, OSError) as exc:
                raise EngineUnreachable(f"Docker engine unreachable at {self.base_url}: {_describe(exc)}") from exc
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> DockerBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _unreachable(self, exc: BaseException) -> EngineUnreachable:
        return EngineUnreachable(f"Docker engine unreachable at {self.base_url}: {_describe(exc)}")

    # --- Reading -------------------------------------------------------------------------
    def list_instances(self, service: str) -> list[Container]:
        """Running containers of ``service`` that we own, oldest first."""
        filters = {"label": [f"{OWNER_LABEL}={OWNER_VALUE}", f"{SERVICE_LABEL}={service}"], "status": "running"}
        try:
            found = self.client.containers.list(filters=filters)
        except (APIError, DockerException, requests.RequestException, OSError) as exc:
            raise self._unreachable(exc) from exc
        owned = [c for c in found if is_owned(c, service)]
        return sorted(owned, key=lambda c: (c.attrs.get("Created") or "", c.id))

    def count_by_service(self) -> dict[str, int]:
        """Running owned containers per service, in one call (admin and status views)."""
        try:
            found = self.client.containers.list(filters={"label": f"{OWNER_LABEL}={OWNER_VALUE}", "status": "running"})
        except (APIError, DockerException, requests.RequestException, OSError) as exc:
            raise self._unreachable(exc) from exc
        counts: dict[str, int] = {}
        for container in found:
            service = (container.labels or {}).get(SERVICE_LABEL)
            if service and (container.labels or {}).get(OWNER_LABEL) == OWNER_VALUE:
                counts[service] = counts.get(service, 0) + 1
        return counts

    # --- Acting --------------------------------------------------------------------------
    def start_instance(self, service: str, template: ContainerTemplate) -> StartResult:
        """Create and start one instance from ``template``, labelled as ours."""
        name = f"fcp-{service}-{secrets.token_hex(4)}"
        labels = {**template.labels, OWNER_LABEL: OWNER_VALUE, SERVICE_LABEL: service}
        environment = {**template.environment, INSTANCE_ENV: name, SERVICE_ENV: service}
        options: dict[str, Any] = {
            "name": name,
            "hostname": name,
            "labels": labels,
            "environment": environment,
            "detach": True,
            "stop_signal": "SIGTERM",
        }
        if template.command:
            options["command"] = list(template.command)
        if template.working_dir:
            options["working_dir"] = template.working_dir
        if template.volumes:
            options["volumes"] = list(template.volumes)
        if template.network in ("host", "none", "bridge") or template.network.startswith("container:"):
            options["network_mode"] = template.network
        elif template.network:
            options["network"] = template.network
        try:
            container = self.client.containers.run(template.image, **options)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise self._unreachable(exc) from exc
        except (DockerException, requests.RequestException, OSError) as exc:
            logger.warning("could not start an instance of %s: %s", service, _describe(exc))
            self._remove_quietly(name)
            return StartResult(False, name=name, error=_describe(exc))
        return StartResult(True, container_id=container.id or "", name=name)

    def stop_instance(self, container: Container, service: str, timeout: int) -> StopResult:
        """Stop (SIGTERM, then SIGKILL after ``timeout`` s) and remove one owned instance."""
        name = container.name or container.id or "?"
        if not is_owned(container, service):
            # Defence in depth: the list is already filtered by the engine.
            return StopResult(False, container.id or "", name, "refused: not an owned instance of this service")
        try:
            # An explicit timeout: docker-py sends its own and overrides the container's
            # StopTimeout (docker-py #1815); it also extends the HTTP timeout by as much.
            container.stop(timeout=timeout)
            container.remove()
        except NotFound:
            return StopResult(True, container.id or "", name, "already gone")
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise self._unreachable(exc) from exc
        except (DockerException, requests.RequestException, OSError) as exc:
            return StopResult(False, container.id or "", name, _describe(exc))
        return StopResult(True, container.id or "", name)

    def _remove_quietly(self, name: str) -> None:
        """A failed start can leave a created container behind: remove it, or it piles up."""
        try:
            self.client.containers.get(name).remove(force=True)
        except Exception:  # best effort
            logger.debug("no leftover container %s to remove", name)
