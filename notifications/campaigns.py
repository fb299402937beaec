"""Campaigns: create, start, pause, resume, cancel, and the set-based fan-out that materialises their notifications.

    start -> segments (ranges of CAMPAIGN_SEGMENT_SIZE recipient ids), one fan-out task per segment
    fan-out task -> INSERT ... SELECT the segment's notifications (status scheduled)
                    + its batches (CAMPAIGN_BATCH_SIZE recipients each), one broker message per batch
    batch task -> claim, check consent / suppression / quiet hours, send under the global
                  rate limit through the provider's batch endpoint (campaign_delivery.py)

A campaign notification's primary key is derived from (campaign, recipient) (counting.py), so rows
are written in key order (cheap inserts), a batch is a key range (no extra index), and
writing a segment twice cannot write a recipient twice.  Counting a batch's outcomes is in
counting.py, below both this module and delivery; the relay of lost batches is in recovery.py.
"""

import logging
import re
import time
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from jobs.publishing import publish_after_commit
from notifications import task_names
from notifications.counting import (
    CANCELLED_REASON,
    batch_key_range,
    campaign_cancel_close,
    campaign_cancelled_rows_skip,
    campaign_finish_if_done,
    campaign_key_prefix,
)
from notifications.inputs import context_check, send_at_problem, text_check
from notifications.models import (
    MARKETING_CONSENT_FIELDS,
    UNSENT_STATUSES,
    BatchStatus,
    Campaign,
    CampaignBatch,
    CampaignSegment,
    CampaignStatus,
    Channel,
    Priority,
    status_events_off,
)
from notifications.partitions import campaign_partition_ensure
from notifications.rendering import render
from settings.topology import FANOUT_QUEUE, queue_name

logger = logging.getLogger(__name__)
#: The notifications' event log (events.py), where the cancel leaves its one record of the rows it skipped.
events_logger = logging.getLogger("notifications.events")


LABEL = re.compile(r"^[A-Za-z0-9_.:-]{1,50}$")


# --- lifecycle ----------------------------------------------------------------------


def campaign_validate(
    *, name: str, template: str, channel: str, context: dict[str, Any], audience_locale: str, audience_tag: str
) -> None:
    """Raise ValidationError (field -> reason) unless a campaign with these values can be sent."""
    errors: dict[str, str] = {}
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        errors["name"] = "1 to 200 characters"
    if channel not in Channel.values:
        errors["channel"] = f"unknown channel {channel!r}; expected one of {', '.join(Channel.values)}"
    if not isinstance(context, dict):
        errors["context"] = "must be a JSON object"
    if audience_locale and not LABEL.match(audience_locale) or len(audience_locale) > 16:
        errors["audience.locale"] = "a locale like 'en' or 'de-CH' (letters, digits, - _ . :), at most 16 characters"
    if audience_tag and not LABEL.match(audience_tag):
        errors["audience.tag"] = "a tag of 1 to 50 letters, digits or - _ . :"
    if errors:
        raise ValidationError(errors)
    text_check(name, path="name")
    context_check(template, context)
    # Every recipient gets the same content; a template that cannot render is refused now.
    render(template=template, channel=channel, context=context)


def campaign_create(
    *,
    name: str,
    template: str,
    channel: str,
    context: dict[str, Any] | None = None,
    audience_locale: str = "",
    audience_tag: str = "",
    created_by=None,
) -> Campaign:
    """A campaign in draft; nothing is sent until `campaign_start`."""
    context = context if context is not None else {}
    campaign_validate(
        name=name,
        template=template,
        channel=channel,
        context=context,
        audience_locale=audience_locale,
        audience_tag=audience_tag,
    )
    return Campaign.objects.create(
        name=name.strip(),
        template=template,
        channel=channel,
        context=context,
        audience_locale=audience_locale,
        audience_tag=audience_tag,
        created_by=created_by,
    )


