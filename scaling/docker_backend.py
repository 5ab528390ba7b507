"""The Docker Engine API, as the scaler needs it: count, start and stop *our* containers.

Ownership is a pair of labels only this module sets on the containers it creates
(``validate_labels`` refuses them in policy templates). A container is ours when it
carries both ``io.fabric-control-plane.managed=true`` and
``io.fabric-control-plane.service=<name>``; every other container on the engine, even
one with the same service label or name, is never counted, stopped or changed. The
filter is applied by the engine and checked again here before any stop.

Every Engine API call goes through the shared ``docker:engine`` circuit breaker
(``core.guards.docker_engine``), so when one process finds the engine dead, every
process stops calling it and pays one Redis round trip instead of a timeout. A call
that cannot reach the engine, or that the open breaker refuses, raises
``EngineUnreachable``; start and stop return results instead of raising for anything
else, so a tick never sees an exception from Docker.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import docker
import requests
from django.conf import settings
from django.core.exceptions import ValidationError
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container

from core.breaker import CircuitBreakerOpenError
from core.breaker_core import Outcome
from core.clients import docker_client
from core.guards import docker_engine
from core.redaction import redact
from scaling.validators import RESERVED_LABEL_PREFIX, validate_run_options

logger = logging.getLogger(__name__)

R = TypeVar("R")
# Errors that mean the engine did not answer (an ``APIError`` with a status did answer).
ENGINE_SILENT = (DockerException, requests.RequestException, OSError)

OWNER_LABEL = f"{RESERVED_LABEL_PREFIX}managed"
SERVICE_LABEL = f"{RESERVED_LABEL_PREFIX}service"
OWNER_VALUE = "true"
# Set on every instance so a process can tell which instance it is (e.g. a Celery
# worker naming itself); also the container's hostname and name.
INSTANCE_ENV = "FCP_INSTANCE"
SERVICE_ENV = "FCP_SERVICE"


class EngineUnreachable(Exception):
    """The Docker engine did not answer, or its open breaker refused the call: nothing can be counted or changed."""


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


def answer_status(exc: BaseException) -> int | None:
    """The HTTP status the engine answered with; None when it did not answer at all."""
    status = exc.status_code if isinstance(exc, APIError) else None
    return int(status) if status is not None else None


def engine_outcome(exc: BaseException, *, pulling: bool = False) -> Outcome:
    """What a failed Engine API call tells the breaker about the engine.

    1. The engine answered with 4xx (404 no such container, 409 conflict, 400 a bad
       template): it works, the call was wrong. A success.
    2. The engine answered with 5xx: it is sick. A failure -- except for a pull, whose
       5xx is the registry's failure reported by a working engine; one mistyped image
       must not stop scaling for every service.
    3. No answer (refused, reset, timed out, an unusable URL): a failure.
    4. Anything else is our own error, not the engine's: ignored.
    """
    status = answer_status(exc)
    if status is not None:
        if status < 500:
            return Outcome.SUCCESS
        return Outcome.IGNORED if pulling else Outcome.FAILURE
    if isinstance(exc, ENGINE_SILENT):
        return Outcome.FAILURE
    return Outcome.IGNORED


def breaker_refusal(exc: CircuitBreakerOpenError) -> EngineUnreachable:
    state = exc.state.value.replace("_", " ")
    until = f"{exc.retry_at:%Y-%m-%d %H:%M:%S} UTC" if exc.retry_at else "an operator resets it"
    return EngineUnreachable(f"Docker engine unavailable (breaker {state} until {until})")


class GuardedStats:
    """A container's one-shot stats call through the breaker (``scaling.metrics.docker_stats``)."""

    def __init__(self, backend: DockerBackend, container: Container) -> None:
        self.id: str = container.id or ""
        self._backend = backend
        self._container = container

    def stats(self, *, stream: bool) -> Any:
        return self._backend.call(self._container.stats, stream=stream)


