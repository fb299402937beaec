"""Celery tasks of the notification domain: thin shells around services."""

from celery import shared_task

from jobs.tasks import JobTask
from notifications import services


@shared_task(base=JobTask, name="notifications.deliver")
def notification_deliver_task(notification_id: str) -> None:
    services.notification_deliver(notification_id=notification_id)
