"""The notification domain's tables: recipients, push devices, notifications (also the outbox), campaigns,
their batches, suppressed addresses and API tokens."""

import hashlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.db import connection, models
from django.db.models import BooleanField, CharField, Q
from django.db.models.expressions import RawSQL

from jobs.ids import uuid7

# The vocabulary is the topology's (defined once there); the models use it for their choices.
from settings.topology import Channel, Priority, queue_name  # noqa: F401

#: The marketing-consent field of each channel (a column name, so also safe in raw SQL).
MARKETING_CONSENT_FIELDS = {
    Channel.EMAIL: "email_marketing_consent",
    Channel.SMS: "sms_marketing_consent",
    Channel.PUSH: "push_marketing_consent",
}


class Recipient(models.Model):
    email = models.EmailField(max_length=254, null=True, blank=True, unique=True)
    phone = models.CharField(max_length=16, null=True, blank=True, unique=True, help_text="E.164, e.g. +14155550100")
    locale = models.CharField(max_length=16, default="en")
    timezone = models.CharField(max_length=64, default="UTC")
    email_marketing_consent = models.BooleanField(default=False)
    sms_marketing_consent = models.BooleanField(default=False)
    push_marketing_consent = models.BooleanField(default=False)
    #: Free-form labels that campaign audiences select on (`tags__contains=["vip"]`).
    tags = ArrayField(models.CharField(max_length=50), default=list, blank=True)
    #: Topics (campaign audience tags) the recipient asked not to hear about, on any channel (preference centre).
    # Database defaults too: COPY seeding and the harness insert recipients without naming these columns.
    muted_topics = ArrayField(models.CharField(max_length=50), default=list, db_default=[], blank=True)
    #: Their own marketing quiet hours: "" = the platform's MARKETING_QUIET_HOURS, "none", or "21-8" (local time).
    quiet_hours = models.CharField(max_length=5, blank=True, default="", db_default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            # Audience queries ask "has this tag" (@>, &&) across millions of rows;
            # only GIN answers containment on an array without a full scan.
            GinIndex(fields=["tags"], name="recipient_tags_gin_idx"),
        ]

    def __str__(self) -> str:
        return self.email or self.phone or f"recipient {self.pk}"

    def address_for(self, channel: str) -> str | None:
        if channel == Channel.EMAIL:
            return self.email
        if channel == Channel.SMS:
            return self.phone
        device = self.push_devices.order_by("-created_at").first()
        return device.token if device else None


class PushDevice(models.Model):
    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="push_devices")
    token = models.CharField(max_length=512, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.token[:16]}…"


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "pending (written, not yet published)"
    QUEUED = "queued", "queued (published to its queue)"
    SENDING = "sending", "sending (claimed by a worker)"
    SENT = "sent", "sent (accepted by a provider)"
    FAILED = "failed", "failed (waiting for its next attempt)"
    DEAD = "dead", "dead (in the dead-letter table)"
    #: Campaign rows wait here, outside the relay's index, until their batch sends them; a single
    #: notification with a send_at waits here until then (release_scheduled publishes it).
    SCHEDULED = "scheduled", "scheduled (waiting for its send_at, or for its campaign batch)"
    SKIPPED = "skipped", "skipped (consent withdrawn, address suppressed or campaign cancelled)"
    CANCELLED = "cancelled", "cancelled (by its id or cancellation key, before a worker took it)"


#: A row in one of these is neither sent nor final nor in a worker's hands ("sending").
UNSENT_STATUSES = ("scheduled", "pending", "queued", "failed")
#: A row in one of these is done with and may go when its keeping time is up (a dead one follows its dead letter's).
PRUNABLE_STATUSES = ("sent", "skipped", "cancelled")
#: What every reader and counter sees instead of the stored status of a row its campaign's cancel took (below).
CANCELLED_UNSENT_STATUS = "skipped"


