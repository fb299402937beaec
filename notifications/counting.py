"""Campaign rows' keys and counts, below delivery and the campaign lifecycle: both call this, it calls neither.

A campaign notification's primary key is derived from (campaign, recipient), so a batch is a key range;
a batch's counters are recounted from its rows in the transaction that changed them, a cancelled campaign's unsent
rows counted as skipped (models.cancelled_unsent_sql).  A cancel closes the open batches by their counters alone
(campaign_cancel_close), which is what a recount would find, without reading a row.
"""

import uuid

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from notifications.models import (
    OPEN_BATCH_STATUSES,
    Campaign,
    CampaignBatch,
    CampaignStatus,
    Notification,
    Priority,
    cancelled_unsent_sql,
    status_events_off,
)


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


#: Each batch's rows by outcome (its key range), its counters set to them, and the differences returned; the
#: caller holds the batches' locks.
_RECOUNT_SQL = """
WITH counted AS (
    SELECT r.batch_id, x.sent, x.dead, x.skipped
    FROM unnest(%(ids)s::bigint[], %(low)s::uuid[], %(high)s::uuid[]) AS r(batch_id, low, high)
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE n.status = 'sent') AS sent, count(*) FILTER (WHERE n.status = 'dead') AS dead,
               count(*) FILTER (WHERE n.status IN ('skipped', 'cancelled') OR {cancelled_unsent}) AS skipped
        FROM notifications_notification n WHERE n.id BETWEEN r.low AND r.high
            -- Every range at once, as constants: planned on the campaigns' leaves alone (notifications/partitions.py).
            AND n.id BETWEEN %(lowest)s AND %(highest)s
    ) x
),
before AS (
    SELECT b.id, b.campaign_id, b.sent_count, b.dead_count, b.skipped_count
    FROM notifications_campaignbatch b JOIN counted c ON c.batch_id = b.id
),
changed AS (
    UPDATE notifications_campaignbatch b SET sent_count = c.sent, dead_count = c.dead, skipped_count = c.skipped
    FROM counted c
    WHERE b.id = c.batch_id AND (b.sent_count, b.dead_count, b.skipped_count) IS DISTINCT FROM (c.sent, c.dead, c.skipped)
    RETURNING b.id
)
SELECT bf.campaign_id, sum(c.sent - bf.sent_count), sum(c.dead - bf.dead_count), sum(c.skipped - bf.skipped_count)
FROM before bf JOIN counted c ON c.batch_id = bf.id
WHERE bf.id IN (SELECT id FROM changed)
GROUP BY bf.campaign_id
""".format(cancelled_unsent=cancelled_unsent_sql("n"))  # nosec B608 - the rule's own SQL, constants of models.py


def campaign_batches_recount(batches: list[CampaignBatch]) -> None:
    """Recount the batches' rows by outcome and add the differences to their campaigns' counters, in one
    statement per call however many batches; the caller holds the batches' locks (SELECT ... FOR UPDATE)."""
    if not batches:
        return
    ranges = [batch_key_range(batch) for batch in batches]
    with connection.cursor() as cursor:
        cursor.execute(
            _RECOUNT_SQL,
            {
                "ids": [batch.pk for batch in batches],
                "low": [low for low, _ in ranges],
                "high": [high for _, high in ranges],
                "lowest": min(low for low, _ in ranges),
                "highest": max(high for _, high in ranges),
            },
        )
        deltas = cursor.fetchall()
    for campaign_id, sent, dead, skipped in deltas:
        Campaign.objects.filter(pk=campaign_id).update(
            sent_count=F("sent_count") + sent,
            dead_count=F("dead_count") + dead,
            skipped_count=F("skipped_count") + skipped,
        )
    for campaign_id in {batch.campaign_id for batch in batches}:
        campaign_finish_if_done(campaign_id=campaign_id)


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
        if batch is not None:
            campaign_batches_recount([batch])


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


