"""The master scheduler: the one task Celery Beat fires, every 60 seconds."""

from celery import shared_task

from core.tick import TickSummary, run_tick

MASTER_TASK_NAME = "project.master_scheduler"


@shared_task(name=MASTER_TASK_NAME, ignore_result=False, soft_time_limit=50, time_limit=55)
def master_scheduler() -> TickSummary:
    return run_tick()
