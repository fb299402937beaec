"""Single sends: claim a notification, check it is still wanted, send it through the one provider-call
path (sending.py).  The outbox relay and the dead-letter replay that put rows back to work are in recovery.py.

    claim ............ one conditional UPDATE on PostgreSQL's clock: attempts + 1, a lease, a claim
                       token; a row whose lease expired (its worker died mid-call) is marked
                       outcome-unknown, so the vendors that can tell are asked before it is sent again;
                       a second UPDATE takes the oldest others queued in the same queue, for the same call
    cancelled? ....... a campaign row its campaign's cancel took is skipped by the claim, never sent
    held? ............ marketing is checked again at every attempt: a withdrawn consent, a muted topic
                       (a campaign row's), a suppressed address or a cancelled campaign skip it; quiet
                       hours (the recipient's own, else the platform's) or a paused campaign make it
                       wait (no attempt counted); a suppressed address gets no transactional mail
                       either; security alerts are always tried
    content .......... the notification's template and context, or its campaign's for a campaign row
    send ............. sending.send: providers, breakers, limits, outcomes (see there)

A campaign row reaches this path when it is retried, relayed after its worker died, or replayed:
it is sent with its campaign's content, like the batch would have.
"""

import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from jobs.errors import PermanentError
from jobs.retry import retry_policy
from notifications.consent import marketing_hold, suppression_reasons
from notifications.counting import campaign_cancelled_rows_skip
from notifications.events import notifications_events
from notifications.models import Campaign, CampaignStatus, Notification, Priority, Recipient, cancelled_unsent_sql
from notifications.partitions import recent_ids
from notifications.rendering import render
from notifications.sending import (
    Delivery,
    build_message,
    claim_lease,
    group_size,
    record_dead,
    record_retry,
    record_skipped,
    record_wait,
    send,
    sent_by_lookup,
)

logger = logging.getLogger(__name__)

#: How long a marketing row of a paused campaign waits before it looks again.
PAUSED_RECHECK_SECONDS = 5.0


#: Rows a worker may take now, on PostgreSQL's clock (worker clocks may be off).
_CLAIMABLE = """(n.status IN ('pending', 'queued')
       OR (n.status = 'failed' AND n.next_attempt_at <= statement_timestamp())
       OR (n.status = 'sending' AND n.lease_expires_at < statement_timestamp()))"""
#: The attempts a row's priority allows (JOBS_RETRY_POLICIES), passed as parameters.
_MAX_ATTEMPTS = "CASE n.priority " + " ".join(f"WHEN '{p}' THEN %(max_{p})s" for p in Priority.values) + " END"
_COLUMNS = ", ".join(f'n."{field.column}"' for field in Notification._meta.concrete_fields)
#: A campaign row its campaign's cancel took: never claimed to be sent (models.cancelled_unsent_sql).
_CANCELLED = cancelled_unsent_sql("n")
# Bandit B608 (SQL built from strings): the columns are the model's own and the priorities its choices;
# every value is a parameter.
_CLAIM_SQL = f"""
WITH named AS (
    -- Never waits for a lock: a row another transaction holds is being claimed, sent, cancelled or republished
    -- by it (each path that locks a row finishes it or publishes it again), and waiting here could close a
    -- cycle with a worker recording its sends (a deadlock the bench found under load).
    SELECT n.id FROM notifications_notification n
    WHERE n.id = ANY(%(ids)s::uuid[]) AND {_CLAIMABLE} AND n.attempts < {_MAX_ATTEMPTS} AND NOT {_CANCELLED}
        -- A row that may have killed its worker is taken only by a message of its own (see notification_claim).
        AND (%(alone)s OR NOT (n.outcome_unknown OR n.status = 'sending'))
    FOR UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE notifications_notification n SET
        status = 'sending', attempts = n.attempts + 1,
        lease_expires_at = statement_timestamp() + make_interval(secs => %(lease)s), claim_token = %(token)s,
        -- Its worker died mid-call (lease expired while sending): the vendor may have it.
        outcome_unknown = n.outcome_unknown OR n.status = 'sending',
        updated_at = statement_timestamp()
    -- The ids again, as constants: PostgreSQL plans the UPDATE on their leaves alone (notifications/partitions.py).
    FROM named WHERE n.id = named.id AND n.id = ANY(%(ids)s::uuid[])
    RETURNING {_COLUMNS}, false AS exhausted, false AS cancelled
)
SELECT * FROM claimed
UNION ALL
-- In the same round trip: rows due that have used every attempt (its snapshot predates the claim above,
-- which only takes a row with attempts left), and rows of a cancelled campaign, which are skipped instead.
SELECT {_COLUMNS}, NOT {_CANCELLED} AS exhausted, {_CANCELLED} AS cancelled FROM notifications_notification n
WHERE n.id = ANY(%(ids)s::uuid[]) AND {_CLAIMABLE} AND (n.attempts >= {_MAX_ATTEMPTS} OR {_CANCELLED})
"""  # nosec B608
#: Other single notifications of the same queue, waiting as queued, oldest first: the ones the same call takes.
_CLAIM_MORE_SQL = f"""
UPDATE notifications_notification n SET
    status = 'sending', attempts = n.attempts + 1,
    lease_expires_at = statement_timestamp() + make_interval(secs => %(lease)s), claim_token = %(token)s,
    updated_at = statement_timestamp()
FROM (
    SELECT id FROM notifications_notification
    WHERE priority = %(priority)s AND status = 'queued' AND channel = %(channel)s AND campaign_id IS NULL
        AND attempts < %(max_attempts)s AND NOT outcome_unknown
        -- This week's leaf only (notifications/partitions.py): an older row waiting is taken by its own message.
        AND id >= %(recent_low)s AND id < %(recent_high)s
    ORDER BY updated_at LIMIT %(more)s FOR UPDATE SKIP LOCKED
) waiting
WHERE n.id = waiting.id AND n.status = 'queued' AND n.id >= %(recent_low)s AND n.id < %(recent_high)s
RETURNING {_COLUMNS}
"""  # nosec B608


