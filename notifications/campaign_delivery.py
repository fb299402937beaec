"""Send one campaign batch: claim rows a call's worth at a time (consent, muted topics, suppression and the
campaign's status checked in the claim itself) and send each call through the one provider-call path (sending.py).

| situation                                   | what happens to the batch                          |
|---------------------------------------------|----------------------------------------------------|
| campaign paused                             | unsent rows stay scheduled; batch paused (resume   |
|                                             | queues it again)                                    |
| campaign cancelled                          | unsent rows skipped (no event each); batch done     |
| recipient in quiet hours (own or platform's)| row stays scheduled; batch deferred to quiet end   |
| consent withdrawn or topic muted            | row skipped, at its claim                          |
| every provider busy or open (no call)       | claimed rows back to scheduled; batch deferred by   |
|                                             | the wait (slot freed)                               |
| task ran for its time budget                | batch queued again (a fresh task continues)        |
| a message fails transiently / permanently   | that row alone: retry on the single-send path (with |
|                                             | the campaign's content) / dead letter + suppression |
| CAMPAIGN_BATCH_MAX_RUNS runs in a row died  | batch and its unsent rows dead-lettered; a replay   |
|                                             | of its dead letter revives both                     |

Where the batch goes when the campaign left `running` is decided under a lock on the campaign
row, so a pause, resume or cancel arriving at any moment cannot leave a batch parked for ever.
"""

import logging
import time
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import DateTimeField, ExpressionWrapper, F, Q
from django.db.models.functions import Now
from django.utils import timezone

from jobs.deadletters import deadletter_record
from notifications import task_names
from notifications.campaigns import campaign_batches_publish, campaign_pause_with_error
from notifications.consent import HOLD_FIELDS, marketing_hold, muted_reason, withdrawn_reason
from notifications.counting import CANCELLED_REASON, batch_key_range, campaign_batch_recount
from notifications.events import notifications_events
from notifications.models import (
    MARKETING_CONSENT_FIELDS,
    OPEN_BATCH_STATUSES,
    QUIET_HOURS_REASON,
    BatchStatus,
    Campaign,
    CampaignBatch,
    CampaignStatus,
    Notification,
    NotificationStatus,
    Priority,
    Recipient,
    status_events_off,
)
from notifications.rendering import RenderedMessage, render
from notifications.sending import Delivery, build_message, claim_lease, group_size, send
from settings.topology import queue_name

logger = logging.getLogger(__name__)

#: The job name of a batch's dead letter (its replayer is registered under it).
BATCH_JOB_NAME = task_names.CAMPAIGN_BATCH
#: last_error of the rows dead-lettered with their batch; a replay of the batch revives exactly these.
DEAD_WITH_BATCH = "dead with its campaign batch"
#: Rows claimed per statement, sent in several provider calls: one claim (the consent and
#: pause check) per CLAIM_CALLS calls keeps PostgreSQL's share of a send small.
CLAIM_CALLS = 10


def _time_budget() -> float:
    """Seconds a batch task works before handing its batch to a fresh task: far inside the soft time limit."""
    return settings.CELERY_TASK_SOFT_TIME_LIMIT / 2


def _lease() -> ExpressionWrapper:
    return ExpressionWrapper(Now() + claim_lease(), output_field=DateTimeField())


def _claim_batch(batch_id: int) -> CampaignBatch | None:
    """Take the batch (PostgreSQL's clock, a claim token); a batch whose runs kept dying is dead-lettered instead."""
    claimable = (
        Q(status=BatchStatus.QUEUED)
        | Q(status=BatchStatus.DEFERRED, next_attempt_at__lte=Now())
        | Q(status=BatchStatus.SENDING, lease_expires_at__lt=Now())
    )
    token = uuid.uuid4()
    claimed = CampaignBatch.objects.filter(
        claimable, pk=batch_id, unfinished_runs__lt=settings.CAMPAIGN_BATCH_MAX_RUNS
    ).update(
        status=BatchStatus.SENDING,
        runs=F("runs") + 1,
        unfinished_runs=F("unfinished_runs") + 1,
        lease_expires_at=_lease(),
        claim_token=token,
        next_attempt_at=None,
        reason="",
        updated_at=Now(),
    )
    if claimed:
        return CampaignBatch.objects.select_related("campaign").get(pk=batch_id)
    exhausted = CampaignBatch.objects.filter(
        claimable, pk=batch_id, unfinished_runs__gte=settings.CAMPAIGN_BATCH_MAX_RUNS
    ).first()
    if exhausted is not None:
        _dead_letter_batch(exhausted)
    return None


