"""Send one campaign batch: a sub-batch at a time, claim rows (consent, suppression and the campaign's
status checked in the claim itself), take tokens for the whole sub-batch from the global limiter, send
through the provider's batch endpoint, record every outcome.

| situation                                   | what happens to the batch                          |
|---------------------------------------------|----------------------------------------------------|
| campaign paused                             | unsent rows stay scheduled; batch paused (resume   |
|                                             | queues it again)                                    |
| campaign cancelled                          | unsent rows skipped; batch done                     |
| recipient in quiet hours                    | row stays scheduled; batch deferred to quiet end   |
| no token within INLINE_TOKEN_WAIT_SECONDS   | batch deferred by the wait (slot freed)             |
| every provider's breaker open               | batch deferred by the breaker's cool-down          |
| task ran for its time budget                | batch queued again (a fresh task continues)        |
| a message fails transiently / permanently   | that row alone: retry on the single-send path /    |
|                                             | dead letter (and suppression if the address is bad)|
"""

import logging
import time
import uuid
from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from jobs.breaker import OPEN, breaker_config
from jobs.errors import ConfigurationError, JobError, PermanentError, TransientError
from jobs.ratelimit import RateLimiter, rate_limiter_for
from notifications import delivery
from notifications.campaigns import (
    batch_key_range,
    campaign_batch_recount,
    campaign_batches_publish,
    campaign_finish_if_done,
    campaign_pause_with_error,
)
from notifications.consent import address_suppress, quiet_until
from notifications.events import notifications_events
from notifications.models import (
    MARKETING_CONSENT_FIELDS,
    BatchStatus,
    Campaign,
    CampaignBatch,
    CampaignStatus,
    Channel,
    Notification,
    NotificationStatus,
)
from notifications.providers.base import BaseProvider, OutboundMessage, SendResult
from notifications.providers.registry import providers_for
from notifications.rendering import RenderedMessage, render
from notifications.unsubscribe import unsubscribe_headers

logger = logging.getLogger(__name__)

#: Longest a worker sleeps for tokens; a longer wait defers the batch and frees the slot.
INLINE_TOKEN_WAIT_SECONDS = 1.0


def _time_budget() -> float:
    """Seconds a batch task works before handing its batch to a fresh task: far inside the soft time limit."""
    return settings.CELERY_TASK_SOFT_TIME_LIMIT / 2


def _claim_batch(batch_id: int) -> CampaignBatch | None:
    now = timezone.now()
    claimable = (
        Q(status=BatchStatus.QUEUED)
        | Q(status=BatchStatus.DEFERRED, next_attempt_at__lte=now)
        | Q(status=BatchStatus.SENDING, lease_expires_at__lt=now)
    )
    claimed = CampaignBatch.objects.filter(claimable, pk=batch_id).update(
        status=BatchStatus.SENDING,
        runs=F("runs") + 1,
        lease_expires_at=now + delivery.claim_lease(),
        next_attempt_at=None,
        updated_at=now,
    )
    return CampaignBatch.objects.select_related("campaign").get(pk=batch_id) if claimed else None


def _set_batch(batch: CampaignBatch, status: str, *, next_attempt_at: datetime | None = None) -> None:
    now = timezone.now()
    CampaignBatch.objects.filter(pk=batch.pk).update(
        status=status,
        next_attempt_at=next_attempt_at,
        lease_expires_at=None,
        queued_at=now if status == BatchStatus.QUEUED else F("queued_at"),
        updated_at=now,
    )


def campaign_batch_send(*, batch_id: int) -> None:
    """Send what is left of one batch (see the module docstring for every way it ends)."""
    batch = _claim_batch(batch_id)
    if batch is None:
        logger.info("campaign batch %s: not claimable (done, owned by another worker, or not due)", batch_id)
        return
    try:
        _run(batch)
    finally:
        campaign_batch_recount(batch_id=batch.pk)
        campaign_finish_if_done(campaign_id=batch.campaign_id)