def notification_claim(*, notification_ids: list[str], batch: bool = False) -> list[Notification]:
    """Take the notifications with one conditional UPDATE and, with `batch`, others waiting in the same queue
    (up to NOTIFICATIONS_SINGLE_BATCH in all, at most a provider call's worth: group_size); the rows taken,
    none of those that are done, owned, not due, or exhausted.

    Lease and due times are compared on PostgreSQL's clock, and the claim token makes this worker the
    only one that can record the attempt's outcome.  An exhausted row (every attempt used, typically
    by a message that kept killing its worker) is dead-lettered here, so it cannot loop.

    The others are single notifications (not campaign rows, which carry their campaign's content) of the
    same priority and channel, queued, oldest first, skipping rows another worker is taking: they go
    in the same provider call.  Their own messages, when they arrive, find them taken and cost one
    UPDATE of no row.

    A row that may have killed its worker (its lease ran out while sending, or its outcome is unknown)
    is only ever taken alone: by a message that names only it (the relay publishes such rows one per
    message), with nothing taken along.  So a poison message dies alone after its attempts, instead of
    taking the rows of its batch with it each time.
    """
    for notification_id in notification_ids:
        try:
            uuid.UUID(str(notification_id))
        except ValueError:
            raise ValidationError(f"{notification_id!r} is not a notification id") from None
    params = {f"max_{p}": retry_policy(p).max_attempts for p in Priority.values}
    params.update(
        ids=[str(i) for i in notification_ids],
        alone=len(notification_ids) == 1,
        lease=claim_lease().total_seconds(),
        token=uuid.uuid4(),
    )
    found = list(Notification.objects.raw(_CLAIM_SQL, params))
    claimed = [row for row in found if not row.exhausted and not row.cancelled]
    cancelled: dict[int, list] = {}
    for row in found:
        if row.cancelled:
            cancelled.setdefault(row.campaign_id, []).append(row.pk)
    for campaign_id, ids in cancelled.items():
        campaign_cancelled_rows_skip(campaign_id=campaign_id, ids=ids)
    for exhausted in (row for row in found if row.exhausted):
        record_dead(
            exhausted,
            f"gave up after {exhausted.attempts} attempts; the last did not finish (its worker died or timed out)",
            provider=exhausted.provider,
            claimed=False,
        )
    queues = {(row.priority, row.channel) for row in claimed}
    if batch and len(queues) == 1 and all(row.campaign_id is None and not row.outcome_unknown for row in claimed):
        ((priority, channel),) = queues
        more = min(settings.NOTIFICATIONS_SINGLE_BATCH, group_size(priority=priority, channel=channel)) - len(claimed)
        if more > 0:
            low, high = recent_ids()
            params.update(
                priority=priority,
                channel=channel,
                max_attempts=retry_policy(priority).max_attempts,
                more=more,
                recent_low=low,
                recent_high=high,
            )
            claimed += Notification.objects.raw(_CLAIM_MORE_SQL, params)
    return claimed