def _set_batch(batch: CampaignBatch, status: str, *, wait: float | None = None, reason: str = "") -> bool:
    """End this run: the batch goes to `status` (deferred: for `wait` seconds, and why) and its rows are counted,
    in one transaction.  False if the claim was lost.

    A batch left open (queued, deferred, paused) when its campaign was cancelled meanwhile would wait for nothing,
    its rows uncounted (the cancel's close saw it held): its unsent rows are skipped here instead, under the
    campaign's lock (taken after the batch's, as every path that counts does), so a cancel either comes first and
    is seen here, or comes after and closes the batch itself.
    """
    due = None if wait is None else ExpressionWrapper(Now() + timedelta(seconds=wait), DateTimeField())
    with transaction.atomic():
        updated = CampaignBatch.objects.filter(
            pk=batch.pk, status=BatchStatus.SENDING, claim_token=batch.claim_token
        ).update(
            status=status,
            unfinished_runs=0,
            next_attempt_at=due,
            reason=reason,
            lease_expires_at=None,
            queued_at=Now() if status == BatchStatus.QUEUED else F("queued_at"),
            updated_at=Now(),
        )
        if updated and status in OPEN_BATCH_STATUSES and _campaign_cancelled(batch.campaign_id):
            _skip_unsent(batch)
            CampaignBatch.objects.filter(pk=batch.pk).update(status=BatchStatus.DONE, next_attempt_at=None, reason="")
            status = BatchStatus.DONE
        if updated:
            campaign_batch_recount(batch_id=batch.pk)
    if status == BatchStatus.QUEUED and updated:
        campaign_batches_publish(batch.campaign, [batch.pk])
    return bool(updated)


