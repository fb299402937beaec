"""The Django project: settings per environment, the Celery app, the queue topology, urls and wsgi."""

from settings.celery_app import app as celery_app

__all__ = ("celery_app",)