def _run(batch: CampaignBatch) -> None:
    campaign = batch.campaign
    if campaign.status == CampaignStatus.PAUSED:
        _set_batch(batch, BatchStatus.PAUSED)
        return
    if campaign.status != CampaignStatus.RUNNING:
        _skip_rest(batch, f"not sent: campaign {campaign.status}")
        return
    low, high = batch_key_range(batch)
    now = timezone.now()
    rows = list(
        Notification.objects.filter(pk__gte=low, pk__lte=high, status=NotificationStatus.SCHEDULED)
        .order_by("pk")
        .values_list("pk", "recipient__timezone")
    )
    ready: list[uuid.UUID] = []
    wake_at: datetime | None = None
    for pk, zone in rows:
        until = quiet_until(zone, now)
        if until is None:
            ready.append(pk)
        else:
            wake_at = until if wake_at is None else min(wake_at, until)
    try:
        content = render(template=campaign.template, channel=campaign.channel, context=campaign.context)
    except ValidationError as exc:
        # The template changed under a running campaign (a deploy): every batch would fail the
        # same way, so stop the campaign with the reason instead of retrying 10,000 batches.
        campaign_pause_with_error(campaign_id=campaign.pk, error=f"cannot render: {'; '.join(exc.messages)}")
        _set_batch(batch, BatchStatus.PAUSED)
        return
    outcome = _send_rows(batch, campaign, ready, content)
    if outcome is not None:
        return
    if wake_at is not None:
        _set_batch(batch, BatchStatus.DEFERRED, next_attempt_at=wake_at)
        logger.info("campaign batch %s: recipients in quiet hours; deferred until %s", batch.pk, wake_at.isoformat())
    else:
        _set_batch(batch, BatchStatus.DONE)


#: Rows claimed per statement, sent in several provider calls: one claim (the consent and
#: pause check) per CLAIM_CALLS calls keeps PostgreSQL's share of a send small.
CLAIM_CALLS = 10