def notification_deliver(*, notification_ids: list[str]) -> None:
    """One delivery attempt of the notifications, and of the queued ones a worker takes with them (see
    notification_claim): one provider call for each priority, channel and campaign among them."""
    rows = notification_claim(notification_ids=notification_ids, batch=True)
    if not rows:
        logger.info("notifications %s: not claimable (done, owned by another worker, or not due)", notification_ids)
        return
    notifications_events((row, "sending", "", "", {}) for row in rows)
    groups: dict[tuple, list[Notification]] = {}
    for row in rows:
        groups.setdefault((row.priority, row.channel, row.campaign_id), []).append(row)
    for group in groups.values():
        _deliver_group(group)


def _deliver_group(rows: list[Notification]) -> None:
    """Claimed rows of one priority, channel and campaign (or none): held ones skipped or postponed, the
    rest sent in one call."""
    first = rows[0]
    campaign = (
        Campaign.objects.only("template", "context", "status", "audience_tag").get(pk=first.campaign_id)
        if first.campaign_id
        else None
    )
    deliveries = []
    for row in _not_held(rows, campaign):
        template, context = (campaign.template, campaign.context) if campaign else (row.template, row.context)
        try:
            content = render(template=template, channel=row.channel, context=context)
        except ValidationError as exc:
            record_dead(row, PermanentError(f"cannot render: {'; '.join(exc.messages)}"))
            continue
        deliveries.append(Delivery(row, build_message(row, content)))
    if not deliveries:
        return
    unsent = send(deliveries, priority=first.priority, channel=first.channel)
    for delivery in unsent.deliveries if unsent is not None else ():
        # Nobody could be called (breakers open, every provider busy): no attempt used; the
        # time budget still bounds the wait.
        reason = "; ".join(delivery.errors) or unsent.reason
        record_retry(delivery.row, reason, provider=delivery.row.provider, retry_after=unsent.wait, called=False)


def _accepted_before(row: Notification, campaign: Campaign) -> bool:
    """A vendor that can tell has this campaign row from an earlier call (recorded as sent); nothing is sent."""
    try:
        content = render(template=campaign.template, channel=row.channel, context=campaign.context)
    except ValidationError:
        return False
    return sent_by_lookup(row, content)


def _not_held(rows: list[Notification], campaign: Campaign | None) -> list[Notification]:
    """The claimed rows to send now; the others are skipped or postponed (see _held).  The suppression list
    is read once for all of them, and the recipients of marketing rows in one query."""
    if rows[0].priority == Priority.SECURITY:
        return rows
    suppressed = suppression_reasons(rows[0].channel, [row.to for row in rows])
    if rows[0].priority == Priority.MARKETING:
        recipients = Recipient.objects.in_bulk([row.recipient_id for row in rows])
        for row in rows:
            row.recipient = recipients[row.recipient_id]
    return [row for row in rows if not _held(row, campaign, suppressed.get(row.to))]


def _held(notification: Notification, campaign: Campaign | None, reason: str | None) -> bool:
    """Skip or postpone a claimed notification the recipient no longer wants now (`reason`: why its address
    is suppressed, if it is); True if it was."""
    if notification.priority == Priority.SECURITY:
        return False
    now = timezone.now()
    if reason is not None:
        record_skipped(notification, f"not sent: address suppressed ({reason})")
        return True
    if notification.priority != Priority.MARKETING:
        return False
    if campaign is not None:
        if campaign.status == CampaignStatus.PAUSED:
            record_wait(notification, now + timedelta(seconds=PAUSED_RECHECK_SECONDS), "campaign paused")
            return True
        if campaign.status == CampaignStatus.CANCELLED:
            # Never sent again; but an earlier call may have reached the vendor (its worker died, a timeout): the
            # vendors that can tell are asked, and it counts as sent if one has it.
            if not (notification.outcome_unknown and _accepted_before(notification, campaign)):
                record_skipped(notification, "not sent: campaign cancelled")
            return True
    topic = campaign.audience_tag if campaign is not None else ""
    hold = marketing_hold(notification.recipient, channel=notification.channel, topic=topic, now=now)
    if hold is None:
        return False
    if hold.until is None:
        record_skipped(notification, hold.reason)
    else:
        record_wait(notification, hold.until, hold.reason)
    return True
