"""Celery tasks of the notification domain: thin shells around services."""

from jobs.tasks import JobTask
from notifications import services
from settings.celery_app import app


@app.task(base=JobTask, name="notifications.deliver")
def notification_deliver_task(notification_id: str) -> None:
    services.notification_deliver(notification_id=notification_id)