def _send_rows(
    batch: CampaignBatch, campaign: Campaign, ready: list[uuid.UUID], content: RenderedMessage
) -> str | None:
    """Send `ready` in provider calls; None when all went, else why the batch stopped (already recorded)."""
    deadline = time.monotonic() + _time_budget()
    position = 0
    while position < len(ready):
        if time.monotonic() > deadline:
            _set_batch(batch, BatchStatus.QUEUED)
            campaign_batches_publish(campaign, [batch.pk])
            return "time budget used"
        provider, limiter = _pick_provider(campaign.channel)
        if provider is None:
            _set_batch(
                batch,
                BatchStatus.DEFERRED,
                next_attempt_at=timezone.now() + timedelta(seconds=breaker_config().cooldown_seconds),
            )
            return "every provider's circuit is open"
        share = limiter.share_for("marketing") if limiter else 1.0
        # Half the burst per call: the other half lets tokens accumulate while this worker
        # is busy with PostgreSQL, instead of going unused (the limit would not be reached).
        size = min(max(1, limiter.max_batch(share) // 2) if limiter else provider.max_batch, provider.max_batch)
        chunk = ready[position : position + size * CLAIM_CALLS]
        claimed = _claim_rows(campaign, chunk)
        if claimed is None:
            return _stopped(batch)
        position += len(chunk)
        for start in range(0, len(claimed), size):
            call = claimed[start : start + size]
            messages = [
                OutboundMessage(
                    notification_id=str(pk),
                    idempotency_key=f"notification:{pk}",
                    channel=campaign.channel,
                    to=to,
                    content=content,
                    headers=unsubscribe_headers(recipient_id=recipient_id, channel=campaign.channel)
                    if campaign.channel == Channel.EMAIL
                    else {},
                )
                for pk, to, recipient_id, _ in call
            ]
            if limiter is not None:
                # Tokens last, just before the call: the provider sees the pace the limiter granted.
                wait = limiter.acquire_within(len(call), share=share, max_wait=INLINE_TOKEN_WAIT_SECONDS)
                if wait > 0:
                    _release_rows([row.pk for row in claimed[start:]])
                    _set_batch(batch, BatchStatus.DEFERRED, next_attempt_at=timezone.now() + timedelta(seconds=wait))
                    return "no token under the global rate limit"
            try:
                results = provider.send_batch(messages)
            except ConfigurationError as exc:
                results = [exc] * len(messages)
            _record(campaign, provider, limiter, call, results)
    return None


def _pick_provider(channel: str) -> tuple[BaseProvider | None, RateLimiter | None]:
    for provider in providers_for(channel):
        if delivery.breaker_for(provider).allow() != OPEN:
            return provider, rate_limiter_for(provider.name)
    return None, None


_CLAIM_SQL = """
WITH candidates AS MATERIALIZED (
    SELECT n.id, r.{consent} AS consent,
           (SELECT s.reason FROM notifications_suppression s
             WHERE s.channel = n.channel AND s.address = n."to") AS suppressed
    FROM notifications_notification n
    JOIN notifications_recipient r ON r.id = n.recipient_id
    WHERE n.id = ANY(%(ids)s) AND n.status = 'scheduled'
      AND EXISTS (SELECT 1 FROM notifications_campaign c WHERE c.id = %(campaign)s AND c.status = 'running')
)
UPDATE notifications_notification n SET
    status = CASE WHEN c.consent AND c.suppressed IS NULL THEN 'sending' ELSE 'skipped' END,
    attempts = n.attempts + CASE WHEN c.consent AND c.suppressed IS NULL THEN 1 ELSE 0 END,
    lease_expires_at = CASE WHEN c.consent AND c.suppressed IS NULL THEN %(lease)s END,
    last_error = CASE
        WHEN NOT c.consent THEN %(no_consent)s
        WHEN c.suppressed IS NOT NULL THEN 'not sent: address suppressed (' || c.suppressed || ')'
        ELSE '' END,
    updated_at = %(now)s
FROM candidates c
WHERE n.id = c.id AND n.status = 'scheduled'
RETURNING n.id, n.status, n."to", n.recipient_id, n.attempts, n.created_at, n.last_error
"""


class Claimed(NamedTuple):
    pk: uuid.UUID
    to: str
    recipient_id: int
    #: An unsaved stand-in with the fields the events and metrics need (no extra query).
    row: Notification


def _row(campaign: Campaign, pk: uuid.UUID, recipient_id: int, attempts: int, created_at) -> Notification:
    return Notification(
        pk=pk,
        priority="marketing",
        channel=campaign.channel,
        recipient_id=recipient_id,
        attempts=attempts,
        created_at=created_at,
        campaign_id=campaign.pk,
    )


def _claim_rows(campaign: Campaign, ids: list[uuid.UUID]) -> list[Claimed] | None:
    """Claim rows to send now; rows whose recipient withdrew consent or whose address is suppressed
    become skipped in the same statement.  None if the campaign is no longer running."""
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        # A claim lost in a PostgreSQL crash only sends the rows back to `scheduled`; not
        # waiting for its fsync saves one of the two per call.  (The sent update does wait.)
        cursor.execute("SET LOCAL synchronous_commit TO OFF")
        cursor.execute(
            _CLAIM_SQL.format(consent=MARKETING_CONSENT_FIELDS[campaign.channel]),
            {
                "ids": ids,
                "campaign": campaign.pk,
                "lease": now + delivery.claim_lease(),
                "now": now,
                "no_consent": f"not sent: the recipient withdrew marketing consent for {campaign.channel}",
            },
        )
        rows = cursor.fetchall()
    if not rows and not Campaign.objects.filter(pk=campaign.pk, status=CampaignStatus.RUNNING).exists():
        return None
    claimed, skipped = [], []
    for pk, status, to, recipient_id, attempts, created_at, reason in rows:
        row = _row(campaign, pk, recipient_id, attempts, created_at)
        if status == NotificationStatus.SENDING:
            claimed.append(Claimed(pk, to, recipient_id, row))
        else:
            skipped.append((row, "skipped", "", reason, {}))
    notifications_events(skipped)
    return claimed


def _release_rows(ids: list[uuid.UUID]) -> None:
    """Claimed but not sent (no token): back to scheduled, the attempt not counted."""
    Notification.objects.filter(pk__in=ids, status=NotificationStatus.SENDING).update(
        status=NotificationStatus.SCHEDULED,
        attempts=F("attempts") - 1,
        lease_expires_at=None,
        updated_at=timezone.now(),
    )


def _stopped(batch: CampaignBatch) -> str:
    """The campaign left `running` while this batch was sending."""
    status = Campaign.objects.filter(pk=batch.campaign_id).values_list("status", flat=True).first()
    if status == CampaignStatus.PAUSED:
        _set_batch(batch, BatchStatus.PAUSED)
        logger.info("campaign batch %s: campaign paused; batch handed back", batch.pk)
        return "paused"
    _skip_rest(batch, f"not sent: campaign {status}")
    return str(status)


def _skip_rest(batch: CampaignBatch, reason: str) -> None:
    low, high = batch_key_range(batch)
    with transaction.atomic():
        skipped = Notification.objects.filter(pk__gte=low, pk__lte=high, status=NotificationStatus.SCHEDULED).update(
            status=NotificationStatus.SKIPPED, last_error=reason, updated_at=timezone.now()
        )
        _set_batch(batch, BatchStatus.DONE)
    logger.info("campaign batch %s: %s row(s) skipped (%s)", batch.pk, skipped, reason)


def _record(
    campaign: Campaign,
    provider: BaseProvider,
    limiter: RateLimiter | None,
    claimed: list[Claimed],
    results: list[SendResult | JobError | ConfigurationError],
) -> None:
    """Write every message's outcome; the circuit breaker hears about the call as a whole."""
    breaker = delivery.breaker_for(provider)
    sent = [(c, r.message_id) for c, r in zip(claimed, results, strict=True) if isinstance(r, SendResult)]
    failures = [(c.pk, c.to, r) for c, r in zip(claimed, results, strict=True) if not isinstance(r, SendResult)]
    if sent or any(isinstance(r, PermanentError) for _, _, r in failures):
        breaker.record_success()
    elif failures:
        first = failures[0][2]
        if getattr(first, "status", None) == 429:
            if limiter is not None:
                limiter.penalize(getattr(first, "retry_after", None) or 1.0)
        else:
            breaker.record_failure(str(first))
    now = timezone.now()
    with transaction.atomic():
        if sent:
            with connection.cursor() as cursor:
                cursor.execute(
                    """
                    UPDATE notifications_notification n SET status = 'sent', provider = %s,
                        provider_message_id = v.message_id, outcome_unknown = false, sent_at = %s,
                        lease_expires_at = NULL, next_attempt_at = NULL, last_error = '', updated_at = %s
                    FROM unnest(%s::uuid[], %s::text[]) AS v(id, message_id)
                    WHERE n.id = v.id AND n.status = 'sending'
                    """,
                    [provider.name, now, now, [c.pk for c, _ in sent], [mid for _, mid in sent]],
                )
        if failures:
            by_pk = Notification.objects.in_bulk([pk for pk, _, _ in failures])
            for pk, to, error in failures:
                notification = by_pk[pk]
                if isinstance(error, PermanentError):
                    if error.recipient_refused:
                        address_suppress(channel=campaign.channel, address=to, reason=str(error))
                    delivery.dead_letter(notification, error, provider=provider.name)
                elif isinstance(error, TransientError):
                    delivery.schedule_retry(
                        notification,
                        f"{provider.name}: {error}",
                        provider.name,
                        error.retry_after,
                        outcome_unknown=error.unknown_outcome,
                    )
                else:
                    logger.error("campaign %s: provider %s is misconfigured: %s", campaign.pk, provider.name, error)
                    delivery.schedule_retry(notification, f"{provider.name}: {error}", provider.name, None)
    if sent:
        notifications_events(
            (c.row, "sent", provider.name, "", {"provider_message_id": message_id}) for c, message_id in sent
        )
