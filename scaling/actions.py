"""Starting and stopping instances for a decision: the only code that changes containers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from docker.models.containers import Container

from scaling.decisions import Rule
from scaling.docker_backend import ContainerTemplate, DockerBackend, hostname_of
from scaling.drain import drain_all, worker_loads
from scaling.models import ScalingPolicy


@dataclass
class Outcome:
    """What acting did: the resulting count, whether everything asked for happened, and why not."""

    to_instances: int
    success: bool
    error: str = ""
    rule: str = ""  # set when a limit found only while acting (busy workers) cut the change short
    details: dict[str, Any] = field(default_factory=dict)


def template_for(policy: ScalingPolicy) -> ContainerTemplate:
    return ContainerTemplate(
        image=policy.image,
        command=tuple(policy.command or ()),
        environment=dict(policy.environment or {}),
        labels=dict(policy.labels or {}),
        network=policy.network,
        volumes=tuple(policy.volumes or ()),
        working_dir=policy.working_dir,
        stop_timeout=policy.stop_timeout,
    )


def scale_up(backend: DockerBackend, policy: ScalingPolicy, current: int, target: int) -> Outcome:
    """Start ``target - current`` instances; each start succeeds or fails on its own."""
    template = template_for(policy)
    started, failed = [], []
    for _ in range(target - current):
        result = backend.start_instance(policy.service, template)
        if result.ok:
            started.append(result.name)
        else:
            failed.append({"name": result.name, "error": result.error})
    outcome = Outcome(current + len(started), not failed, details={"started": started})
    if failed:
        outcome.details["failed"] = failed
        outcome.error = f"{len(failed)} of {target - current} instance(s) failed to start: {failed[0]['error']}"
    return outcome


def stop_timeout_for(policy: ScalingPolicy) -> int:
    """SIGTERM to SIGKILL: for Celery workers at least the task soft time limit."""
    if policy.celery_worker:
        return max(policy.stop_timeout, settings.SCALING_WORKER_SOFT_TIME_LIMIT)
    return policy.stop_timeout


def scale_down(
    backend: DockerBackend,
    policy: ScalingPolicy,
    containers: Sequence[Container],
    target: int,
    cpu_by_container: Mapping[str, float],
    celery_app: Any,
) -> Outcome:
    """Stop the least busy instances down to ``target``, never below min or the busy workers.

    1. The floor is the larger of ``target`` and ``min_instances``.
    2. For Celery workers, ask each one what it runs; busy workers raise the floor, so
       the change may stop short of ``target`` (recorded as ``limit:busy_workers``).
    3. Order by least busy: fewest tasks, then lowest CPU, then the newest instance.
    4. Drain the chosen workers (cancel_consumer, wait for their tasks), then stop all
       chosen instances in parallel with an explicit timeout.
    """
    floor = max(target, policy.min_instances)
    details: dict[str, Any] = {}
    rule = ""
    loads = worker_loads(celery_app, [hostname_of(c) for c in containers]) if policy.celery_worker else {}
    busy = sum(1 for load in loads.values() if load.busy)
    if busy > floor:
        details["busy_workers"] = busy
        floor, rule = min(busy, len(containers)), str(Rule.BUSY_WORKERS)

    def busyness(container: Container) -> tuple[int, float]:
        load = loads.get(hostname_of(container))
        tasks = (load.active + load.reserved) if load else 0
        return tasks, cpu_by_container.get(container.id or "", 0.0)

    # Newest first among equals (it has warmed the fewest caches): sort by age, then
    # stably by load.
    newest_first = sorted(containers, key=lambda c: str(c.attrs.get("Created") or ""), reverse=True)
    victims = sorted(newest_first, key=busyness)[: max(0, len(containers) - floor)]
    if policy.celery_worker:
        nodes = [n for c in victims if (n := loads[hostname_of(c)].node)]
        drains = drain_all(
            celery_app,
            nodes,
            policy.queues,
            timeout=settings.SCALING_WORKER_SOFT_TIME_LIMIT,
            poll=settings.SCALING_DRAIN_POLL_SECONDS,
        )
        details["drained"] = [result.as_dict() for result in drains.values()]
        unanswered = [c.name for c in victims if loads[hostname_of(c)].node is None]
        if unanswered:
            details["no_worker_reply"] = unanswered

    timeout = stop_timeout_for(policy)
    with ThreadPoolExecutor(max_workers=max(1, len(victims))) as pool:
        results = list(pool.map(lambda c: backend.stop_instance(c, policy.service, timeout), victims))
    stopped = [r.name for r in results if r.ok]
    failed = [{"name": r.name, "error": r.error} for r in results if not r.ok]
    details["stopped"] = stopped
    details["stop_timeout"] = timeout
    outcome = Outcome(len(containers) - len(stopped), not failed, rule=rule, details=details)
    if failed:
        outcome.details["failed"] = failed
        outcome.error = f"{len(failed)} instance(s) failed to stop: {failed[0]['error']}"
    return outcome
