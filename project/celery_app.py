"""The one Celery application. Every setting lives in ``project.settings`` under ``CELERY_*``."""

import os

from celery import Celery

from project import worker_db

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Workers keep their database connection across tasks within CONN_MAX_AGE (project/worker_db.py).
worker_db.install(app)
