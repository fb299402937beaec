"""Put rows back to work: the outbox relay (what no worker will otherwise pick up) and the dead-letter
replayers (registered with jobs.deadletters).  Above delivery and the campaign lifecycle; only tasks call the relay."""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Case, DateTimeField, ExpressionWrapper, Q, Value, When
from django.db.models.functions import Now

from jobs.clock import database_now
from jobs.deadletters import register_replayer
from jobs.models import DeadLetter
from jobs.publishing import publish_after_commit
from jobs.redis import queue_head, queue_lost_before
from notifications import task_names
from notifications.campaign_delivery import BATCH_JOB_NAME, DEAD_WITH_BATCH
from notifications.campaigns import campaign_batches_publish, campaign_cancel_count
from notifications.counting import batch_key_range, campaign_batch_recount, campaign_recount_for
from notifications.events import notification_event
from notifications.inputs import secret_variables
from notifications.models import (
    OPEN_BATCH_STATUSES,
    BatchStatus,
    Campaign,
    CampaignBatch,
    CampaignSegment,
    CampaignStatus,
    Channel,
    Notification,
    NotificationStatus,
    Priority,
)
from notifications.sending import JOB_NAME
from notifications.services import notification_publish
from settings.topology import FANOUT_QUEUE, PRIORITIES, queue_name

logger = logging.getLogger(__name__)


# --- relay --------------------------------------------------------------------------


#: The relay serves urgency first: each priority gets its own budget per run, in this order.
RELAY_ORDER = PRIORITIES


def notification_relay(*, now=None, queue_heads=queue_head) -> int:
    """Publish again what no worker will otherwise pick up; returns how many rows.

    Per priority, security first, up to RELAY_BATCH_SIZE rows each: due retries, rows never
    published (pending), rows whose worker died (sending, lease expired), and queued rows whose
    message is really gone (published before the head of their queue: see queue_lost_before),
    never a backlog that is only waiting its turn.  Rows are locked with SKIP LOCKED, so
    concurrent relays share the work.  `now`: PostgreSQL's time of this run (the task reads it once);
    `queue_heads(name)` reads a queue.
    """
    moment = now if now is not None else Now()
    wall = (now or database_now()).timestamp()
    pending_before = _ago(now, settings.RELAY_PENDING_AFTER_SECONDS)
    due = (
        Q(status=NotificationStatus.FAILED, next_attempt_at__lte=moment)
        | Q(status=NotificationStatus.PENDING, created_at__lt=pending_before)
        | Q(status=NotificationStatus.SENDING, lease_expires_at__lt=moment)
    )
    published = 0
    for priority in RELAY_ORDER:
        with transaction.atomic():
            rows = list(
                Notification.objects.select_for_update(skip_locked=True)
                .filter(due | _lost_queued(priority, wall, queue_heads), priority=priority)
                .only("pk", "priority", "channel", "status")[: settings.RELAY_BATCH_SIZE]
            )
            if not rows:
                continue
            # Back to queued; queued_at restarts the clock.  A row taken from a worker that died
            # mid-call may have reached its vendor: the next attempt asks before sending.
            Notification.objects.filter(pk__in=[r.pk for r in rows]).update(
                status=NotificationStatus.QUEUED,
                outcome_unknown=Case(
                    When(status=NotificationStatus.SENDING, then=Value(True)), default="outcome_unknown"
                ),
                queued_at=moment,
                next_attempt_at=None,
                lease_expires_at=None,
                updated_at=moment,
            )
            for row in rows:
                notification_publish(row)
        logger.info("relay: published %s %s notification(s) again", len(rows), priority)
        published += len(rows)
    return published


def _lost_queued(priority: str, now: float, queue_heads) -> Q:
    """Queued rows of `priority` whose message is no longer in their queue (see queue_lost_before)."""
    lost = Q(pk__in=[])
    for channel in Channel.values:
        before = queue_lost_before(
            queue_heads(queue_name(priority, channel)), now=now, grace=settings.RELAY_QUEUED_AFTER_SECONDS
        )
        lost |= Q(channel=channel, status=NotificationStatus.QUEUED, queued_at__lt=before)
    return lost


def _ago(now, seconds: float):
    """`seconds` before `now` (PostgreSQL's clock when `now` is None)."""
    if now is not None:
        return now - timedelta(seconds=seconds)
    return ExpressionWrapper(Now() - timedelta(seconds=seconds), DateTimeField())


