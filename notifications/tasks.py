"""Celery tasks of the notification domain: thin shells around services."""

from jobs.tasks import JobTask
from notifications import delivery
from settings.celery_app import app


@app.task(base=JobTask, name="notifications.deliver")
def notification_deliver_task(notification_id: str) -> None:
    delivery.notification_deliver(notification_id=notification_id)


@app.task(base=JobTask, name="notifications.relay")
def notification_relay_task() -> None:
    delivery.notification_relay()
