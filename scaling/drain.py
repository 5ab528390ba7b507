"""Draining Celery worker instances before they stop, so scale-down never kills a busy worker.

1. Ask every worker once what it is running (``inspect active`` and ``reserved``) and
   match the replies to containers by host name (a worker names itself
   ``celery@<hostname>`` and the backend sets each container's hostname).
2. Tell the chosen workers to stop consuming (``cancel_consumer``) so they take nothing new.
3. Poll them until their active and reserved tasks are done, up to the task soft time limit.
4. The caller then stops the containers with a timeout at least that limit.

Control calls are broadcasts with replies; they run one after another from the calling
thread (Celery's control client is not meant to be shared across threads), and every
chosen worker is drained at once, so the wait is the longest task, not the sum.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

INSPECT_TIMEOUT = 1.0


@dataclass(frozen=True)
class WorkerLoad:
    node: str | None  # the Celery node name, None when no worker answered for the host
    active: int = 0
    reserved: int = 0

    @property
    def busy(self) -> bool:
        return self.active + self.reserved > 0


@dataclass(frozen=True)
class DrainResult:
    node: str
    drained: bool
    waited_seconds: float
    tasks_left: int = 0
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "drained": self.drained,
            "waited_seconds": round(self.waited_seconds, 2),
            "tasks_left": self.tasks_left,
            "note": self.note,
        }


def _names_in(node: str) -> tuple[str, ...]:
    name, _, host = node.partition("@")
    return (name, host) if host else (name,)


def worker_loads(app: Any, hostnames: Sequence[str], timeout: float = INSPECT_TIMEOUT) -> dict[str, WorkerLoad]:
    """Active and reserved task counts per container hostname (step 1)."""
    inspector = app.control.inspect(timeout=timeout)
    active = inspector.active() or {}
    reserved = inspector.reserved() or {}
    loads = {hostname: WorkerLoad(None) for hostname in hostnames}
    for node in set(active) | set(reserved):
        for part in _names_in(node):
            if part in loads:
                loads[part] = WorkerLoad(node, len(active.get(node) or []), len(reserved.get(node) or []))
    return loads


def drain_all(
    app: Any,
    nodes: Sequence[str],
    queues: Sequence[str],
    timeout: float,
    poll: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, DrainResult]:
    """Stop ``nodes`` consuming ``queues`` and wait until their tasks are done (steps 2-3)."""
    if not nodes:
        return {}
    started = clock()
    for queue in queues:
        app.control.cancel_consumer(queue, destination=list(nodes), reply=True, timeout=INSPECT_TIMEOUT)
    results: dict[str, DrainResult] = {}
    pending = list(nodes)
    while pending:
        inspector = app.control.inspect(destination=pending, timeout=INSPECT_TIMEOUT)
        active, reserved = inspector.active() or {}, inspector.reserved() or {}
        waited = clock() - started
        for node in list(pending):
            if node not in active and node not in reserved:
                results[node] = DrainResult(node, False, waited, note="the worker stopped answering")
                pending.remove(node)
                continue
            left = len(active.get(node) or []) + len(reserved.get(node) or [])
            if left == 0:
                results[node] = DrainResult(node, True, waited)
                pending.remove(node)
            elif waited >= timeout:
                results[node] = DrainResult(node, False, waited, left, "drain timeout: stopping with tasks left")
                pending.remove(node)
        if pending:
            sleep(poll)
    return results