class DockerBackend:
    """One engine connection for one evaluation; ``close()`` it when done."""

    def __init__(self, timeout: float | None = None, max_pool_size: int | None = None):
        self.timeout = timeout  # None: DOCKER_TIMEOUT
        # The stats thread pool makes that many requests at once; a smaller pool would
        # serialise them again.
        self.max_pool_size = max_pool_size or max(10, settings.SCALING_STATS_WORKERS)
        self._client: docker.DockerClient | None = None

    # --- Connection ----------------------------------------------------------------------
    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            # Building the client asks the engine for its API version: a call like any other.
            self._client = self.call(docker_client, timeout=self.timeout, max_pool_size=self.max_pool_size)
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
        return EngineUnreachable(f"Docker engine unreachable at {settings.DOCKER_URL}: {_describe(exc)}")

    def call(self, function: Callable[..., R], *args: Any, pulling: bool = False, **kwargs: Any) -> R:
        """Make one Engine API call through the shared breaker.

        1. Ask the breaker; a refusal is ``EngineUnreachable`` and nothing is sent.
        2. Call, and report the outcome (``engine_outcome``) exactly once.
        3. No answer from the engine raises ``EngineUnreachable``; an answer that is an
           error (``APIError``: 404, 409, 5xx ...) is raised as it is, for the caller
           to turn into a result.
        """
        try:
            permit = docker_engine().admit()
        except CircuitBreakerOpenError as exc:
            raise breaker_refusal(exc) from exc
        try:
            result = function(*args, **kwargs)
        except BaseException as exc:
            permit.record(engine_outcome(exc, pulling=pulling))
            if isinstance(exc, ENGINE_SILENT) and answer_status(exc) is None:
                raise self._unreachable(exc) from exc
            raise
        permit.finish()
        return result

    # --- Reading -------------------------------------------------------------------------
    def list_instances(self, service: str) -> list[Container]:
        """Running containers of ``service`` that we own, oldest first."""
        filters = {"label": [f"{OWNER_LABEL}={OWNER_VALUE}", f"{SERVICE_LABEL}={service}"], "status": "running"}
        try:
            found = self.call(self.client.containers.list, filters=filters)
        except APIError as exc:
            raise self._unreachable(exc) from exc
        owned = [c for c in found if is_owned(c, service)]
        return sorted(owned, key=lambda c: (c.attrs.get("Created") or "", c.id))

    def stats_sources(self, containers: Sequence[Container]) -> list[GuardedStats]:
        """The containers as the stats gatherer reads them: each stats call guarded."""
        return [GuardedStats(self, container) for container in containers]

    def count_by_service(self) -> dict[str, int]:
        """Running owned containers per service, in one call (the ``scale status`` command)."""
        filters = {"label": f"{OWNER_LABEL}={OWNER_VALUE}", "status": "running"}
        try:
            found = self.call(self.client.containers.list, filters=filters)
        except APIError as exc:
            raise self._unreachable(exc) from exc
        counts: dict[str, int] = {}
        for container in found:
            service = (container.labels or {}).get(SERVICE_LABEL)
            if service and (container.labels or {}).get(OWNER_LABEL) == OWNER_VALUE:
                counts[service] = counts.get(service, 0) + 1
        return counts

    # --- Acting --------------------------------------------------------------------------
    def start_instance(self, service: str, template: ContainerTemplate) -> StartResult:
        """Create and start one instance from ``template``, labelled as ours.

        The options are checked once more right before the engine sees them
        (``validate_run_options``): a policy saved around validation never starts a
        container that is root on the host.
        """
        name = f"fcp-{service}-{secrets.token_hex(4)}"
        options = run_options(service, name, template)
        try:
            validate_run_options(template.image, options)
        except ValidationError as exc:
            error = f"refused before starting: {' '.join(exc.messages)}"
            logger.warning("not starting an instance of %s: %s", service, error)
            return StartResult(False, name=name, error=error)
        try:
            container = self._create(template.image, options)
            self.call(container.start)
        except (DockerException, requests.RequestException, OSError) as exc:
            logger.warning("could not start an instance of %s: %s", service, _describe(exc))
            self._remove_quietly(name)
            return StartResult(False, name=name, error=_describe(exc))
        return StartResult(True, container_id=container.id or "", name=name)

    def _create(self, image: str, options: dict[str, Any]) -> Container:
        """``containers.run`` without its start: create, pulling the image once if missing."""
        try:
            return self.call(self.client.containers.create, image, **options)
        except ImageNotFound:
            self.call(self.client.images.pull, image, pulling=True)
            return self.call(self.client.containers.create, image, **options)

    def stop_instance(self, container: Container, service: str, timeout: int) -> StopResult:
        """Stop (SIGTERM, then SIGKILL after ``timeout`` s) and remove one owned instance."""
        name = container.name or container.id or "?"
        if not is_owned(container, service):
            # Defence in depth: the list is already filtered by the engine.
            return StopResult(False, container.id or "", name, "refused: not an owned instance of this service")
        try:
            # An explicit timeout: docker-py sends its own and overrides the container's
            # StopTimeout (docker-py #1815); it also extends the HTTP timeout by as much.
            self.call(container.stop, timeout=timeout)
            self.call(container.remove)
        except NotFound:
            return StopResult(True, container.id or "", name, "already gone")
        except (DockerException, requests.RequestException, OSError) as exc:
            return StopResult(False, container.id or "", name, _describe(exc))
        return StopResult(True, container.id or "", name)

    def _remove_quietly(self, name: str) -> None:
        """A failed start can leave a created container behind: remove it, or it piles up."""
        try:
            self.call(self.call(self.client.containers.get, name).remove, force=True)
        except Exception:  # best effort
            logger.debug("no leftover container %s to remove", name)


def run_options(service: str, name: str, template: ContainerTemplate) -> dict[str, Any]:
    """The keyword arguments of ``containers.create`` for one instance: all the backend ever sets."""
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
    return options
