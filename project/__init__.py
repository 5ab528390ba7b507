"""The Django project: settings, the Celery app, URLs and the master tick."""

from project.celery_app import app as celery_app

__all__ = ("celery_app",)
