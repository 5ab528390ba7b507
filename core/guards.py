"""The circuit breakers that guard real outbound calls, and what each one guards.

One breaker per dependency a whole fleet shares: every Git remote host, the Docker
engine, (later) every Kubernetes API server. Their state lives in Redis
(``core.breaker``), so when one worker process finds a remote dead, every process on
every host stops calling it and the next sync of a fabric on that remote is skipped
with "remote unavailable (breaker open until …)" at the cost of one Redis round trip.

``GUARDED`` is what the admin shows beside each breaker: which calls it guards.
Breaker objects are handles (a name, a config, a Redis channel); they are cached
per process only to avoid rebuilding them per call, and hold no state of their own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from core.breaker import CircuitBreaker, default_config
from core.breaker_core import BreakerConfig


@dataclass(frozen=True)
class Guard:
    prefix: str  # breaker names start with it
    guards: str  # what an operator reads in the admin


GUARDED: list[Guard] = [
    Guard("git:", "git ls-remote / fetch of every fabric whose repository is on this host"),
    Guard("docker:", "every Docker Engine API call of the scaler, the container checks and healing"),
    Guard("k8s:", "every call to this Kubernetes API server"),
    Guard("rpc:", "resilient HTTP calls to this host"),
]

_handles: dict[str, CircuitBreaker] = {}
_lock = threading.Lock()


def guard_description(breaker_name: str) -> str:
    return next((g.guards for g in GUARDED if breaker_name.startswith(g.prefix)), "")


def breaker(name: str, config: Callable[[], BreakerConfig] = default_config) -> CircuitBreaker:
    """The shared breaker ``name`` (one handle per process)."""
    with _lock:
        handle = _handles.get(name)
        if handle is None:
            handle = _handles[name] = CircuitBreaker(name, config())
        return handle


def git_remote(host: str, config: Callable[[], BreakerConfig] = default_config) -> CircuitBreaker:
    """The breaker for a Git remote host ("local" for file:// and local paths)."""
    return breaker(f"git:{host}", config)


def docker_engine(config: Callable[[], BreakerConfig] = default_config) -> CircuitBreaker:
    return breaker("docker:engine", config)


def forget_handles() -> None:
    """Drop this process's handles (tests that change settings between cases)."""
    with _lock:
        _handles.clear()
