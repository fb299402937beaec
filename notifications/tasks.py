"""Celery tasks of the notification domain: thin shells around services, published by name (task_names)."""

from celery import shared_task
from django.conf import settings

from jobs.clock import database_now
from jobs.publishing import publish
from jobs.task import JobTask
from notifications import (
    campaign_delivery,
    campaigns,
    delivery,
    receipts,
    recovery,
    retention,
    services,
    task_names,
    webhooks,
)


@shared_task(base=JobTask, name=task_names.DELIVER)
def notification_deliver_task(*notification_ids: str) -> None:
    """One or more notification ids (a burst of submits is published as one message)."""
    delivery.notification_deliver(notification_ids=list(notification_ids))


@shared_task(base=JobTask, name=task_names.RELAY)
def notification_relay_task() -> None:
    now = database_now()  # one reading of PostgreSQL's clock for both
    recovery.notification_relay(now=now)
    recovery.campaign_relay(now=now)


@shared_task(base=JobTask, name=task_names.CAMPAIGN_FANOUT)
def campaign_fanout_task(segment_id: int) -> None:
    campaigns.campaign_fanout_segment(segment_id=segment_id)


@shared_task(base=JobTask, name=task_names.CAMPAIGN_SWEEP)
def campaign_sweep_task(campaign_id: int) -> None:
    campaigns.campaign_cancel_sweep(campaign_id=campaign_id)


@shared_task(base=JobTask, name=task_names.RELEASE_SCHEDULED)
def release_scheduled_task() -> None:
    """Scheduled notifications and campaigns whose send_at has come."""
    services.notifications_release_due()
    campaigns.campaigns_start_due()


@shared_task(base=JobTask, name=task_names.PRUNE)
def prune_task() -> None:
    """A slice of pruning; the rest in a new task (one pruner at a time: a second finds the lock taken)."""
    results = retention.retention_prune(max_seconds=settings.RETENTION_TASK_SECONDS)
    if results is not None and not all(r.done for r in results):
        publish(task_names.PRUNE, args=[], queue=settings.CELERY_TASK_DEFAULT_QUEUE)


@shared_task(base=JobTask, name=task_names.CAMPAIGN_BATCH)
def campaign_batch_task(batch_id: int) -> None:
    campaign_delivery.campaign_batch_send(batch_id=batch_id)


@shared_task(base=JobTask, name=task_names.WEBHOOKS_DISPATCH)
def webhooks_dispatch_task() -> None:
    """Reports that arrived before their `sent` linked first, then new events to webhook deliveries."""
    receipts.receipts_link()
    webhooks.webhooks_dispatch_all()


#: The delivery job, declared in notifications/webhooks.py; named here so that the runtime finds it in `tasks`.
webhook_deliver = webhooks.webhook_deliver