def cancelled_unsent_sql(n: str = "n") -> str:
    """THE rule of a cancelled campaign's unsent rows, as SQL on the notification table aliased `n`: true for a row
    nobody sent and no worker holds whose campaign is cancelled.  A row whose last call may have reached its vendor
    (outcome unknown: a timeout, a worker that died mid-call) is not one: the single-send path asks the vendors that
    can tell before it is skipped, and it counts as whatever they answer.

    From the cancel's commit on, such a row is skipped for every reader (API, admin, counters, retention) and no
    claim takes it, though its stored status changes later: rewriting millions of rows takes minutes, so the
    cancel closes the campaign's batches and counts their rows at once, and a paced sweep rewrites the rows after
    (campaigns.py).  Cheap anywhere: a row of no campaign never reaches the subquery, which PostgreSQL runs once
    per statement (a hashed SubPlan over the campaign table, not a lookup per row).
    """
    statuses = ", ".join(f"'{status}'" for status in UNSENT_STATUSES)
    # Bandit B608: an alias and constants of this module, no value from outside.
    return (
        f"({n}.campaign_id IS NOT NULL AND {n}.status IN ({statuses}) AND NOT {n}.outcome_unknown AND "  # nosec B608
        f"{n}.campaign_id IN (SELECT cc.id FROM notifications_campaign cc WHERE cc.status = 'cancelled'))"
    )


def shown_status_sql(n: str = "n") -> str:
    """A notification's status as every reader sees it: the stored one, or skipped under the rule above."""
    return f"(CASE WHEN {cancelled_unsent_sql(n)} THEN '{CANCELLED_UNSENT_STATUS}' ELSE {n}.status END)"


def cancelled_unsent() -> Q:
    """The rule above as an ORM condition on the notifications (the same SQL, on the table's own name)."""
    # Bandit B611: the rule's own SQL, no value from outside.
    return Q(RawSQL(cancelled_unsent_sql("notifications_notification"), [], output_field=BooleanField()))  # nosec B611


class NotificationQuerySet(models.QuerySet):
    def with_shown_status(self) -> "NotificationQuerySet":
        """Each row with `shown_status`: what the API and the admin say."""
        return self.annotate(
            # Bandit B611: the rule's own SQL, no value from outside.
            shown_status=RawSQL(  # nosec B611
                shown_status_sql("notifications_notification"), [], output_field=CharField()
            )
        )

    def shown_status(self, status: str) -> "NotificationQuerySet":
        """The rows whose shown status is `status` (the admin's filter): skipped takes the cancelled campaigns'
        unsent rows in, an unsent status leaves them out.  Each stays a condition on the stored status, so the
        partial indexes on it still serve the query."""
        if status == CANCELLED_UNSENT_STATUS:
            return self.filter(Q(status=status) | cancelled_unsent())
        if status in UNSENT_STATUSES:
            return self.filter(status=status).exclude(cancelled_unsent())
        return self.filter(status=status)