def campaign_relay(*, now=None, queue_heads=queue_head) -> int:
    """Publish again the fan-out segments and batches no worker will otherwise pick up.

    Deferred batches that are due, and batches whose worker died (lease expired), go back at
    once.  A queued batch or segment whose message is no longer in its queue (published before
    the queue's head: see queue_lost_before) lost it (Redis restarted); thousands that only wait
    their turn in a busy queue are left alone.  `queue_heads(name)` reads a queue.
    """
    moment = now if now is not None else Now()
    wall = (now or database_now()).timestamp()
    grace = settings.RELAY_QUEUED_AFTER_SECONDS
    published = 0
    with transaction.atomic():
        due = list(
            CampaignBatch.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(
                Q(status=BatchStatus.DEFERRED, next_attempt_at__lte=moment)
                | Q(status=BatchStatus.SENDING, lease_expires_at__lt=moment)
            )
            .select_related("campaign")[:1000]
        )
        for channel in Channel.values:
            lost = queue_lost_before(queue_heads(queue_name(Priority.MARKETING, channel)), now=wall, grace=grace)
            due += list(
                CampaignBatch.objects.select_for_update(skip_locked=True, of=("self",))
                .filter(status=BatchStatus.QUEUED, queued_at__lt=lost, campaign__channel=channel)
                .select_related("campaign")
                .order_by("pk")[:1000]
            )
        for batch in due:
            CampaignBatch.objects.filter(pk=batch.pk).update(
                status=BatchStatus.QUEUED,
                queued_at=moment,
                next_attempt_at=None,
                lease_expires_at=None,
                updated_at=moment,
            )
            campaign_batches_publish(batch.campaign, [batch.pk])
        published += len(due)
        segments = list(
            CampaignSegment.objects.select_for_update(skip_locked=True).filter(
                done_at__isnull=True, queued_at__lt=queue_lost_before(queue_heads(FANOUT_QUEUE), now=wall, grace=grace)
            )[:100]
        )
        for segment in segments:
            CampaignSegment.objects.filter(pk=segment.pk).update(queued_at=moment)
            publish_after_commit(task_names.CAMPAIGN_FANOUT, args=[segment.pk], queue=FANOUT_QUEUE)
        published += len(segments)
        # A cancelled campaign whose sweep was lost (Redis restarted, its worker died): batches still to rewrite and
        # no sweep seen for a while (each sweep transaction touches the campaign).
        swept = list(
            Campaign.objects.filter(
                status=CampaignStatus.CANCELLED,
                updated_at__lt=_ago(now, grace),
                batches__status=BatchStatus.CANCELLED,
            )
            .values_list("pk", flat=True)
            .distinct()[:10]
        )
        for campaign_id in swept:
            Campaign.objects.filter(pk=campaign_id).update(updated_at=moment)
            publish_after_commit(task_names.CAMPAIGN_SWEEP, args=[campaign_id], queue=FANOUT_QUEUE)
        published += len(swept)
    # A cancelled campaign with batches still open a while after its cancel: its close was lost (the cancel's
    # process died between its commit and the close).  Closed now, outside the lock of the batches taken above.
    unclosed = list(
        Campaign.objects.filter(
            status=CampaignStatus.CANCELLED,
            finished_at__lt=_ago(now, grace),
            batches__status__in=OPEN_BATCH_STATUSES,
            batches__updated_at__lt=_ago(now, grace),
        )
        .values_list("pk", flat=True)
        .distinct()[:10]
    )
    for campaign_id in unclosed:
        campaign_cancel_count(campaign_id=campaign_id, background=False)
    if published or unclosed:
        logger.info(
            "campaign relay: published %s batch(es), segment(s) or sweep(s) again; closed %s cancelled campaign(s)",
            published,
            len(unclosed),
        )
    return published + len(unclosed)


# --- replay -------------------------------------------------------------------------


def notification_replay(dead_letter: DeadLetter) -> None:
    """Replayer of the dead-letter table: queued again with the same idempotency key, a fresh attempt
    count and a fresh time budget from now (its old budget may have run out long ago)."""
    notification = Notification.objects.filter(pk=dead_letter.subject_id).first()
    if notification is None:
        raise LookupError(f"notification {dead_letter.subject_id} no longer exists")
    with transaction.atomic():
        replayed = Notification.objects.filter(pk=notification.pk, status=NotificationStatus.DEAD).update(
            status=NotificationStatus.QUEUED,
            attempts=0,
            next_attempt_at=None,
            retry_budget_from=Now(),
            queued_at=Now(),
            updated_at=Now(),
        )
        if replayed and notification.campaign_id:
            campaign_recount_for(notification)
    if replayed:
        notification_event(notification, "replayed", detail=f"dead letter {dead_letter.pk}")
    notification_publish(notification)


def notification_replay_refusal(dead_letter: DeadLetter) -> str | None:
    """A notification whose secret (a reset code) was wiped when it died cannot be sent again."""
    notification = Notification.objects.filter(pk=dead_letter.subject_id).only("template", "context").first()
    if notification is None:
        return None
    wiped = sorted(secret_variables(notification.template) - set(notification.context))
    if wiped:
        return (
            f"its secret {', '.join(wiped)} was wiped when it died; the recipient must ask for a new one "
            "(another password reset, say)"
        )
    return None


register_replayer(JOB_NAME, notification_replay, refusal=notification_replay_refusal)


def campaign_batch_replay(dead_letter: DeadLetter) -> None:
    """Replayer of a dead batch: its rows back to scheduled and the batch queued with a fresh run count."""
    batch = CampaignBatch.objects.select_related("campaign").filter(pk=dead_letter.subject_id).first()
    if batch is None:
        raise LookupError(f"campaign batch {dead_letter.subject_id} no longer exists")
    low, high = batch_key_range(batch)
    with transaction.atomic():
        revived = CampaignBatch.objects.filter(pk=batch.pk, status=BatchStatus.DEAD).update(
            status=BatchStatus.QUEUED, unfinished_runs=0, queued_at=Now(), updated_at=Now()
        )
        if not revived:
            return
        Notification.objects.filter(
            pk__gte=low, pk__lte=high, status=NotificationStatus.DEAD, last_error__startswith=DEAD_WITH_BATCH
        ).update(status=NotificationStatus.SCHEDULED, last_error="", updated_at=Now())
        campaign_batch_recount(batch_id=batch.pk)
        if batch.campaign.status == CampaignStatus.COMPLETED:
            # It completed with this batch dead; it has rows to send again.
            Campaign.objects.filter(pk=batch.campaign_id, status=CampaignStatus.COMPLETED).update(
                status=CampaignStatus.RUNNING, finished_at=None, updated_at=Now()
            )
        campaign_batches_publish(batch.campaign, [batch.pk])


register_replayer(BATCH_JOB_NAME, campaign_batch_replay)