class CampaignStateError(Exception):
    """The campaign is not in a state that allows this action."""


def _transition(campaign_id: int, allowed: tuple[str, ...], action: str) -> Campaign:
    campaign = Campaign.objects.select_for_update().filter(pk=campaign_id).first()
    if campaign is None:
        raise Campaign.DoesNotExist(f"no campaign {campaign_id}")
    if campaign.status not in allowed:
        raise CampaignStateError(
            f"campaign {campaign.pk} is {campaign.status}; only a {' or '.join(allowed)} campaign can be {action}"
        )
    return campaign


def campaign_start(*, campaign_id: int, send_at=None) -> Campaign:
    """Draft -> running: split the recipient ids into segments and queue one fan-out task each.

    Answers in milliseconds whatever the audience size; the fan-out runs in the workers.
    The audience is the recipients that exist when it starts (ids up to the current maximum).
    With `send_at` in the future: draft -> scheduled, and `campaigns_start_due` starts it then.
    """
    if send_at is not None:
        problem = send_at_problem(send_at)
        if problem:
            raise ValidationError({"send_at": problem})
    with transaction.atomic():
        campaign = _transition(campaign_id, (CampaignStatus.DRAFT,), "started")
        if send_at is not None and send_at > timezone.now():
            campaign.status = CampaignStatus.SCHEDULED
            campaign.send_at = send_at
            campaign.save(update_fields=["status", "send_at", "updated_at"])
            logger.info("campaign %s scheduled for %s", campaign.pk, send_at.isoformat())
            return campaign
        _start(campaign)
    return campaign


def campaigns_start_due() -> int:
    """Start the scheduled campaigns whose send_at has come; how many."""
    started = 0
    while True:
        with transaction.atomic():
            campaign = (
                Campaign.objects.select_for_update(skip_locked=True)
                .filter(status=CampaignStatus.SCHEDULED, send_at__lte=Now())
                .order_by("send_at")
                .first()
            )
            if campaign is None:
                return started
            _start(campaign)
        started += 1


