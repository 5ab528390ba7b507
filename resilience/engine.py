"""Docker Engine calls of the container checks and healing: one engine, one shared breaker.

Every call goes to ``DOCKER_URL`` (``core.clients.docker_client``), the engine the
scaler manages, and passes the shared ``docker:engine`` breaker (``core.guards``). When
the engine keeps failing, every process on every host stops calling it, and a check
says "Docker engine unavailable (breaker open until …)" for one Redis round trip
instead of waiting out a connection timeout.

Only a failure of the engine counts against the breaker: no connection, a timeout,
a 5xx answer. A 404 for a container that is gone, or a refusal of our own, is the
engine answering: it counts as a success.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from core.breaker import CircuitBreakerOpenError
from core.breaker_core import State
from core.clients import docker_client
from core.guards import docker_engine


class EngineUnavailable(Exception):
    """The shared breaker rejected the call; nothing was sent to the engine."""

    def __init__(self, state: State, retry_at: datetime | None) -> None:
        self.state = state
        self.retry_at = retry_at
        super().__init__(f"Docker engine unavailable ({describe_breaker(state, retry_at)})")

    @property
    def forced(self) -> bool:
        """An operator opened the breaker: the engine itself may be fine."""
        return self.state is State.FORCED_OPEN


def describe_breaker(state: State, retry_at: datetime | None) -> str:
    if state is State.FORCED_OPEN:
        return "breaker forced open by an operator"
    if state is State.HALF_OPEN:
        return "breaker half-open, its trial calls are under way"
    until = f" until {retry_at:%Y-%m-%d %H:%M:%S} UTC" if retry_at else ""
    return f"breaker {state.value.replace('_', ' ')}{until}"


def is_engine_failure(exc: BaseException) -> bool:
    """True for what says the engine is down or sick; False for an answer we did not like."""
    import requests  # imported here, like docker itself: the web process never needs them at start-up
    from docker.errors import APIError, DockerException

    if isinstance(exc, APIError):
        return bool(exc.is_server_error())
    return isinstance(exc, DockerException | requests.RequestException | OSError)


@contextmanager
def engine_client(timeout: float | None = None) -> Iterator[Any]:
    """A client for ``DOCKER_URL`` whose calls, taken together, count once in the breaker.

    Raises ``EngineUnavailable`` at once when the breaker rejects the call.
    """
    try:
        permit = docker_engine().admit()
    except CircuitBreakerOpenError as exc:
        raise EngineUnavailable(exc.state, exc.retry_at) from exc
    client = None
    try:
        client = docker_client(timeout)  # asks the engine for its API version: a call already
        yield client
    except BaseException as exc:
        permit.finish(exc if is_engine_failure(exc) else None)
        raise
    else:
        permit.finish()
    finally:
        if client is not None:
            client.close()