def _campaign_cancelled(campaign_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT status FROM notifications_campaign WHERE id = %s FOR NO KEY UPDATE", [campaign_id])
        row = cursor.fetchone()
    return row is not None and row[0] == CampaignStatus.CANCELLED


def _skip_unsent(batch: CampaignBatch) -> int:
    """The batch's scheduled rows skipped, with no event each (the campaign's cancel is their record)."""
    low, high = batch_key_range(batch)
    with connection.cursor() as cursor, status_events_off(cursor):
        return Notification.objects.filter(pk__gte=low, pk__lte=high, status=NotificationStatus.SCHEDULED).update(
            status=NotificationStatus.SKIPPED, last_error=CANCELLED_REASON, updated_at=Now()
        )


def campaign_batch_send(*, batch_id: int) -> None:
    """Send what is left of one batch (see the module docstring for every way it ends)."""
    batch = _claim_batch(batch_id)
    if batch is None:
        logger.info("campaign batch %s: not claimable (done, owned by another worker, or not due)", batch_id)
        return
    # Every way a run ends counts the batch's rows in the transaction that ends it (_set_batch); a
    # run that raises or dies leaves the batch to its lease, and the run that takes it over counts.
    _run(batch)


def _run(batch: CampaignBatch) -> None:
    campaign = batch.campaign
    if campaign.status != CampaignStatus.RUNNING:
        _hand_back(batch)
        return
    low, high = batch_key_range(batch)
    now = timezone.now()
    fields = (*HOLD_FIELDS, MARKETING_CONSENT_FIELDS[campaign.channel])
    rows = (
        Notification.objects.filter(pk__gte=low, pk__lte=high, status=NotificationStatus.SCHEDULED)
        .order_by("pk")
        .values_list("pk", *(f"recipient__{field}" for field in fields))
    )
    ready: list[uuid.UUID] = []
    wake_at: datetime | None = None
    quiet_zones: set[str] = set()
    for pk, *values in rows:
        recipient = Recipient(**dict(zip(fields, values, strict=True)))
        hold = marketing_hold(recipient, channel=campaign.channel, topic=campaign.audience_tag, now=now)
        if hold is None or hold.until is None:
            # A row to skip is claimed all the same: the claim skips it, in the statement that reads
            # the recipient's consent and muted topics again.
            ready.append(pk)
        else:
            wake_at = hold.until if wake_at is None else min(wake_at, hold.until)
            quiet_zones.add(recipient.timezone)
    try:
        content = render(template=campaign.template, channel=campaign.channel, context=campaign.context)
    except ValidationError as exc:
        # The template changed under a running campaign (a deploy): every batch would fail the
        # same way, so stop the campaign with the reason instead of retrying 10,000 batches.
        campaign_pause_with_error(campaign_id=campaign.pk, error=f"cannot render: {'; '.join(exc.messages)}")
        _hand_back(batch)
        return
    if _send_rows(batch, campaign, ready, content):
        return
    if wake_at is not None:
        _set_batch(
            batch,
            BatchStatus.DEFERRED,
            wait=max(0.0, (wake_at - now).total_seconds()),
            reason=f"{QUIET_HOURS_REASON}: {' '.join(sorted(quiet_zones))}",
        )
        logger.info("campaign batch %s: recipients in quiet hours; deferred until %s", batch.pk, wake_at.isoformat())
    else:
        _set_batch(batch, BatchStatus.DONE)


def _send_rows(batch: CampaignBatch, campaign: Campaign, ready: list[uuid.UUID], content: RenderedMessage) -> bool:
    """Send `ready` a call at a time; False when all went, True when the run stopped early (already recorded)."""
    deadline = time.monotonic() + _time_budget()
    size = group_size(priority=Priority.MARKETING, channel=campaign.channel)
    position = 0
    while position < len(ready):
        if time.monotonic() > deadline:
            _set_batch(batch, BatchStatus.QUEUED)
            return True
        chunk = ready[position : position + size * CLAIM_CALLS]
        claimed = _claim_rows(campaign, chunk)
        if claimed is None:
            _hand_back(batch)
            return True
        position += len(chunk)
        for start in range(0, len(claimed), size):
            call = claimed[start : start + size]
            unsent = send(
                [Delivery(row, build_message(row, content)) for row in call],
                priority=Priority.MARKETING,
                channel=campaign.channel,
                recount=False,  # once per run, where the run ends (_set_batch)
            )
            if unsent is not None:
                # Nobody could be called (every provider open, or the primary busy past the inline
                # wait): the rows go back to the batch, the slot is freed, the relay brings it back.
                _release_rows([d.row for d in unsent.deliveries] + claimed[start + size :])
                _set_batch(batch, BatchStatus.DEFERRED, wait=unsent.wait, reason=unsent.reason)
                logger.info("campaign batch %s deferred %.1fs: %s", batch.pk, unsent.wait, unsent.reason)
                return True
    return False


_CLAIM_SQL = """
WITH candidates AS MATERIALIZED (
    SELECT n.id, r.{consent} AS consent,
           (%(topic)s <> '' AND r.muted_topics @> ARRAY[%(topic)s]::varchar(50)[]) AS muted,
           (SELECT s.reason FROM notifications_suppression s
             WHERE s.channel = n.channel AND s.address = n."to") AS suppressed
    FROM notifications_notification n
    JOIN notifications_recipient r ON r.id = n.recipient_id
    WHERE n.id = ANY(%(ids)s) AND n.status = 'scheduled'
      -- Running only: stricter than the cancel's rule (models.cancelled_unsent_sql), a paused campaign's rows wait too.
      AND EXISTS (SELECT 1 FROM notifications_campaign c WHERE c.id = %(campaign)s AND c.status = 'running')
),
decided AS (SELECT *, consent AND NOT muted AND suppressed IS NULL AS go FROM candidates)
UPDATE notifications_notification n SET
    status = CASE WHEN c.go THEN 'sending' ELSE 'skipped' END,
    attempts = n.attempts + CASE WHEN c.go THEN 1 ELSE 0 END,
    lease_expires_at = CASE WHEN c.go THEN statement_timestamp() + make_interval(secs => %(lease)s) END,
    claim_token = %(token)s,
    last_error = CASE
        WHEN NOT c.consent THEN %(no_consent)s
        WHEN c.muted THEN %(muted)s
        WHEN c.suppressed IS NOT NULL THEN 'not sent: address suppressed (' || c.suppressed || ')'
        ELSE '' END,
    updated_at = statement_timestamp()
FROM decided c
-- The ids again, as constants: PostgreSQL plans the UPDATE on their leaves alone (notifications/partitions.py).
WHERE n.id = c.id AND n.status = 'scheduled' AND n.id = ANY(%(ids)s)
RETURNING n.id, n.status, n."to", n.recipient_id, n.attempts, n.created_at, n.last_error
"""


def _row(campaign: Campaign, pk, status, to, recipient_id, attempts, created_at, token) -> Notification:
    """An unsaved stand-in with the fields sending and the events need (no extra query)."""
    return Notification(
        pk=pk,
        priority=Priority.MARKETING,
        channel=campaign.channel,
        status=status,
        recipient_id=recipient_id,
        to=to,
        template=campaign.template,
        attempts=attempts,
        created_at=created_at,
        campaign_id=campaign.pk,
        claim_token=token,
    )


def _claim_rows(campaign: Campaign, ids: list[uuid.UUID]) -> list[Notification] | None:
    """Claim rows to send now; rows whose recipient withdrew consent, muted the campaign's topic, or whose
    address is suppressed become skipped in the same statement (marketing_hold's skip rules, in SQL).
    None if the campaign is no longer running."""
    token = uuid.uuid4()
    with transaction.atomic(), connection.cursor() as cursor:
        # A claim lost in a PostgreSQL crash only sends the rows back to `scheduled`; not
        # waiting for its fsync saves one of the two per call.  (The sent update does wait.)
        cursor.execute("SET LOCAL synchronous_commit TO OFF")
        cursor.execute(
            _CLAIM_SQL.format(consent=MARKETING_CONSENT_FIELDS[campaign.channel]),
            {
                "ids": ids,
                "campaign": campaign.pk,
                "lease": claim_lease().total_seconds(),
                "token": token,
                "topic": campaign.audience_tag,
                # The reasons marketing_hold gives on the single-send path, word for word.
                "no_consent": withdrawn_reason(campaign.channel),
                "muted": muted_reason(campaign.audience_tag),
            },
        )
        rows = cursor.fetchall()
    if not rows and not Campaign.objects.filter(pk=campaign.pk, status=CampaignStatus.RUNNING).exists():
        return None
    claimed, skipped = [], []
    for pk, status, to, recipient_id, attempts, created_at, reason in rows:
        row = _row(campaign, pk, status, to, recipient_id, attempts, created_at, token)
        if status == NotificationStatus.SENDING:
            claimed.append(row)
        else:
            skipped.append((row, "skipped", "", reason, {}))
    notifications_events(skipped)
    return claimed


def _release_rows(rows: list[Notification]) -> None:
    """Claimed but not sent (nobody could be called): back to scheduled, the attempt not counted."""
    if not rows:
        return
    Notification.objects.filter(
        pk__in=[row.pk for row in rows], status=NotificationStatus.SENDING, claim_token=rows[0].claim_token
    ).update(
        status=NotificationStatus.SCHEDULED,
        attempts=F("attempts") - 1,
        lease_expires_at=None,
        updated_at=Now(),
    )


def _hand_back(batch: CampaignBatch) -> None:
    """The campaign is not running (as this run last saw it): park the batch as the campaign's state says now.

    Decided under a lock on the campaign row, which pause, resume and cancel take too: a resume
    either comes first (the batch is queued again here) or finds the batch paused and queues it;
    a cancel either comes first (the rows are skipped here) or finds it paused and queues it.
    Locks are taken batch first, then campaign, the order every path that counts rows uses.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM notifications_campaignbatch WHERE id = %s FOR UPDATE", [batch.pk])
        cursor.execute("SELECT status FROM notifications_campaign WHERE id = %s FOR UPDATE", [batch.campaign_id])
        (status,) = cursor.fetchone()
        if status == CampaignStatus.PAUSED:
            _set_batch(batch, BatchStatus.PAUSED)
            logger.info("campaign batch %s: campaign paused; batch handed back", batch.pk)
        elif status == CampaignStatus.RUNNING:
            _set_batch(batch, BatchStatus.QUEUED)
            logger.info("campaign batch %s: campaign running again; batch queued again", batch.pk)
        else:
            skipped = _skip_unsent(batch)
            _set_batch(batch, BatchStatus.DONE)
            logger.info("campaign batch %s: campaign %s; %s row(s) skipped", batch.pk, status, skipped)


# --- a batch that keeps dying -----------------------------------------------------------


def _dead_letter_batch(batch: CampaignBatch) -> None:
    """Its runs died CAMPAIGN_BATCH_MAX_RUNS times in a row: the batch and its unsent rows become dead,
    so the campaign can finish and an operator sees one dead letter to replay or discard."""
    low, high = batch_key_range(batch)
    reason = (
        f"campaign {batch.campaign_id} batch {batch.pk}: {batch.unfinished_runs} runs in a row did not finish "
        "(the worker died or the task failed)"
    )
    with transaction.atomic():
        updated = CampaignBatch.objects.filter(
            pk=batch.pk, status=batch.status, unfinished_runs=batch.unfinished_runs
        ).update(status=BatchStatus.DEAD, lease_expires_at=None, next_attempt_at=None, updated_at=Now())
        if not updated:
            return
        rows = Notification.objects.filter(pk__gte=low, pk__lte=high, status=NotificationStatus.SCHEDULED).update(
            status=NotificationStatus.DEAD, last_error=f"{DEAD_WITH_BATCH}: {reason}", updated_at=Now()
        )
        deadletter_record(
            job_name=BATCH_JOB_NAME,
            arguments={"args": [batch.pk], "campaign": batch.campaign_id, "rows": rows},
            error=reason,
            attempts=batch.unfinished_runs,
            queue=queue_name(Priority.MARKETING, batch.campaign.channel),
            subject=batch,
        )
        campaign_batch_recount(batch_id=batch.pk)
    logger.error("%s; %s unsent row(s) dead-lettered with it", reason, rows)
