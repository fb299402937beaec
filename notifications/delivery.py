"""Single sends: claim a notification, check it is still wanted, send it through the one provider-call
path (sending.py).  The outbox relay and the dead-letter replay that put rows back to work are in recovery.py.

    claim ............ one conditional UPDATE on PostgreSQL's clock: attempts + 1, a lease, a claim
                       token; a row whose lease expired (its worker died mid-call) is marked
                       outcome-unknown, so the vendors that can tell are asked before it is sent again
    held? ............ marketing is checked again at every attempt: a withdrawn consent, a suppressed
                       address or a cancelled campaign skip it; quiet hours or a paused campaign make
                       it wait (no attempt counted); a suppressed address gets no transactional mail
                       either; security alerts are always tried
    content .......... the notification's template and context, or its campaign's for a campaign row
    send ............. sending.send: providers, breakers, limits, outcomes (see there)

A campaign row reaches this path when it is retried, relayed after its worker died, or replayed:
it is sent with its campaign's content, like the batch would have.
"""

import logging
import uuid
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.utils import timezone

from jobs.errors import PermanentError
from jobs.retry import retry_policy
from notifications.consent import marketing_consent, quiet_until, suppression_reason
from notifications.events import notification_event
from notifications.models import Campaign, CampaignStatus, Notification, Priority
from notifications.rendering import render
from notifications.sending import (
    Delivery,
    build_message,
    claim_lease,
    record_dead,
    record_retry,
    record_skipped,
    record_wait,
    send,
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
# Bandit B608 (SQL built from strings): the columns are the model's own and the priorities its choices;
# every value is a parameter.
_CLAIM_SQL = f"""
UPDATE notifications_notification n SET
    status = 'sending', attempts = n.attempts + 1,
    lease_expires_at = statement_timestamp() + make_interval(secs => %(lease)s), claim_token = %(token)s,
    -- Its worker died mid-call (lease expired while sending): the vendor may have it.
    outcome_unknown = n.outcome_unknown OR n.status = 'sending',
    updated_at = statement_timestamp()
WHERE n.id = %(id)s AND {_CLAIMABLE} AND n.attempts < {_MAX_ATTEMPTS}
RETURNING {_COLUMNS}
"""  # nosec B608
_EXHAUSTED_SQL = f"""
SELECT {_COLUMNS} FROM notifications_notification n
WHERE n.id = %(id)s AND {_CLAIMABLE} AND n.attempts >= {_MAX_ATTEMPTS}
"""  # nosec B608


def notification_claim(*, notification_id: str) -> Notification | None:
    """Take the notification with one conditional UPDATE; None if it is done, owned, not due, or exhausted.

    Lease and due times are compared on PostgreSQL's clock, and the claim token makes this worker the
    only one that can record the attempt's outcome.  An exhausted row (every attempt used, typically
    by a message that kept killing its worker) is dead-lettered here, so it cannot loop.
    """
    try:
        uuid.UUID(str(notification_id))
    except ValueError:
        raise ValidationError(f"{notification_id!r} is not a notification id") from None
    params = {f"max_{p}": retry_policy(p).max_attempts for p in Priority.values}
    params.update(id=notification_id, lease=claim_lease().total_seconds(), token=uuid.uuid4())
    claimed = list(Notification.objects.raw(_CLAIM_SQL, params))
    if claimed:
        return claimed[0]
    for exhausted in Notification.objects.raw(_EXHAUSTED_SQL, params):
        record_dead(
            exhausted,
            f"gave up after {exhausted.attempts} attempts; the last did not finish (its worker died or timed out)",
            provider=exhausted.provider,
            claimed=False,
        )
    return None


def notification_deliver(*, notification_id: str) -> None:
    """One delivery attempt of one notification."""
    notification = notification_claim(notification_id=notification_id)
    if notification is None:
        logger.info("notification %s: not claimable (done, owned by another worker, or not due)", notification_id)
        return
    notification_event(notification, "sending")
    campaign = (
        Campaign.objects.only("template", "context", "status").get(pk=notification.campaign_id)
        if notification.campaign_id
        else None
    )
    if _held(notification, campaign):
        return
    template, context = (
        (campaign.template, campaign.context) if campaign else (notification.template, notification.context)
    )
    try:
        content = render(template=template, channel=notification.channel, context=context)
    except ValidationError as exc:
        record_dead(notification, PermanentError(f"cannot render: {'; '.join(exc.messages)}"))
        return
    unsent = send(
        [Delivery(notification, build_message(notification, content))],
        priority=notification.priority,
        channel=notification.channel,
    )
    if unsent is not None:
        # Nobody could be called (breakers open, every provider busy): no attempt used; the
        # time budget still bounds the wait.
        record_retry(notification, unsent.reason, provider=notification.provider, retry_after=unsent.wait, called=False)


def _held(notification: Notification, campaign: Campaign | None) -> bool:
    """Skip or postpone a claimed notification the recipient no longer wants now; True if it was."""
    if notification.priority == Priority.SECURITY:
        return False
    now = timezone.now()
    reason = suppression_reason(notification.channel, notification.to)
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
            record_skipped(notification, "not sent: campaign cancelled")
            return True
    if not marketing_consent(notification.recipient, notification.channel):
        record_skipped(notification, f"not sent: the recipient withdrew marketing consent for {notification.channel}")
        return True
    until = quiet_until(notification.recipient.timezone, now)
    if until is not None:
        record_wait(notification, until, f"quiet hours in {notification.recipient.timezone}")
        return True
    return False
