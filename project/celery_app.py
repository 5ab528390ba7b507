"""The one Celery application. Every setting lives in ``project.settings`` under ``CELERY_*``."""

import os
from typing import Any

from celery import Celery
from kombu.utils.objects import cached_property

from project import soft_time_limit, worker_db

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


class ControlPlaneCelery(Celery):
    @cached_property
    def Worker(self) -> Any:
        """``celery worker`` exits within a bound after a failure (project/worker_exit.py)."""
        return self.subclass_with_self("project.worker_exit:Worker")  # type: ignore[arg-type]  # a path, as Celery passes


app = ControlPlaneCelery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Workers keep their database connection across tasks within CONN_MAX_AGE (project/worker_db.py).
worker_db.install(app)
# A late soft time limit can no longer corrupt a pool child's result pipe (project/soft_time_limit.py).
soft_time_limit.install()
