"""`seed_notifications N`: load N synthetic notifications through COPY, a year of traffic, for demos and benchmarks.

Mostly sent marketing campaign rows (keys derived from the campaign, as the fan-out writes them), the rest
transactional and security single sends with idempotency keys and provider message ids; rows go out in
created_at order, so the time index is appended to as in production, and every index stays in place.
"""

import contextlib
import math
import random
import sys
import time
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.utils import timezone

from notifications.counting import campaign_key_prefix
from notifications.management.commands.seed_recipients import positive_int
from notifications.models import (
    Campaign,
    CampaignStatus,
    Channel,
    Notification,
    NotificationStatus,
    Priority,
    Recipient,
)

#: One seeding run at a time (its idempotency keys are numbered from the run's start).
LOCK_KEY = 0x5EED_0002
#: Rows per copy.write(): ~10 MB of text, memory stays flat whatever N is.
CHUNK_ROWS = 40_000
#: A campaign reaches this share of the consenting recipients it could (audiences are tags, locales).
AUDIENCE_SHARE = 0.6
#: Recipients whose addresses the rows use, at most: enough for a realistic spread, small enough to hold in memory.
POOL_LIMIT = 1_000_000
#: Rows younger than this may still be on their way (pending, queued, sending, failed, scheduled).
RECENT = timedelta(days=1)
STATUS = NotificationStatus
#: (status, weight) of campaign rows, and of single sends old and recent.
CAMPAIGN_STATUSES = ((STATUS.SENT, 955), (STATUS.SKIPPED, 30), (STATUS.DEAD, 15))
SINGLE_OLD_STATUSES = ((STATUS.SENT, 960), (STATUS.DEAD, 20), (STATUS.SKIPPED, 10), (STATUS.CANCELLED, 10))
SINGLE_RECENT_STATUSES = (
    (STATUS.SENT, 800),
    (STATUS.DEAD, 20),
    (STATUS.PENDING, 20),
    (STATUS.QUEUED, 40),
    (STATUS.SENDING, 20),
    (STATUS.FAILED, 40),
    (STATUS.SCHEDULED, 50),
    (STATUS.CANCELLED, 10),
)
#: (priority, channel, template, weight) of single sends.
SINGLE_KINDS = (
    (Priority.TRANSACTIONAL, Channel.EMAIL, "order_shipped", 55),
    (Priority.TRANSACTIONAL, Channel.SMS, "order_shipped", 15),
    (Priority.TRANSACTIONAL, Channel.PUSH, "order_shipped", 10),
    (Priority.SECURITY, Channel.EMAIL, "password_reset", 12),
    (Priority.SECURITY, Channel.SMS, "password_reset", 8),
)
PROVIDERS = {Channel.EMAIL: "postmark", Channel.SMS: "twilio", Channel.PUSH: "fcm"}
ERRORS = {
    STATUS.DEAD: "postmark: invalid recipient (422)",
    STATUS.SKIPPED: "consent withdrawn",
    STATUS.FAILED: "postmark: timeout after 10s",
    STATUS.CANCELLED: "cancelled by its cancellation key",
}
COLUMNS = (
    "id",
    "idempotency_key",
    "request_fingerprint",
    "cancellation_key",
    "send_at",
    "priority",
    "channel",
    "recipient_id",
    '"to"',
    "template",
    "context",
    "status",
    "attempts",
    "provider",
    "provider_message_id",
    "last_error",
    "sent_at",
    "outcome_unknown",
    "campaign_id",
    "created_at",
    "updated_at",
)
NULL = r"\N"


class Pool:
    """The recipients the rows go to: ids and addresses, in id order."""

    def __init__(self, rows: list[tuple[int, str | None, str | None, bool]]) -> None:
        self.ids = [row[0] for row in rows]
        self.emails = [row[1] for row in rows]
        self.phones = [row[2] for row in rows]
        #: Positions of recipients a marketing e-mail may go to (consent and an address).
        self.consenting = [i for i, row in enumerate(rows) if row[3] and row[1]]


