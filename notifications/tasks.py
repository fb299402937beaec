"""Celery tasks of the notification domain: thin shells around services."""

from jobs.clock import database_now
from jobs.tasks import JobTask
from notifications import campaign_delivery, campaigns, delivery
from settings.celery_app import app


@app.task(base=JobTask, name="notifications.deliver")
def notification_deliver_task(notification_id: str) -> None:
    delivery.notification_deliver(notification_id=notification_id)


@app.task(base=JobTask, name="notifications.relay")
def notification_relay_task() -> None:
    now = database_now()  # one reading of PostgreSQL's clock for both
    delivery.notification_relay(now=now)
    campaigns.campaign_relay(now=now)


@app.task(base=JobTask, name="notifications.campaign_fanout")
def campaign_fanout_task(segment_id: int) -> None:
    campaigns.campaign_fanout_segment(segment_id=segment_id)


@app.task(base=JobTask, name="notifications.campaign_batch")
def campaign_batch_task(batch_id: int) -> None:
    campaign_delivery.campaign_batch_send(batch_id=batch_id)