def _start(campaign: Campaign) -> None:
    """Write the segments of a campaign locked by the caller and queue their fan-out after commit."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT min(id), max(id) FROM notifications_recipient")
        low, high = cursor.fetchone()
        segment_ids: list[int] = []
        if low is not None:
            cursor.execute(
                """
                INSERT INTO notifications_campaignsegment
                    (campaign_id, first_recipient_id, last_recipient_id, queued_at, materialized_count)
                SELECT %s, s, LEAST(s + %s - 1, %s), %s, 0 FROM generate_series(%s::bigint, %s::bigint, %s) s
                RETURNING id
                """,
                [campaign.pk, settings.CAMPAIGN_SEGMENT_SIZE, high, now, low, high, settings.CAMPAIGN_SEGMENT_SIZE],
            )
            segment_ids = [row[0] for row in cursor.fetchall()]
    segments = len(segment_ids)
    campaign.status = CampaignStatus.RUNNING
    campaign.started_at = now
    campaign.segments_total = segments
    if segments == 0:
        campaign.fanout_completed_at = now
        campaign.status = CampaignStatus.COMPLETED
        campaign.finished_at = now
    campaign.save()
    for segment_id in segment_ids:
        publish_after_commit(task_names.CAMPAIGN_FANOUT, args=[segment_id], queue=FANOUT_QUEUE, background=True)
    logger.info("campaign %s started: %s fan-out segment(s)", campaign.pk, segments)


def campaign_pause(*, campaign_id: int) -> Campaign:
    """Running -> paused.  Workers check the status before every provider call, so sending stops within a call."""
    with transaction.atomic():
        campaign = _transition(campaign_id, (CampaignStatus.RUNNING,), "paused")
        campaign.status = CampaignStatus.PAUSED
        campaign.save(update_fields=["status", "updated_at"])
    logger.info("campaign %s paused", campaign.pk)
    return campaign


def campaign_pause_with_error(*, campaign_id: int, error: str) -> None:
    """A worker found the campaign cannot be sent (its template no longer renders): pause it with the reason."""
    paused = Campaign.objects.filter(pk=campaign_id, status=CampaignStatus.RUNNING).update(
        status=CampaignStatus.PAUSED, last_error=error[:2000], updated_at=timezone.now()
    )
    if paused:
        logger.error("campaign %s paused: %s", campaign_id, error)


def campaign_resume(*, campaign_id: int) -> Campaign:
    """Paused -> running: the batches that were handed back while paused are queued again."""
    with transaction.atomic():
        campaign = _transition(campaign_id, (CampaignStatus.PAUSED,), "resumed")
        campaign.status = CampaignStatus.RUNNING
        campaign.last_error = ""
        campaign.save(update_fields=["status", "last_error", "updated_at"])
        batch_ids = list(
            CampaignBatch.objects.filter(campaign=campaign, status=BatchStatus.PAUSED).values_list("pk", flat=True)
        )
        CampaignBatch.objects.filter(pk__in=batch_ids).update(
            status=BatchStatus.QUEUED, queued_at=timezone.now(), updated_at=timezone.now()
        )
        campaign_batches_publish(campaign, batch_ids, background=True)
    logger.info("campaign %s resumed: %s batch(es) queued again", campaign.pk, len(batch_ids))
    # Everything may have finished while it was paused (the last rows were in flight): nothing
    # would come back to complete it.
    campaign_finish_if_done(campaign_id=campaign.pk)
    return campaign


def campaign_cancel(*, campaign_id: int) -> Campaign:
    """Draft, scheduled, running or paused -> cancelled: nothing more is sent, and every unsent row is skipped for
    every reader at once.

    From the commit on, no row of it is sent: a batch claims rows only while its campaign is running (one
    statement checks both), a worker holding rows checks before every provider call, and the single-send claim
    skips a row the rule names (models.cancelled_unsent_sql).  Right after the commit, one statement closes its
    open batches and counts their unsent rows as skipped (counting.campaign_cancel_close: by the batches' counters,
    10,000 batches in well under a second, not 5 M rows), and its few rows on the single-send path are written
    skipped; its counters are then final, but for the rows a worker holds, which end through their normal path.
    The rows are rewritten afterwards by the paced `campaign_cancel_sweep`.  Closing after the commit, not under the
    campaign's lock, keeps the lock order of every path that counts (batch, then campaign): a worker ending a run
    holds its batch and waits for the campaign.
    """
    with transaction.atomic():
        campaign = _transition(
            campaign_id,
            (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED, CampaignStatus.RUNNING, CampaignStatus.PAUSED),
            "cancelled",
        )
        started = campaign.status in (CampaignStatus.RUNNING, CampaignStatus.PAUSED)
        campaign.status = CampaignStatus.CANCELLED
        campaign.finished_at = timezone.now()
        campaign.save(update_fields=["status", "finished_at", "updated_at"])
    logger.info("campaign %s cancelled", campaign.pk)
    if started:
        campaign_cancel_count(campaign_id=campaign.pk)
        campaign.refresh_from_db()
    return campaign


def campaign_cancel_count(*, campaign_id: int, background: bool = True) -> tuple[int, int]:
    """Make a cancelled campaign's counters final: close its open batches, write its rows on the single-send path
    skipped, and queue the sweep that rewrites the rest (`background`: from a web request); (batches closed, rows
    counted).  Idempotent: the relay calls it again for a cancelled campaign whose open batches outlived a grace
    (the cancel's process died)."""
    with transaction.atomic():
        batches, rows = campaign_cancel_close(campaign_id=campaign_id)
        publish_after_commit(task_names.CAMPAIGN_SWEEP, args=[campaign_id], queue=FANOUT_QUEUE, background=background)
    strays = campaign_cancelled_rows_skip(campaign_id=campaign_id)
    if not (batches or strays):
        return 0, 0
    # The campaign's one record of the rows it skipped: they write no event each (see campaign_cancel_sweep).
    events_logger.info(
        "campaign %s cancelled: %s unsent row(s) of %s batch(es) and %s on the single-send path counted as skipped",
        campaign_id,
        rows,
        batches,
        strays,
        extra={"event": {"campaign_id": campaign_id, "outcome": "campaign_cancelled", "skipped": rows + strays}},
    )
    return batches, rows + strays


#: The unsent rows of a cancelled campaign's closed batches (already counted as skipped), rewritten; one whose outcome
#: is unknown is left to the single-send path, which asks its vendor first (models.cancelled_unsent_sql).  Each batch's
#: key range is read on its own (LATERAL, kept apart by OFFSET 0), so the plan is a primary-key range scan per batch
#: whatever the statistics say: right after a fan-out they may still describe the table before it, and a join of the
#: ranges then read every row of the table for each batch (more than 25 s a transaction at 1 M rows, in the bench).
_SWEEP_SQL = """
UPDATE notifications_notification n SET status = 'skipped', last_error = %(reason)s, next_attempt_at = NULL,
    updated_at = statement_timestamp()
FROM (
    SELECT x.id FROM unnest(%(low)s::uuid[], %(high)s::uuid[]) AS r(low, high)
    CROSS JOIN LATERAL (
        SELECT m.id FROM notifications_notification m
        WHERE m.id BETWEEN r.low AND r.high AND m.status = ANY(%(unsent)s) AND NOT m.outcome_unknown
            -- Every range at once, as constants: this read is planned on the campaign's leaf alone
            -- (notifications/partitions.py).  Not on the UPDATE's own rows: on a leaf just written, with no
            -- statistics yet, the planner would take them for one row and loop over the ranges for each of them.
            AND m.id BETWEEN %(lowest)s AND %(highest)s OFFSET 0
    ) x
) unsent
WHERE n.id = unsent.id AND n.status = ANY(%(unsent)s) AND NOT n.outcome_unknown
"""


def campaign_cancel_sweep(*, campaign_id: int) -> bool:
    """Rewrite the unsent rows of a cancelled campaign's closed batches as skipped, CAMPAIGN_SWEEP_BATCHES batches
    per transaction, resting CAMPAIGN_SWEEP_PAUSE_RATIO times each one's duration, for at most
    CAMPAIGN_SWEEP_SECONDS (then it hands back: True when nothing is left).

    Nothing a reader sees changes: the rule (models.cancelled_unsent_sql) showed and counted these rows as skipped
    from the cancel on, so no batch is recounted.  No event is written per row either: 5 M `skipped` events, and
    their webhook deliveries (hours of them, ahead of other notifications' events), would say nothing the campaign
    does not say once (its status, counters and the cancel's log record), about rows no client ever heard of.
    Rows a worker held at the cancel end through their normal path, with their events.
    """
    deadline = time.monotonic() + settings.CAMPAIGN_SWEEP_SECONDS
    while time.monotonic() < deadline:
        began = time.monotonic()
        with transaction.atomic():
            if not Campaign.objects.filter(pk=campaign_id, status=CampaignStatus.CANCELLED).exists():
                return True
            batches = list(
                CampaignBatch.objects.select_for_update(skip_locked=True)
                .filter(campaign_id=campaign_id, status=BatchStatus.CANCELLED)
                .order_by("first_recipient_id")[: settings.CAMPAIGN_SWEEP_BATCHES]
            )
            if not batches:
                return True
            ranges = [batch_key_range(batch) for batch in batches]
            with connection.cursor() as cursor, status_events_off(cursor):
                cursor.execute(
                    _SWEEP_SQL,
                    {
                        "reason": CANCELLED_REASON,
                        "low": [lo for lo, _ in ranges],
                        "high": [hi for _, hi in ranges],
                        "lowest": min(lo for lo, _ in ranges),
                        "highest": max(hi for _, hi in ranges),
                        "unsent": list(UNSENT_STATUSES),
                    },
                )
                skipped = cursor.rowcount
            CampaignBatch.objects.filter(pk__in=[batch.pk for batch in batches]).update(
                status=BatchStatus.DONE, updated_at=Now()
            )
        # Its heartbeat: the relay publishes a sweep again only for a campaign no sweep touched for a while.
        Campaign.objects.filter(pk=campaign_id).update(updated_at=Now())
        took = time.monotonic() - began
        logger.info(
            "campaign %s cancelled: %s row(s) of %s batch(es) written skipped in %.2fs",
            campaign_id,
            skipped,
            len(batches),
            took,
        )
        time.sleep(min(took * settings.CAMPAIGN_SWEEP_PAUSE_RATIO, max(0.0, deadline - time.monotonic())))
    publish_after_commit(task_names.CAMPAIGN_SWEEP, args=[campaign_id], queue=FANOUT_QUEUE)
    return False


def campaign_batches_publish(campaign: Campaign, batch_ids: list[int], *, background: bool = False) -> None:
    """Queue one message per batch once the current transaction commits (`background`: for web requests)."""
    queue = queue_name(Priority.MARKETING, campaign.channel)
    for batch_id in batch_ids:
        publish_after_commit(task_names.CAMPAIGN_BATCH, args=[batch_id], queue=queue, background=background)


# --- fan-out ----------------------------------------------------------------------

_FANOUT_SQL = """
WITH chosen AS MATERIALIZED (
    SELECT r.id, {address} AS address
    FROM notifications_recipient r
    WHERE r.id BETWEEN %(first)s AND %(last)s
      AND r.{consent}
      AND {address} IS NOT NULL AND {address} <> ''
      {audience}
),
written AS (
    INSERT INTO notifications_notification
        (id, idempotency_key, request_fingerprint, cancellation_key, priority, channel, recipient_id, "to", template,
         context, status, attempts, provider, provider_message_id, last_error, outcome_unknown, campaign_id,
         created_at, updated_at)
    SELECT (%(prefix)s || '8' || lpad(to_hex(c.id), 15, '0'))::uuid, '', '', '', %(priority)s, %(channel)s, c.id,
           c.address, %(template)s, '{{}}'::jsonb, 'scheduled', 0, '', '', '', false, %(campaign)s, %(now)s, %(now)s
    FROM chosen c
    {on_conflict}
    RETURNING 1
),
bounds AS (
    SELECT min(id) AS first_id, max(id) AS last_id, count(*) AS size
    FROM (SELECT id, (row_number() OVER (ORDER BY id) - 1) / %(batch_size)s AS batch FROM chosen) numbered
    GROUP BY batch
),
batches AS (
    INSERT INTO notifications_campaignbatch
        (campaign_id, first_recipient_id, last_recipient_id, size, status, runs, unfinished_runs, sent_count,
         dead_count, skipped_count, queued_at, updated_at)
    SELECT %(campaign)s, first_id, last_id, size, 'queued', 0, 0, 0, 0, 0, %(now)s, %(now)s FROM bounds
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT (SELECT count(*) FROM written), (SELECT coalesce(array_agg(id ORDER BY id), '{{}}') FROM batches)
"""

_PUSH_ADDRESS = (
    "(SELECT d.token FROM notifications_pushdevice d WHERE d.recipient_id = r.id ORDER BY d.created_at DESC LIMIT 1)"
)


def campaign_fanout_segment(*, segment_id: int) -> int:
    """Write one segment's notifications and batches in one transaction, then queue the batches.

    Returns the number of notifications written.  A segment already written (a message
    delivered twice) or being written by another worker is left alone.
    """
    now = timezone.now()
    if segment_campaign := CampaignSegment.objects.filter(pk=segment_id).values_list("campaign_id", flat=True).first():
        # Outside the segment's transaction: adding a leaf takes locks that transaction should not hold.
        campaign_partition_ensure(campaign_id=segment_campaign)
    with transaction.atomic():
        segment = (
            # of=self: locking the joined campaign row too would make concurrent segments skip each other.
            CampaignSegment.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(pk=segment_id, done_at__isnull=True)
            .select_related("campaign")
            .first()
        )
        if segment is None:
            return 0
        campaign = segment.campaign
        written, batch_ids = 0, []
        if campaign.status != CampaignStatus.CANCELLED:
            written, batch_ids = _materialise(campaign, segment, now)
        segment.done_at = now
        segment.materialized_count = written
        segment.save(update_fields=["done_at", "materialized_count"])
        Campaign.objects.filter(pk=campaign.pk).update(
            materialized_count=F("materialized_count") + written,
            segments_done=F("segments_done") + 1,
            updated_at=now,
        )
        Campaign.objects.filter(pk=campaign.pk, segments_done__gte=F("segments_total")).update(fanout_completed_at=now)
        # The campaign row is locked now (the update above): a cancel that came while the rows were written has
        # committed, and its close could not see these batches; they are closed here, in the same transaction.
        if batch_ids and Campaign.objects.filter(pk=campaign.pk, status=CampaignStatus.CANCELLED).exists():
            campaign_cancel_close(campaign_id=campaign.pk, batch_ids=batch_ids)
            batch_ids = []
        campaign_batches_publish(campaign, batch_ids)
    logger.info(
        "campaign %s segment %s..%s: %s notification(s), %s batch(es)",
        campaign.pk,
        segment.first_recipient_id,
        segment.last_recipient_id,
        written,
        len(batch_ids),
    )
    campaign_finish_if_done(campaign_id=campaign.pk)
    return written


def _materialise(campaign: Campaign, segment: CampaignSegment, now) -> tuple[int, list[int]]:
    address = {Channel.EMAIL: "r.email", Channel.SMS: "r.phone", Channel.PUSH: _PUSH_ADDRESS}[campaign.channel]
    audience, params = "", {}
    if campaign.audience_locale:
        audience += " AND r.locale = %(locale)s"
        params["locale"] = campaign.audience_locale
    if campaign.audience_tag:
        # Muted topics are left out here only to write fewer rows; the send-time check decides (consent.py).
        audience += (
            " AND r.tags @> ARRAY[%(tag)s]::varchar(50)[] AND NOT r.muted_topics @> ARRAY[%(tag)s]::varchar(50)[]"
        )
        params["tag"] = campaign.audience_tag
    parts = {"address": address, "consent": MARKETING_CONSENT_FIELDS[campaign.channel], "audience": audience}
    params.update(
        first=segment.first_recipient_id,
        last=segment.last_recipient_id,
        prefix=campaign_key_prefix(campaign.pk),
        priority=Priority.MARKETING.value,
        channel=campaign.channel,
        template=campaign.template,
        campaign=campaign.pk,
        now=now,
        batch_size=settings.CAMPAIGN_BATCH_SIZE,
    )
    # A segment is written once (its row is locked and marked done in the same transaction), so its rows cannot
    # exist yet: the insert skips the conflict checks of ON CONFLICT, a sixth of its time.  Should they exist all
    # the same, the segment is written again with them, skipping what is there.
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_FANOUT_SQL.format(on_conflict="", **parts), params)
            written, batch_ids = cursor.fetchone()
    except IntegrityError:
        logger.warning("campaign %s segment %s: rows already written; writing the rest", campaign.pk, segment.pk)
        with connection.cursor() as cursor:
            cursor.execute(_FANOUT_SQL.format(on_conflict="ON CONFLICT DO NOTHING", **parts), params)
            written, batch_ids = cursor.fetchone()
    return written, list(batch_ids)
