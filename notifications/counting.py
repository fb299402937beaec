"""Campaign rows' keys and counts, below delivery and the campaign lifecycle: both call this, it calls neither.

A campaign notification's primary key is derived from (campaign, recipient), so a batch is a key range;
a batch's counters are recounted from its rows in the transaction that changed them.
"""

import uuid

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from notifications.models import Campaign, CampaignBatch, CampaignStatus, Notification


def campaign_key_prefix(campaign_id: int) -> str:
    # 12 hex digits of campaign, then version 8 (RFC 9562: custom) and variant bits, so a
    # campaign key never equals a random uuid4 key (version 4).
    return f"{campaign_id:012x}8000"


def campaign_notification_id(campaign_id: int, recipient_id: int) -> uuid.UUID:
    """The primary key of the notification of `campaign_id` to `recipient_id`."""
    return uuid.UUID(f"{campaign_key_prefix(campaign_id)}8{recipient_id:015x}")


def batch_key_range(batch: CampaignBatch) -> tuple[uuid.UUID, uuid.UUID]:
    return (
        campaign_notification_id(batch.campaign_id, batch.first_recipient_id),
        campaign_notification_id(batch.campaign_id, batch.last_recipient_id),
    )


def campaign_notifications(campaign: Campaign):
    """All notifications of a campaign, found by key range (the campaign column has no index)."""
    return Notification.objects.filter(
        pk__gte=campaign_notification_id(campaign.pk, 0),
        pk__lte=uuid.UUID(f"{campaign_key_prefix(campaign.pk)}8{'f' * 15}"),
    )


def campaign_finish_if_done(*, campaign_id: int) -> bool:
    """Running -> completed once the fan-out is over and every notification is sent, dead or skipped."""
    now = timezone.now()
    return bool(
        Campaign.objects.filter(
            pk=campaign_id,
            status=CampaignStatus.RUNNING,
            fanout_completed_at__isnull=False,
            materialized_count__lte=F("sent_count") + F("dead_count") + F("skipped_count"),
        ).update(status=CampaignStatus.COMPLETED, finished_at=now, updated_at=now)
    )


_RECOUNT_SQL = """
SELECT count(*) FILTER (WHERE status = 'sent'), count(*) FILTER (WHERE status = 'dead'),
       count(*) FILTER (WHERE status = 'skipped')
FROM notifications_notification WHERE id BETWEEN %s AND %s
"""


def campaign_batch_recount(*, batch_id: int) -> None:
    """Recount a batch's rows by outcome and add the difference to its campaign's counters.

    Called in the transaction that changed the rows (a batch run's end, a single-send outcome of
    a campaign row), and completes the campaign in it when that was the last row: a worker that
    dies at any moment leaves either both undone (its batch or row is taken over and recounted
    again) or both done, never rows counted nowhere.  One update of the campaign row per call,
    not per message.
    """
    with transaction.atomic():
        batch = CampaignBatch.objects.select_for_update().filter(pk=batch_id).first()
        if batch is None:
            return
        with connection.cursor() as cursor:
            cursor.execute(_RECOUNT_SQL, batch_key_range(batch))
            sent, dead, skipped = cursor.fetchone()
        delta = (sent - batch.sent_count, dead - batch.dead_count, skipped - batch.skipped_count)
        if any(delta):
            CampaignBatch.objects.filter(pk=batch.pk).update(sent_count=sent, dead_count=dead, skipped_count=skipped)
            Campaign.objects.filter(pk=batch.campaign_id).update(
                sent_count=F("sent_count") + delta[0],
                dead_count=F("dead_count") + delta[1],
                skipped_count=F("skipped_count") + delta[2],
            )
        campaign_finish_if_done(campaign_id=batch.campaign_id)


def campaign_recount_for(notification: Notification) -> None:
    """Recount the batch a campaign notification belongs to (its recipient id lies in the batch's range)."""
    batch_id = (
        CampaignBatch.objects.filter(
            campaign_id=notification.campaign_id, first_recipient_id__lte=notification.recipient_id
        )
        .order_by("-first_recipient_id")
        .values_list("pk", flat=True)
        .first()
    )
    if batch_id is not None:
        campaign_batch_recount(batch_id=batch_id)