class Notification(models.Model):
    """One message to one recipient on one channel.

    The row is written before anything is published, so it is also the outbox: a
    row still pending or queued after a while was never picked up and is published again.
    """

    #: Time-ordered (jobs.ids.uuid7): a week of single sends is a range of ids, one leaf of the table
    #: (notifications/partitions.py); a campaign row's encodes its campaign and recipient instead (counting.py).
    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    #: The caller's key (API Idempotency-Key, scoped per user); campaign rows have none, their
    #: primary key is unique per (campaign, recipient) already.  See `delivery_key`.
    idempotency_key = models.CharField(max_length=255, blank=True, default="")
    #: Hash of the request that created the row, so a key reused for a different request is refused.
    request_fingerprint = models.CharField(max_length=64, blank=True, default="")
    #: The caller's label for cancelling it (and every other notification with the same label) before it goes.
    cancellation_key = models.CharField(max_length=255, blank=True, default="", db_default="")
    #: Not before this moment: the row waits as scheduled in PostgreSQL until the release publishes it.
    send_at = models.DateTimeField(null=True, blank=True)
    priority = models.CharField(max_length=16, choices=Priority.choices)
    channel = models.CharField(max_length=8, choices=Channel.choices)
    # Indexed by notif_recipient_idx (recipient, -created_at); a second index would slow every insert.
    # No database constraint: its per-row check was a quarter of a campaign fan-out's insert time.
    # Django's collector still enforces PROTECT (a recipient with notifications cannot be deleted).
    recipient = models.ForeignKey(
        Recipient, on_delete=models.PROTECT, related_name="notifications", db_index=False, db_constraint=False
    )
    #: The address the message goes to, fixed at submit time.
    to = models.CharField(max_length=512)
    template = models.CharField(max_length=100)
    context = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=NotificationStatus.choices, default=NotificationStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    provider = models.CharField(max_length=64, blank=True, default="")
    provider_message_id = models.CharField(max_length=255, blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    # As for recipient: the collector applies SET_NULL; a per-row check would cost every campaign row.
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    #: While sending, the moment after which another worker may take the row over (PostgreSQL's clock).
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    #: Set by each claim: only the worker holding it may record the outcome of that attempt.
    claim_token = models.UUIDField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    #: While failed: when the relay publishes it again.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    first_failed_at = models.DateTimeField(null=True, blank=True)
    #: Where the retry budget (JOBS_RETRY_POLICIES budget_seconds) runs from when it is not the
    #: submit: a campaign row's first failure (it may wait hours for its turn), an operator's replay.
    retry_budget_from = models.DateTimeField(null=True, blank=True)
    #: The last provider may have accepted it (timeout after sending): the next attempt
    #: goes to that provider first, with the same idempotency key.
    outcome_unknown = models.BooleanField(default=False)
    #: The campaign that materialised this row; its pk encodes (campaign, recipient), see campaigns.py.
    # No index and no database constraint: a per-row constraint check would halve the fan-out's
    # insert rate, and a campaign's rows are found by primary-key range (see campaigns.py).
    # Started campaigns are never deleted (the admin refuses).
    campaign = models.ForeignKey(
        "Campaign",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        related_name="notifications",
        db_index=False,
        db_constraint=False,
    )
    updated_at = models.DateTimeField(auto_now=True)

    objects = NotificationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        #: Sending is a permission per priority, on top of add_notification (API and admin alike).
        permissions = [(f"send_{p}", f"Can send {p} notifications") for p in Priority.values]
        indexes = [
            # The admin's default list and its filters.
            models.Index(fields=["-created_at"], name="notif_created_idx"),
            # Not for scheduled campaign rows: millions of entries nobody filters on (a campaign's rows
            # are found by key range), and a planner with stale statistics would scan them.
            models.Index(
                fields=["status", "priority", "channel"],
                name="notif_status_prio_chan_idx",
                condition=~Q(status="scheduled"),
            ),
            models.Index(fields=["recipient", "-created_at"], name="notif_recipient_idx"),
            # The admin's "scheduled" filter, newest first: scheduled rows are rare in the statistics (a campaign's
            # leave within hours), and without this index the planner read all 50 M rows for them.  It costs the
            # fan-out one more entry per row, appended (a segment's rows share their created_at); measured in the
            # README (Benchmarks, the admin).
            models.Index(fields=["-created_at"], name="notif_scheduled_idx", condition=Q(status="scheduled")),
            # The relay scans only unfinished rows, one priority at a time (security first); a
            # partial index keeps that scan small when the table holds millions of sent notifications.
            models.Index(
                fields=["priority", "status", "updated_at"],
                name="notif_unfinished_prio_idx",
                condition=Q(status__in=["pending", "queued", "sending"]),
            ),
            models.Index(
                fields=["priority", "next_attempt_at"],
                name="notif_retry_due_prio_idx",
                condition=Q(status="failed"),
            ),
            # The API's "my notifications" filter; campaign rows (millions, no creator) stay out.
            models.Index(fields=["created_by"], name="notif_created_by_idx", condition=Q(created_by__isnull=False)),
            # A provider's report finds its notification by the provider's message id (receipts.py).
            models.Index(
                fields=["provider_message_id"], name="notif_provider_msg_idx", condition=~Q(provider_message_id="")
            ),
            # The release of scheduled notifications takes the due ones in send_at order; campaign rows
            # (scheduled too, without a send_at) stay out.
            models.Index(
                fields=["send_at"], name="notif_send_at_due_idx", condition=Q(status="scheduled", send_at__isnull=False)
            ),
            models.Index(
                fields=["cancellation_key"], name="notif_cancellation_key_idx", condition=~Q(cancellation_key="")
            ),
            # The caller's key, unique per leaf only (a partitioned table's unique index must hold its key):
            # submit checks it under an advisory lock of the key (services.notification_send).
            models.Index(
                fields=["idempotency_key"], name="notif_idempotency_key_idx", condition=~Q(idempotency_key="")
            ),
        ]

    def __str__(self) -> str:
        return f"{self.priority}/{self.channel} {self.template} to {self.to} ({self.status})"

    @property
    def queue(self) -> str:
        return queue_name(self.priority, self.channel)

    @property
    def delivery_key(self) -> str:
        """The idempotency key sent to providers: the caller's key, else one derived from the id."""
        return self.idempotency_key or f"notification:{self.pk}"


class CampaignStatus(models.TextChoices):
    DRAFT = "draft"
    #: Started with a send_at in the future: the release starts it then.
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    COMPLETED = "completed"


class Campaign(models.Model):
    """One marketing message to an audience: every recipient with marketing consent for the
    channel, optionally narrowed to a locale and a tag.  The counters are the sums of the
    batches' counters, updated in the transaction that recounts a batch."""

    name = models.CharField(max_length=200)
    template = models.CharField(max_length=100)
    channel = models.CharField(max_length=8, choices=Channel.choices, default=Channel.EMAIL)
    context = models.JSONField(default=dict, blank=True)
    audience_locale = models.CharField(max_length=16, blank=True, default="", help_text="Only this locale (optional).")
    audience_tag = models.CharField(max_length=50, blank=True, default="", help_text="Only this tag (optional).")
    status = models.CharField(max_length=16, choices=CampaignStatus.choices, default=CampaignStatus.DRAFT)
    #: Notifications written so far; final once fanout_completed_at is set.
    materialized_count = models.BigIntegerField(default=0)
    sent_count = models.BigIntegerField(default=0)
    dead_count = models.BigIntegerField(default=0)
    skipped_count = models.BigIntegerField(default=0)
    #: The fan-out splits the recipient ids into segments written in parallel (CampaignSegment).
    segments_total = models.PositiveIntegerField(default=0)
    segments_done = models.PositiveIntegerField(default=0)
    fanout_completed_at = models.DateTimeField(null=True, blank=True)
    #: Why a worker paused it (e.g. its template no longer renders); cleared on resume.
    last_error = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    #: While scheduled: when the release starts it.
    send_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"

    @property
    def done_count(self) -> int:
        return self.sent_count + self.dead_count + self.skipped_count

    @property
    def remaining_count(self) -> int:
        return max(0, self.materialized_count - self.done_count)


class CampaignSegment(models.Model):
    """A range of recipient ids whose notifications one fan-out task writes (set-based) and splits into batches."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="segments")
    first_recipient_id = models.BigIntegerField()
    last_recipient_id = models.BigIntegerField()
    queued_at = models.DateTimeField(null=True, blank=True)
    #: Set in the transaction that wrote the segment's rows, so a segment is written once.
    done_at = models.DateTimeField(null=True, blank=True)
    materialized_count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "first_recipient_id"], name="campaign_segment_unique_start")
        ]

    def __str__(self) -> str:
        return f"campaign {self.campaign_id} segment {self.first_recipient_id}..{self.last_recipient_id}"


class BatchStatus(models.TextChoices):
    QUEUED = "queued", "queued (its message is in the broker)"
    SENDING = "sending", "sending (a worker holds it)"
    DEFERRED = "deferred", "deferred (quiet hours or rate limit; the relay publishes it when due)"
    PAUSED = "paused", "paused (published again on resume)"
    DONE = "done"
    #: Closed by its campaign's cancel: its unsent rows are counted as skipped already; the sweep rewrites them.
    CANCELLED = "cancelled", "cancelled (its rows count as skipped; the sweep marks them)"
    #: Its runs kept dying (CAMPAIGN_BATCH_MAX_RUNS): dead-lettered with its unsent rows; a replay revives both.
    DEAD = "dead", "dead (in the dead-letter table with its unsent rows)"


#: A batch in one of these waits for a worker to take it (no worker holds it, its rows are not all final).
OPEN_BATCH_STATUSES = (BatchStatus.QUEUED, BatchStatus.DEFERRED, BatchStatus.PAUSED)


@contextmanager
def status_events_off(cursor) -> Iterator[None]:
    """The statements inside write no per-row status event (the trigger of migrations 0011/0013 reads this setting
    since 0016): for the rows a campaign's cancel skips, whose record is the campaign's (campaigns.py)."""
    cursor.execute("SELECT set_config('notifications.status_events', 'off', true)")
    yield
    cursor.execute("SELECT set_config('notifications.status_events', 'on', true)")


#: How a batch deferred for quiet hours begins its reason (then the zones in them); campaign_waiting reads it.
QUIET_HOURS_REASON = "quiet hours"


class CampaignBatch(models.Model):
    """A chunk of a campaign: the recipients first..last (by id); one broker message points at it.

    The row, not the message, is the record: a lost message is published again by the relay.
    """

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="batches")
    first_recipient_id = models.BigIntegerField()
    last_recipient_id = models.BigIntegerField()
    size = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=BatchStatus.choices, default=BatchStatus.QUEUED)
    #: The batch's rows by outcome, recounted from the rows (campaign_batch_recount); the
    #: campaign's counters are their sum, so workers never contend on the campaign row per send.
    sent_count = models.PositiveIntegerField(default=0)
    dead_count = models.PositiveIntegerField(default=0)
    skipped_count = models.PositiveIntegerField(default=0)
    runs = models.PositiveIntegerField(default=0)
    #: Runs in a row that did not end (the worker died, the task raised); reset by every run that ends.
    #: After CAMPAIGN_BATCH_MAX_RUNS the batch is dead-lettered instead of running for ever.
    unfinished_runs = models.PositiveIntegerField(default=0)
    queued_at = models.DateTimeField(null=True, blank=True)
    #: While sending: when another worker may take it over (PostgreSQL's clock), and the holder's token.
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    claim_token = models.UUIDField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    #: While deferred, why: "quiet hours: <the zones in them>", or the providers' answer ("postmark: circuit open",
    #: "postmark: global rate limit, next token in 0.40s").  The campaign list says it (campaign_waiting).
    # A database default too: the fan-out's INSERT (campaigns._FANOUT_SQL) names its columns and leaves this one out.
    reason = models.TextField(blank=True, default="", db_default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "first_recipient_id"], name="campaign_batch_unique_start")
        ]
        indexes = [
            models.Index(
                fields=["status", "updated_at"],
                name="campaign_batch_open_idx",
                condition=~Q(status="done"),
            ),
        ]

    def __str__(self) -> str:
        return f"campaign {self.campaign_id} recipients {self.first_recipient_id}..{self.last_recipient_id}"


class Suppression(models.Model):
    """An address nothing but security alerts is sent to any more (hard bounce, refused as invalid, complaint)."""

    channel = models.CharField(max_length=8, choices=Channel.choices)
    address = models.CharField(max_length=512)
    reason = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["channel", "address"], name="suppression_unique_address")]

    def __str__(self) -> str:
        return f"{self.channel}:{self.address}"


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def for_key(self, key: str) -> "ApiToken | None":
        """The live token of `key`, its user, and the user's permissions, in one precompiled statement: the
        permissions fill the cache Django's ModelBackend reads (user._perm_cache), so the request's has_perm
        checks cost no query, and the ORM compiles nothing per request (that was most of an API call's time)."""
        with connection.cursor() as cursor:
            cursor.execute(_token_sql(), [_hash_key(key)])
            row = cursor.fetchone()
        if row is None:
            return None
        user_model = get_user_model()
        token_fields, user_fields = _token_fields()
        token = ApiToken.from_db(connection.alias, [f.attname for f in token_fields], row[: len(token_fields)])
        user = user_model.from_db(connection.alias, [f.attname for f in user_fields], row[len(token_fields) : -1])
        user._perm_cache = set(row[-1])
        token.user = user
        return token


def _token_fields() -> tuple[list, list]:
    return list(ApiToken._meta.concrete_fields), list(get_user_model()._meta.concrete_fields)


@cache
def _token_sql() -> str:
    token_fields, user_fields = _token_fields()
    user_model = get_user_model()
    user_table = user_model._meta.db_table
    groups = user_model.groups.through._meta.db_table
    user_permissions = user_model.user_permissions.through._meta.db_table
    group_model = user_model.groups.field.related_model
    group_permissions = group_model.permissions.through._meta.db_table
    permission_model = group_model.permissions.field.related_model
    permissions = permission_model._meta.db_table
    content_types = permission_model.content_type.field.related_model._meta.db_table
    columns = ", ".join([f't."{f.column}"' for f in token_fields] + [f'u."{f.column}"' for f in user_fields])
    # Bandit B608 (SQL built from strings): tables and columns are the models' own; the key hash is a parameter.
    return f"""
        SELECT {columns}, ARRAY(
            SELECT ct.app_label || '.' || p.codename
            FROM {permissions} p JOIN {content_types} ct ON ct.id = p.content_type_id
            WHERE p.id IN (
                SELECT permission_id FROM {user_permissions} WHERE user_id = t.user_id
                UNION
                SELECT gp.permission_id FROM {group_permissions} gp JOIN {groups} ug ON ug.group_id = gp.group_id
                WHERE ug.user_id = t.user_id
            )
        )
        FROM {ApiToken._meta.db_table} t JOIN {user_table} u ON u.id = t.user_id
        WHERE t.key_hash = %s AND t.revoked_at IS NULL
    """  # nosec B608


class ApiToken(models.Model):
    """A bearer token for the HTTP API; only its hash is stored, the key is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=8, help_text="First characters of the key, to recognise it.")
    #: Security notifications (reset codes, sign-in alerts) are the ones an attacker wants to send;
    #: a token may send them only when an admin says so, whatever its user's permissions.
    may_send_security = models.BooleanField(
        default=False, help_text="May this token send security-priority notifications?"
    )
    daily_quota_security = models.PositiveIntegerField(
        null=True, blank=True, help_text="Security notifications in any 24 hours; empty for no quota."
    )
    daily_quota_transactional = models.PositiveIntegerField(
        null=True, blank=True, help_text="Transactional notifications in any 24 hours; empty for no quota."
    )
    daily_quota_marketing = models.PositiveIntegerField(
        null=True, blank=True, help_text="Marketing notifications in any 24 hours; empty for no quota."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @classmethod
    def issue(cls, user, **settings) -> tuple["ApiToken", str]:
        """A new token for `user` (with `settings`: may_send_security, daily quotas); the key is returned once."""
        key = secrets.token_hex(20)
        token = cls.objects.create(user=user, key_hash=_hash_key(key), prefix=key[:8], **settings)
        return token, key

    def daily_quota(self, priority: str) -> int | None:
        return getattr(self, f"daily_quota_{priority}")


class EventKind(models.TextChoices):
    """What happened to a notification, from our own record (sent, failed, skipped) or from its provider's
    report (the rest)."""

    SENT = "sent", "accepted by the provider"
    FAILED = "failed", "failed for good (dead letter)"
    SKIPPED = "skipped", "not sent (consent, suppression, campaign cancelled)"
    CANCELLED = "cancelled", "cancelled before it was sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    DEFERRED = "deferred", "delivery delayed by the receiving side"
    OPENED = "opened"
    CLICKED = "clicked"
    COMPLAINED = "complained", "marked as spam"
    UNSUBSCRIBED = "unsubscribed"
    UNDELIVERED = "undelivered"


#: The statuses whose reaching writes an event, and the event's kind (a trigger does it: see migration 0011).
STATUS_EVENTS = {
    "sent": EventKind.SENT,
    "dead": EventKind.FAILED,
    "skipped": EventKind.SKIPPED,
    "cancelled": EventKind.CANCELLED,
}


class NotificationEvent(models.Model):
    """One step of a notification's timeline.  Our own steps are written by a trigger in the same statement
    that changes the notification's status, so no path that sends, fails or skips can forget one; a
    provider's report is written by its webhook view.  No foreign-key constraint: events are written at the
    send rate, and a report may name a notification retention already removed."""

    id = models.BigAutoField(primary_key=True)
    #: None for a provider's report that arrived before our `sent` recorded its message id (receipts.py).
    notification = models.ForeignKey(
        Notification, on_delete=models.DO_NOTHING, db_constraint=False, related_name="events", null=True
    )
    kind = models.CharField(max_length=32, choices=EventKind.choices)
    #: When it happened (by the provider's clock for a report).
    at = models.DateTimeField(db_default=models.functions.Now())
    provider = models.CharField(max_length=64, blank=True, default="", db_default="")
    #: What the provider said (a bounce's reason, a click's URL), or our error for a failure.
    data = models.JSONField(default=dict, blank=True, db_default=models.Value({}, models.JSONField()))
    #: The provider's message id a report named (how a report is matched with its notification).
    provider_message_id = models.CharField(max_length=255, blank=True, default="", db_default="")
    #: The provider's id for the report, so that a report delivered twice is stored once.
    dedupe_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 - NULL for our own events
    created_at = models.DateTimeField(db_default=models.functions.Now())

    class Meta:
        ordering = ["id"]
        # Per notification: the table is partitioned by it (notifications/partitions.py), and a partitioned table's
        # unique index must hold its key.  A report delivered twice names the same notification both times (or none
        # both times, hence NULLS NOT DISTINCT).
        constraints = [
            models.UniqueConstraint(
                fields=["dedupe_key", "notification"],
                name="notif_event_dedupe_unique",
                condition=Q(dedupe_key__isnull=False),
                nulls_distinct=False,
            ),
        ]
        indexes = [
            models.Index(fields=["notification", "id"], name="event_timeline_idx"),
            # The reports waiting for their notification (receipts_link).
            models.Index(
                fields=["provider_message_id"], condition=Q(notification__isnull=True), name="event_orphan_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.notification_id}"


def webhook_secret() -> str:
    """A Standard Webhooks secret: "whsec_" and 24 random bytes in base64."""
    import base64

    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


class WebhookEndpoint(models.Model):
    """Where an application hears about its notifications: each event of the kinds it asks for is POSTed to
    `url`, signed with `secret` per the Standard Webhooks specification (notifications/webhooks.py)."""

    url = models.URLField(max_length=500)
    description = models.CharField(max_length=200, blank=True, default="")
    secret = models.CharField(max_length=100, default=webhook_secret)
    #: The event kinds sent; empty means every kind.
    event_kinds = ArrayField(models.CharField(max_length=32, choices=EventKind.choices), blank=True, default=list)
    active = models.BooleanField(default=True)
    #: Deliveries per second at most, across every worker (the receiver's own limit).
    rate_per_second = models.PositiveIntegerField(default=50)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        permissions = [("send_test_webhook", "Can send a test event to a webhook endpoint")]

    def __str__(self) -> str:
        return self.description or self.url

    def wants(self, kind: str) -> bool:
        return not self.event_kinds or kind in self.event_kinds


class WebhookOutbox(models.Model):
    """Events not yet handed to the webhook endpoints (a trigger adds each event while an endpoint is active;
    the dispatcher turns them into delivery jobs and removes them)."""

    event = models.OneToOneField(NotificationEvent, primary_key=True, on_delete=models.DO_NOTHING, db_constraint=False)

    def __str__(self) -> str:
        return f"event {self.event_id}"
