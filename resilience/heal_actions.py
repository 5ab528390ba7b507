"""The built-in heal actions. Importing this module registers them (see ``apps.py``).

Each one is small and safe to repeat: the budget in ``resilience.healing`` decides
how often it may run, these only say what to do.
"""

from __future__ import annotations

from django.conf import settings
from django.db import connections

from core.heal import heal_action
from resilience.engine import engine_client


@heal_action("restart_container", "container:*")
def restart_container(component: str) -> str:
    """Restart a managed container that failed its check, through the engine at ``DOCKER_URL``.

    Raises ``EngineUnavailable`` without calling the engine while its breaker is open.
    """
    name = component.removeprefix("container:")
    with engine_client(settings.DOCKER_TIMEOUT + settings.HEAL_CONTAINER_STOP_TIMEOUT) as client:
        container = client.containers.get(name)
        if container.labels.get(settings.HEALTH_CONTAINER_LABEL) != "true":
            raise RuntimeError(f"container {name} is no longer managed (label removed); leaving it alone")
        container.restart(timeout=settings.HEAL_CONTAINER_STOP_TIMEOUT)
        container.reload()
        return f"restarted container {name}: now {container.status}"


@heal_action("reconnect_database", "database")
def reconnect_database(component: str) -> str:
    """Drop this process's database connections so the next query opens a fresh one.

    Other processes do the same on their own: ``CONN_HEALTH_CHECKS`` and Celery's
    Django fixup close unusable connections before each task.
    """
    connections.close_all()
    return "closed this process's database connections"


@heal_action("restart_worker_pools", "workers")
def restart_worker_pools(component: str) -> str:
    """Ask every worker to restart its pool processes (needs ``worker_pool_restarts``)."""
    from project.celery_app import app

    replies = app.control.pool_restart(reload=False, reply=True, timeout=settings.HEALTH_WORKER_PING_TIMEOUT)
    return f"pool restart sent; {len(replies or [])} worker(s) confirmed"