#: A cancelled campaign's open batches (`ids`: only those) closed: each one's unsent rows, by its counters (what a
#: recount under the rule would find), counted as skipped, in it and in the campaign, in one statement; the batch
#: waits as cancelled for the sweep to rewrite its rows.  The campaign row is locked last, as every path that counts
#: locks it (batch first, then campaign).
_CLOSE_SQL = """
WITH open AS (
    SELECT b.id, GREATEST(0, b.size - b.sent_count - b.dead_count - b.skipped_count) AS unsent
    FROM notifications_campaignbatch b
    WHERE b.campaign_id = %(campaign)s AND b.status = ANY(%(open)s) AND (%(ids)s::bigint[] IS NULL OR b.id = ANY(%(ids)s))
    ORDER BY b.id
    FOR UPDATE
),
closed AS (
    UPDATE notifications_campaignbatch b SET
        status = 'cancelled', skipped_count = b.skipped_count + o.unsent, next_attempt_at = NULL,
        lease_expires_at = NULL, reason = '', updated_at = statement_timestamp()
    FROM open o WHERE b.id = o.id
    RETURNING o.unsent
),
total AS (SELECT count(*) AS batches, coalesce(sum(unsent), 0) AS unsent FROM closed)
UPDATE notifications_campaign c SET skipped_count = c.skipped_count + total.unsent, updated_at = statement_timestamp()
FROM total WHERE c.id = %(campaign)s
RETURNING total.batches, total.unsent
"""

#: The rows of a cancelled campaign on the single-send path (waiting for a retry, or queued) found through the
#: partial indexes that hold only unfinished rows (never the campaign's millions), written skipped (`ids`: only
#: those).  Their batches were closed already, or are done; they are recounted after.
_STRAYS_SQL = """
WITH strays AS (
    SELECT id FROM notifications_notification
    WHERE priority = %(priority)s AND status IN ('pending', 'queued') AND id BETWEEN %(low)s AND %(high)s
    UNION ALL
    SELECT id FROM notifications_notification
    WHERE priority = %(priority)s AND status = 'failed' AND id BETWEEN %(low)s AND %(high)s
)
UPDATE notifications_notification n SET
    status = 'skipped', last_error = %(reason)s, next_attempt_at = NULL, updated_at = statement_timestamp()
FROM strays
WHERE n.id = strays.id AND (%(ids)s::uuid[] IS NULL OR n.id = ANY(%(ids)s)) AND {cancelled_unsent}
RETURNING n.recipient_id
""".format(cancelled_unsent=cancelled_unsent_sql("n"))  # nosec B608 - the rule's own SQL, constants of models.py

#: Why a cancelled campaign's row was not sent (its last_error).
CANCELLED_REASON = "not sent: campaign cancelled"


def campaign_cancel_close(*, campaign_id: int, batch_ids: list[int] | None = None) -> tuple[int, int]:
    """Close a cancelled campaign's open batches (queued, deferred, paused; `batch_ids`: only those) and count
    their unsent rows as skipped, in the caller's transaction; (batches, rows).  A batch a worker holds is left to
    it: it finds the campaign cancelled before its next call and ends through its normal path."""
    with connection.cursor() as cursor:
        cursor.execute(_CLOSE_SQL, {"campaign": campaign_id, "open": list(OPEN_BATCH_STATUSES), "ids": batch_ids})
        row = cursor.fetchone()
    return (row[0], row[1]) if row else (0, 0)


def campaign_cancelled_rows_skip(*, campaign_id: int, ids: list | None = None) -> int:
    """Write skipped into the cancelled campaign's rows on the single-send path (`ids`: only those; never a row a
    worker holds), with no per-row event, and recount their batches, in one transaction; how many rows."""
    low = campaign_notification_id(campaign_id, 0)
    high = uuid.UUID(f"{campaign_key_prefix(campaign_id)}8{'f' * 15}")
    with transaction.atomic():
        with connection.cursor() as cursor, status_events_off(cursor):
            cursor.execute(
                _STRAYS_SQL,
                {
                    "low": low,
                    "high": high,
                    "priority": Priority.MARKETING,
                    "reason": CANCELLED_REASON,
                    "ids": [str(i) for i in ids] if ids else None,
                },
            )
            recipients = sorted({recipient_id for (recipient_id,) in cursor.fetchall()})
        if recipients:
            batches = list(
                CampaignBatch.objects.select_for_update()
                .filter(campaign_id=campaign_id, pk__in=_batches_of(campaign_id, recipients))
                .order_by("pk")
            )
            campaign_batches_recount(batches)
    return len(recipients)


def _batches_of(campaign_id: int, recipient_ids: list[int]) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT DISTINCT b.id FROM unnest(%s::bigint[]) AS r(id)
            CROSS JOIN LATERAL (
                SELECT id FROM notifications_campaignbatch
                WHERE campaign_id = %s AND first_recipient_id <= r.id ORDER BY first_recipient_id DESC LIMIT 1
            ) b
            """,
            [recipient_ids, campaign_id],
        )
        return [batch_id for (batch_id,) in cursor.fetchall()]