def weighted(rng: random.Random, table, k: int) -> list:
    values, weights = zip(*[(row[:-1] if len(row) > 2 else row[0], row[-1]) for row in table], strict=True)
    return rng.choices(values, weights=weights, k=k)


class Command(BaseCommand):
    help = "Load N synthetic notifications (a year of campaigns and single sends) quickly with COPY."

    def add_arguments(self, parser) -> None:
        parser.add_argument("count", metavar="N", help="how many notifications to add, e.g. 50000000")
        parser.add_argument("--batch", type=int, default=1_000_000, help="rows per COPY statement (default 1000000)")
        parser.add_argument(
            "--campaign-share",
            type=float,
            default=0.9,
            help="share of the rows that belong to marketing campaigns (default 0.9)",
        )
        parser.add_argument(
            "--recipients",
            type=int,
            default=None,
            help="recipients the rows go to; seeded first if fewer exist (default N/20, between 1,000 and 1,000,000)",
        )
        parser.add_argument("--days", type=int, default=365, help="how far back created_at goes (default 365)")

    def handle(self, *args, count: str, batch: int, campaign_share: float, recipients: int | None, days: int, **_):
        total = positive_int(count, what="notifications", example="50000000")
        if batch < 1:
            raise CommandError("--batch must be at least 1 (default 1000000)")
        if not 0.0 <= campaign_share <= 1.0:
            raise CommandError("--campaign-share must be between 0 and 1, e.g. 0.9")
        if days < 1:
            raise CommandError("--days must be at least 1 (default 365)")
        wanted = recipients if recipients is not None else min(POOL_LIMIT, max(1000, total // 20))
        if not 1 <= wanted <= POOL_LIMIT:
            raise CommandError(f"--recipients must be between 1 and {POOL_LIMIT:,}, e.g. 100000")

        have = Recipient.objects.count()
        if have < wanted:
            self.stdout.write(f"seeding {wanted - have:,} recipients first")
            call_command("seed_recipients", str(wanted - have))
        pool = Pool(
            list(
                Recipient.objects.order_by("pk").values_list("pk", "email", "phone", "email_marketing_consent")[:wanted]
            )
        )
        campaign_rows = round(total * campaign_share) if pool.consenting else 0
        seeder = Seeder(pool=pool, total=total, campaign_rows=campaign_rows, days=days, batch=batch, out=self)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
            try:
                seeder.run(cursor)
            finally:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
        elapsed = time.monotonic() - seeder.started
        self.stdout.write(
            self.style.SUCCESS(
                f"seeded {total:,} notifications ({campaign_rows:,} in {seeder.campaigns_made} campaigns) "
                f"in {elapsed:.1f} s: {total / elapsed:,.0f} rows/s"
            )
        )


class Seeder:
    """Writes the rows in created_at order: each campaign, then the single sends up to the next campaign."""

    def __init__(self, *, pool: Pool, total: int, campaign_rows: int, days: int, batch: int, out: Command) -> None:
        self.pool, self.total, self.batch, self.out = pool, total, batch, out
        self.rng = random.Random()
        self.now = timezone.now()
        self.start = self.now - timedelta(days=days)
        #: Makes this run's idempotency keys and campaign names unique (two runs may start in the same second).
        self.run_id = uuid.uuid4().hex[:10]
        per_campaign = max(1, int(len(pool.consenting) * AUDIENCE_SHARE))
        self.campaigns = math.ceil(campaign_rows / per_campaign) if campaign_rows else 0
        self.campaign_sizes = [campaign_rows // self.campaigns] * self.campaigns if self.campaigns else []
        for i in range(campaign_rows - sum(self.campaign_sizes)):
            self.campaign_sizes[i] += 1
        self.single_rows = total - campaign_rows
        self.campaigns_made = 0
        self.written = 0
        self.pending: list[str] = []
        self.copy = None
        self.started = time.monotonic()

    # --- writing -------------------------------------------------------------------------

    def run(self, cursor) -> None:
        self.cursor = cursor
        slots = max(1, self.campaigns)
        span = (self.now - self.start) / slots
        # Made before the COPY (nothing else may run on its connection meanwhile), counted after it.
        campaigns = Campaign.objects.bulk_create(
            [
                Campaign(
                    name=f"seeded campaign {self.run_id}-{slot + 1}",
                    template="newsletter",
                    channel=Channel.EMAIL,
                    context={"headline": "Seeded", "body": "Hello"},
                    status=CampaignStatus.COMPLETED,
                )
                for slot in range(self.campaigns)
            ]
        )
        self.campaigns_made = len(campaigns)
        outcomes = []
        singles_done = 0
        try:
            self._open()
            for slot in range(slots):
                slot_start = self.start + span * slot
                if slot < self.campaigns:
                    started_at = slot_start + span * 0.1
                    counts = self._campaign(campaigns[slot], self.campaign_sizes[slot], started_at)
                    outcomes.append((campaigns[slot], started_at, counts))
                share = round(self.single_rows * (slot + 1) / slots) - singles_done
                self._singles(share, slot_start, slot_start + span, singles_done)
                singles_done += share
            self._flush()
        except BaseException:
            if self.copy is not None:
                with contextlib.suppress(Exception):
                    self.copy_context.__exit__(*sys.exc_info())
            if connection.in_atomic_block:
                raise  # the caller's transaction rolls all of it back
            # A run stopped midway keeps the COPYs it committed: their campaigns are counted, the others go.
            outcomes = [outcome for outcome in outcomes if outcome[0].pk]
            reached = {campaign.pk for campaign, _, _ in outcomes}
            Campaign.objects.filter(pk__in=[c.pk for c in campaigns if c.pk not in reached]).delete()
            for outcome in outcomes:
                self._record(*outcome)
            raise
        for outcome in outcomes:
            self._record(*outcome)

    def _open(self) -> None:
        sql = f"COPY {Notification._meta.db_table} ({', '.join(COLUMNS)}) FROM STDIN"
        self.copy_context = self.cursor.copy(sql)
        self.copy = self.copy_context.__enter__()
        self.in_copy = 0

    def _emit(self, lines: list[str]) -> None:
        """Write rows; a COPY ends (and commits) every --batch rows, so progress shows and a stop keeps the rest."""
        while lines:
            room = self.batch - self.in_copy
            part, lines = lines[:room], lines[room:]
            self.copy.write("".join(part))
            self.in_copy += len(part)
            self.written += len(part)
            if self.in_copy >= self.batch:
                self._flush()
                if self.written < self.total:
                    self._open()

    def _flush(self) -> None:
        if self.copy is None:
            return
        self.copy_context.__exit__(None, None, None)
        self.copy = None
        elapsed = time.monotonic() - self.started
        self.out.stdout.write(
            f"{self.written:>12,} / {self.total:,} rows  {elapsed:6.1f} s  {self.written / elapsed:>10,.0f} rows/s"
        )

    # --- campaigns -----------------------------------------------------------------------

    def _campaign(self, campaign: Campaign, size: int, started_at: datetime) -> dict[str, int]:
        """One sent e-mail campaign to `size` consenting recipients of the pool, as its fan-out wrote it;
        its rows by status."""
        rng, pool = self.rng, self.pool
        positions = sorted(rng.sample(pool.consenting, size))
        prefix = campaign_key_prefix(campaign.pk)
        message_prefix = f"pm-{campaign.pk:08x}-"
        counts = dict.fromkeys((STATUS.SENT, STATUS.DEAD, STATUS.SKIPPED), 0)
        tail = f"\tf\t{campaign.pk}"
        segment_size = settings.CAMPAIGN_SEGMENT_SIZE
        lowest = pool.ids[0]
        times: dict[int, tuple[str, str]] = {}
        for first in range(0, len(positions), CHUNK_ROWS):
            chunk = positions[first : first + CHUNK_ROWS]
            statuses = weighted(rng, CAMPAIGN_STATUSES, len(chunk))
            lines = []
            for position, status in zip(chunk, statuses, strict=True):
                rid = pool.ids[position]
                segment = (rid - lowest) // segment_size
                if segment not in times:
                    # A segment's rows are written by one INSERT: they share its transaction's now().
                    created = started_at + timedelta(seconds=2 * segment)
                    times[segment] = (created.isoformat(), (created + timedelta(minutes=5)).isoformat())
                created_text, sent_text = times[segment]
                counts[status] += 1
                if status == STATUS.SENT:
                    outcome = f"sent\t1\tpostmark\t{message_prefix}{rid:012x}\t\t{sent_text}"
                else:
                    attempts = 1 if status == STATUS.DEAD else 0
                    outcome = f"{status}\t{attempts}\t\t\t{ERRORS[status]}\t{NULL}"
                lines.append(
                    f"{prefix}8{rid:015x}\t\t\t\t{NULL}\tmarketing\temail\t{rid}\t{pool.emails[position]}\tnewsletter"
                    f"\t{{}}\t{outcome}{tail}\t{created_text}\t{sent_text}\n"
                )
            self._emit(lines)
        counts["segments"] = len(times)
        return counts

    @staticmethod
    def _record(campaign: Campaign, started_at: datetime, counts: dict[str, int]) -> None:
        segments = counts.pop("segments")
        size = sum(counts.values())
        Campaign.objects.filter(pk=campaign.pk).update(
            created_at=started_at - timedelta(hours=1),
            started_at=started_at,
            fanout_completed_at=started_at + timedelta(seconds=size / 100_000),
            finished_at=started_at + timedelta(seconds=size / 1000),
            materialized_count=size,
            segments_total=segments,
            segments_done=segments,
            sent_count=counts[STATUS.SENT],
            dead_count=counts[STATUS.DEAD],
            skipped_count=counts[STATUS.SKIPPED],
        )

    # --- single sends --------------------------------------------------------------------

    def _singles(self, count: int, begin: datetime, end: datetime, numbered_from: int) -> None:
        """`count` transactional and security sends spread over [begin, end), in time order."""
        rng, pool = self.rng, self.pool
        step = (end - begin) / max(1, count)
        recent_from = self.now - RECENT
        for first in range(0, count, CHUNK_ROWS):
            size = min(CHUNK_ROWS, count - first)
            kinds = weighted(rng, SINGLE_KINDS, size)
            positions = [rng.randrange(len(pool.ids)) for _ in range(size)]
            old = weighted(rng, SINGLE_OLD_STATUSES, size)
            recent = weighted(rng, SINGLE_RECENT_STATUSES, size)
            lines = []
            for i in range(size):
                number = numbered_from + first + i
                created = begin + step * (first + i)
                priority, channel, template = kinds[i]
                status = recent[i] if created >= recent_from else old[i]
                position = positions[i]
                rid = pool.ids[position]
                to = pool.emails[position] if channel == Channel.EMAIL else pool.phones[position]
                if channel == Channel.PUSH or not to:
                    channel, to = Channel.PUSH, f"seed-device-{rid}"
                lines.append(self._single_line(number, created, priority, channel, template, status, rid, to))
            self._emit(lines)

    def _single_line(self, number, created, priority, channel, template, status, rid, to) -> str:
        rng = self.rng
        pk = uuid.UUID(int=rng.getrandbits(128), version=4).hex
        created_text = created.isoformat()
        key = f"seed-{self.run_id}-{number}"
        context = '{"code": "000000"}' if template == "password_reset" else '{"order_number": "S-' + str(number) + '"}'
        send_at = (self.now + timedelta(hours=rng.randint(1, 48))).isoformat() if status == STATUS.SCHEDULED else NULL
        provider, message_id, sent_at, attempts, error = "", "", NULL, 0, ERRORS.get(status, "")
        if status == STATUS.SENT:
            provider, message_id, attempts = PROVIDERS[channel], f"{rng.getrandbits(128):032x}", 1
            sent_at = (created + timedelta(milliseconds=300)).isoformat()
        elif status in (STATUS.DEAD, STATUS.FAILED, STATUS.SENDING):
            provider, attempts = PROVIDERS[channel], 1
        return (
            f"{pk}\t{key}\t\t\t{send_at}\t{priority}\t{channel}\t{rid}\t{to}\t{template}\t{context}\t{status}"
            f"\t{attempts}\t{provider}\t{message_id}\t{error}\t{sent_at}\tf\t{NULL}\t{created_text}\t{created_text}\n"
        )
