"""The Celery application: configured from Django settings (CELERY_*), tasks found in installed apps."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.local")

app = Celery("notify")
# Celery's "current app" is thread-local; without a process-wide default, a publish
# from another thread (gunicorn's gthread workers, a test's live server) would use a
# fallback app with default settings and send to amqp://localhost.
app.set_default()
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
