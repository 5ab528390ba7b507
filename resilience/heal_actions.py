"""The built-in heal actions. Importing this module registers them (see ``apps.py``).

Each one is small and safe to repeat: the budget in ``resilience.healing`` decides
how often it may run, these only say what to do.
"""

from __future__ import annotations

from django.conf import settings
from django.db import connections
from django.utils import timezone

from resilience.healing import heal_action
from resilience.models import ComponentHealth


@heal_action("restart_container", "container:*")
def restart_container(component: ComponentHealth) -> str:
    """Restart a managed container that failed its check, through the Docker engine."""
    import docker

    name = component.name.removeprefix("container:")
    client = docker.from_env(timeout=settings.HEALTH_DOCKER_TIMEOUT + settings.HEAL_CONTAINER_STOP_TIMEOUT)
    try:
        container = client.containers.get(name)
        if container.labels.get(settings.HEALTH_CONTAINER_LABEL) != "true":
            raise RuntimeError(f"container {name} is no longer managed (label removed); leaving it alone")
        container.restart(timeout=settings.HEAL_CONTAINER_STOP_TIMEOUT)
        container.reload()
        return f"restarted container {name}: now {container.status}"
    finally:
        client.close()


@heal_action("reconnect_database", "database")
def reconnect_database(component: ComponentHealth) -> str:
    """Drop this process's database connections so the next query opens a fresh one.

    Other processes do the same on their own: ``CONN_HEALTH_CHECKS`` and Celery's
    Django fixup close unusable connections before each task.
    """
    connections.close_all()
    return "closed this process's database connections"


@heal_action("release_expired_leases", "sync_leases")
def release_expired_leases(component: ComponentHealth) -> str:
    from sync.leases import reap_expired

    reaped = reap_expired(timezone.now())
    return f"released {reaped['leases_reaped']} expired lease(s), {reaped['runs_lost']} run(s) marked lost"


@heal_action("restart_worker_pools", "workers")
def restart_worker_pools(component: ComponentHealth) -> str:
    """Ask every worker to restart its pool processes (needs ``worker_pool_restarts``)."""
    from project.celery_app import app

    replies = app.control.pool_restart(reload=False, reply=True, timeout=settings.HEALTH_WORKER_PING_TIMEOUT)
    return f"pool restart sent; {len(replies or [])} worker(s) confirmed"
