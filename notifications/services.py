"""Services of the notification domain: submit a notification, deliver it. Every write goes through here."""

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from functools import cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone

from jobs.publishing import publish_after_commit
from notifications import task_names
from notifications.counting import campaign_recount_for
from notifications.inputs import (
    CALLER_KEY,
    CALLER_KEY_RULE,
    context_check,
    send_at_problem,
    text_check,
    wiped_context,
)
from notifications.models import (
    MARKETING_CONSENT_FIELDS,
    Channel,
    Notification,
    NotificationStatus,
    Priority,
    PushDevice,
    Recipient,
    cancelled_unsent,
)
from notifications.rendering import render
from settings.topology import queue_name

logger = logging.getLogger(__name__)

_VARCHAR = re.compile(r"varchar\(\d+\)")
#: First half of the advisory lock a submit with a caller's idempotency key holds (the key's hash is the second).
IDEMPOTENCY_LOCK = 0x6E01
E164 = re.compile(r"^\+[1-9]\d{1,14}$")


class IdempotencyConflict(Exception):
    """The idempotency key was already used for a different request."""


class NotCancellable(Exception):
    """A worker took the notification already (or it is final): too late to cancel it."""

    def __init__(self, notification: Notification) -> None:
        self.notification = notification
        #: As every reader gives it (a cancelled campaign's unsent row is skipped).
        self.status = getattr(notification, "shown_status", notification.status)
        super().__init__(
            f"notification {notification.pk} is {self.status}: "
            + ("already cancelled" if self.status == NotificationStatus.CANCELLED else "too late to cancel")
        )


#: Statuses a cancel may still take a notification from: nothing holds it (a worker's claim moves it to
#: sending under a row lock, so a cancel and a claim cannot both win).
CANCELLABLE = (
    NotificationStatus.SCHEDULED,
    NotificationStatus.PENDING,
    NotificationStatus.QUEUED,
    NotificationStatus.FAILED,
)


#: RFC 5321: a local part (before @) of at most 64 octets, a path of at most 254.
EMAIL_LOCAL_MAX, EMAIL_MAX = 64, 254


def _validate_address(channel: str, to: str) -> str:
    text_check(to, path="to")
    to = to.strip()
    if channel == Channel.EMAIL:
        try:
            validate_email(to)
        except ValidationError:
            raise ValidationError({"to": f"{to!r} is not a valid e-mail address"}) from None
        local, _, domain = to.rpartition("@")
        if len(local.encode()) > EMAIL_LOCAL_MAX or len(to.encode()) > EMAIL_MAX:
            raise ValidationError(
                {
                    "to": f"an e-mail address has at most {EMAIL_LOCAL_MAX} characters before the @ and {EMAIL_MAX} in all"
                }
            )
        if domain.startswith("["):
            raise ValidationError({"to": "an address at an IP literal ([…]) is not accepted; use a domain name"})
        return to.lower()
    if channel == Channel.SMS:
        if not E164.match(to):
            raise ValidationError({"to": f"{to!r} is not an E.164 phone number (like +14155550100)"})
        return to
    if not 8 <= len(to) <= 512 or any(c.isspace() for c in to):
        raise ValidationError({"to": "a push token is 8 to 512 characters without spaces"})
    return to


def recipient_resolve(
    *, channel: str, to: str | None = None, recipient_id: int | None = None, defaults: dict[str, Any] | None = None
) -> tuple[Recipient, str]:
    """The recipient and the address to use: an existing recipient by id, or found/created by address
    (a created recipient gets `defaults`)."""
    defaults = defaults or {}
    if (to is None) == (recipient_id is None):
        raise ValidationError({"to": "give exactly one of 'to' and 'recipient_id'"})
    if recipient_id is not None:
        recipient = Recipient.objects.filter(pk=recipient_id).first()
        if recipient is None:
            raise ValidationError({"recipient_id": f"no recipient with id {recipient_id}"})
        address = recipient.address_for(channel)
        if not address:
            raise ValidationError({"recipient_id": f"recipient {recipient_id} has no {channel} address"})
        return recipient, address
    address = _validate_address(channel, to)
    if channel == Channel.EMAIL:
        recipient = _recipient_by(defaults, email=address)
    elif channel == Channel.SMS:
        recipient = _recipient_by(defaults, phone=address)
    else:
        device = PushDevice.objects.select_related("recipient").filter(token=address).first()
        if device is None:
            try:
                with transaction.atomic():
                    device = PushDevice.objects.create(token=address, recipient=Recipient.objects.create(**defaults))
            except IntegrityError:  # registered concurrently
                device = PushDevice.objects.select_related("recipient").get(token=address)
        recipient = device.recipient
    return recipient, address


def _recipient_by(defaults: dict[str, Any], **lookup: str) -> Recipient:
    """get_or_create without a savepoint: two round trips fewer on the submit path."""
    recipient = Recipient.objects.filter(**lookup).first()
    if recipient is None:
        # A concurrent insert of the same address wins quietly; then we read it.
        Recipient.objects.bulk_create([Recipient(**lookup, **defaults)], ignore_conflicts=True)
        recipient = Recipient.objects.get(**lookup)
    return recipient


def request_fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def notification_validate(
    *,
    priority: str,
    channel: str,
    template: str,
    context: dict[str, Any],
    to: str | None = None,
    recipient_id: int | None = None,
    send_at=None,
    cancellation_key: str = "",
) -> str | None:
    """Raise ValidationError (field -> reason) unless a notification with these values can be sent; the address
    `to` as it is stored (normalised), None without one."""
    errors: dict[str, str] = {}
    address = None
    if send_at is not None:
        reason = send_at_problem(send_at)
        if reason:
            errors["send_at"] = reason
    if cancellation_key and not CALLER_KEY.match(cancellation_key):
        errors["cancellation_key"] = CALLER_KEY_RULE
    if priority not in Priority.values:
        errors["priority"] = f"unknown priority {priority!r}; expected one of {', '.join(Priority.values)}"
    if channel not in Channel.values:
        errors["channel"] = f"unknown channel {channel!r}; expected one of {', '.join(Channel.values)}"
    if not isinstance(context, dict):
        errors["context"] = "must be a JSON object"
    if (to is None) == (recipient_id is None):
        errors["to"] = "give exactly one of 'to' and 'recipient_id'"
    elif to is not None and "channel" not in errors:
        try:
            address = _validate_address(channel, to)
        except ValidationError as exc:
            errors.update({k: " ".join(v) for k, v in exc.message_dict.items()})
    if errors:
        raise ValidationError(errors)
    context_check(template, context)
    render(template=template, channel=channel, context=context)
    return address


def notification_send(
    *,
    priority: str,
    channel: str,
    template: str,
    context: dict[str, Any],
    to: str | None = None,
    recipient_id: int | None = None,
    idempotency_key: str | None = None,
    created_by=None,
    fingerprint: str = "",
    send_at=None,
    cancellation_key: str = "",
) -> tuple[Notification, bool]:
    """Validate, write the notification in the caller's transaction, publish it after commit.

    Returns (notification, created). With an idempotency key already used for the same
    request, returns the existing notification and created=False; for a different
    request, raises IdempotencyConflict.  Invalid input raises ValidationError (a dict
    of field -> reason) and writes nothing.

    With `send_at` in the future the row waits as scheduled in PostgreSQL (nothing is published, so
    nothing waits in the broker) until `notifications_release_due` publishes it; a `send_at` that has
    passed sends at once.  `cancellation_key` labels it for `notifications_cancel_by_key`.
    """
    address = notification_validate(
        priority=priority,
        channel=channel,
        template=template,
        context=context,
        to=to,
        recipient_id=recipient_id,
        send_at=send_at,
        cancellation_key=cancellation_key,
    )
    key = idempotency_key or str(uuid.uuid4())
    later = send_at is not None and send_at > timezone.now()
    notification = Notification(
        idempotency_key=key,
        request_fingerprint=fingerprint,
        cancellation_key=cancellation_key,
        priority=priority,
        channel=channel,
        template=template,
        context=context,
        created_by=created_by,
        send_at=send_at,
        # Written as queued: the publish follows the commit, and one that fails puts it back to pending
        # (notification_publish); a process that dies in between leaves it to the relay's lost-queued rule.
        status=NotificationStatus.SCHEDULED if later else NotificationStatus.QUEUED,
        queued_at=None if later else timezone.now(),
    )
    with transaction.atomic() if idempotency_key else nullcontext():
        if idempotency_key:
            # The key is unique per leaf of the partitioned table only: a submit with a caller's key looks for it
            # holding a lock of the key until its own row commits, so two requests with one key write one row.
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [IDEMPOTENCY_LOCK, key])
            existing = _existing_for_key(key, fingerprint)
            if existing is not None:
                return existing, False
        if to is not None and channel != Channel.PUSH:
            notification.to = address
            _insert_with_recipient(notification, defaults=_new_recipient_defaults(priority, channel))
        else:
            with transaction.atomic():
                notification.recipient, notification.to = recipient_resolve(
                    channel=channel,
                    to=to,
                    recipient_id=recipient_id,
                    defaults=_new_recipient_defaults(priority, channel),
                )
                notification.save(force_insert=True)
    if not later:
        notification_publish(notification, background=True)
    logger.debug("notification %s created %s/%s template=%s", notification.pk, priority, channel, template)
    return notification, True


#: The address column that identifies a recipient, per channel (push devices have their own table).
_ADDRESS_COLUMN = {Channel.EMAIL: "email", Channel.SMS: "phone"}


def _insert_with_recipient(notification: Notification, *, defaults: dict[str, Any]) -> None:
    """Find or create the recipient of `notification.to` and insert the notification, in one statement.

    One round trip (and, outside a transaction, one commit) per submit: the ORM's find, create and
    insert took five.  When a concurrent submit creates the same recipient in the same instant,
    this statement sees neither its own insert nor the other's row, inserts nothing, and is run again.
    """
    column = _ADDRESS_COLUMN[notification.channel]
    recipient = Recipient(**{column: notification.to}, **defaults)
    params = [notification.to, *_insert_values(recipient), *_insert_values(notification)]
    sql = _insert_with_recipient_sql(column)
    for _ in range(3):
        # Alone, the statement is its own transaction; inside the caller's, a savepoint keeps a duplicate
        # key from breaking the rest of it.
        with transaction.atomic() if connection.in_atomic_block else nullcontext(), connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        if row is not None:
            notification.recipient_id = row[0]
            notification._state.adding, notification._state.db = False, connection.alias
            return
    raise RuntimeError(f"could not find or create the recipient of {notification.to!r}")


@cache
def _insert_with_recipient_sql(column: str) -> str:
    r_columns, r_values = _insert_columns(Recipient)
    n_columns, n_values = _insert_columns(Notification)
    table, recipients = Notification._meta.db_table, Recipient._meta.db_table
    # Bandit B608 (SQL built from strings): tables and columns are the models' own; every value is a parameter.
    return f"""
        WITH found AS (SELECT id FROM {recipients} WHERE {column} = %s),
        created AS (
            INSERT INTO {recipients} ({r_columns}) SELECT {r_values} WHERE NOT EXISTS (SELECT 1 FROM found)
            ON CONFLICT ({column}) DO NOTHING RETURNING id
        ),
        recipient AS (SELECT id FROM found UNION ALL SELECT id FROM created LIMIT 1)
        INSERT INTO {table} ({n_columns}, recipient_id) SELECT {n_values}, recipient.id FROM recipient
        RETURNING recipient_id
    """  # nosec B608


#: Written by the insert itself: a database-generated id, and the notification's recipient (found or created).
_NOT_INSERTED = {"recipient"}


def _insert_fields(model) -> list:
    return [
        f
        for f in model._meta.local_concrete_fields
        if f.name not in _NOT_INSERTED and not (f.primary_key and f.db_returning)
    ]


def _insert_columns(model) -> tuple[str, str]:
    """Columns and typed placeholders of `model`'s insert.  Typed, since a SELECT list gives no column type;
    text rather than varchar(n), which a cast would truncate silently where the insert refuses a value too long."""
    fields = _insert_fields(model)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    placeholders = ", ".join(f"%s::{_VARCHAR.sub('text', f.cast_db_type(connection))}" for f in fields)
    return columns, placeholders


def _insert_values(instance) -> list[Any]:
    """The values of `instance` as Django's own INSERT writes them (defaults, auto_now_add)."""
    return [f.get_db_prep_save(f.pre_save(instance, True), connection) for f in _insert_fields(type(instance))]


def _new_recipient_defaults(priority: str, channel: str) -> dict[str, Any]:
    """A caller who sends marketing to an address we have never seen asserts its consent; an
    address that exists keeps what it chose (an unsubscribe is never overridden by a submit)."""
    if priority != Priority.MARKETING:
        return {}
    return {MARKETING_CONSENT_FIELDS[channel]: True}


def _existing_for_key(key: str, fingerprint: str) -> Notification | None:
    # No ORDER BY: one probe of notif_idempotency_key_idx per leaf, not a walk of another index.
    existing = next(iter(Notification.objects.filter(idempotency_key=key).order_by()[:1]), None)
    if (
        existing is not None
        and fingerprint
        and existing.request_fingerprint
        and existing.request_fingerprint != fingerprint
    ):
        raise IdempotencyConflict(f"idempotency key {key!r} was already used for a different request")
    return existing


def notification_publish(notification: Notification, *, background: bool = False) -> None:
    """Publish a queued notification to its queue once the current transaction commits.

    `background` (the submit path) returns at once and publishes on a thread, so a
    frozen broker cannot hold a web request.  A publish that fails puts the row back to
    pending, for the relay's next run; the relay also covers a publish that never finishes.
    """
    publish_after_commit(
        task_names.DELIVER,
        args=[str(notification.pk)],
        queue=notification.queue,
        on_failed=_back_to_pending([notification.pk]),
        background=background,
        coalesce=True,
        # A security alert never waits for company; the others may, a few milliseconds, in a burst.
        coalesce_within=0.0 if notification.priority == Priority.SECURITY else settings.NOTIFICATIONS_COALESCE_SECONDS,
    )


# --- scheduled notifications: release and cancel ------------------------------------

#: Due scheduled notifications, oldest send_at first, claimed for publishing in one statement (the partial
#: index notif_send_at_due_idx holds only scheduled rows with a send_at, so the scan is as small as the backlog).
_RELEASE_SQL = """
UPDATE notifications_notification n SET status = 'queued', queued_at = statement_timestamp(),
    updated_at = statement_timestamp()
FROM (
    SELECT id FROM notifications_notification
    WHERE status = 'scheduled' AND send_at IS NOT NULL AND send_at <= statement_timestamp()
    ORDER BY send_at LIMIT %s FOR UPDATE SKIP LOCKED
) due
WHERE n.id = due.id AND n.status = 'scheduled'
RETURNING n.id, n.priority, n.channel
"""


def notifications_release_due(*, limit: int | None = None) -> int:
    """Publish the scheduled notifications whose send_at has come (security first within a run); how many.

    They become queued in the same statement that finds them, so a concurrent run or a cancel cannot take
    them twice; a publish that fails leaves them pending for the relay, as for any submit.
    """
    limit = limit or settings.NOTIFICATIONS_RELEASE_BATCH
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_RELEASE_SQL, [limit])
        rows = cursor.fetchall()
        order = {p: i for i, p in enumerate(Priority.values)}
        queues: dict[str, list[str]] = {}
        for pk, priority, channel in sorted(rows, key=lambda row: order.get(row[1], 99)):
            queues.setdefault(queue_name(priority, channel), []).append(str(pk))
        # A message names a call's worth of rows (as a burst of submits is coalesced): one per row would cost the
        # workers more in messages than in sends when thousands fall due in the same second.
        size = settings.NOTIFICATIONS_SINGLE_BATCH
        for queue, ids in queues.items():
            for start in range(0, len(ids), size):
                chunk = ids[start : start + size]
                publish_after_commit(task_names.DELIVER, args=chunk, queue=queue, on_failed=_back_to_pending(chunk))
    if rows:
        logger.info("released %s scheduled notification(s)", len(rows))
    return len(rows)


def _back_to_pending(ids: list) -> Callable[[], None]:
    """What a failed publish of `ids` does: the rows still queued go back to pending, for the relay's next run."""

    def back_to_pending() -> None:
        Notification.objects.filter(pk__in=ids, status=NotificationStatus.QUEUED).update(
            status=NotificationStatus.PENDING, updated_at=timezone.now()
        )

    return back_to_pending


def notification_cancel(*, notification_id, reason: str = "cancelled") -> Notification:
    """Cancel one notification before a worker takes it: nothing of it is sent, ever.

    One conditional UPDATE decides it against the worker's claim (also one conditional UPDATE, on the same
    row): either the cancel comes first and the claim finds nothing, or the claim does and this raises
    NotCancellable with the status it has.  Notification.DoesNotExist for an unknown id.
    """
    with transaction.atomic():
        cancelled = _cancel(Q(pk=notification_id), reason)
        if not cancelled:
            notification = Notification.objects.with_shown_status().get(pk=notification_id)
            raise NotCancellable(notification)
    return cancelled[0]


def notifications_cancel_by_key(*, cancellation_key: str, created_by=None, reason: str = "cancelled") -> dict:
    """Cancel every notification labelled `cancellation_key` (of `created_by`, when given) that no worker
    holds yet; {"cancelled": [ids], "too_late": {id: status}}."""
    if not CALLER_KEY.match(cancellation_key or ""):
        raise ValidationError({"cancellation_key": CALLER_KEY_RULE})
    scope = Q(cancellation_key=cancellation_key)
    if created_by is not None:
        scope &= Q(created_by=created_by)
    return notifications_cancel(scope=scope, reason=reason)


def notifications_cancel(*, scope: Q, reason: str = "cancelled") -> dict:
    """Cancel the notifications of `scope` that no worker holds yet, in one transaction;
    {"cancelled": [ids], "too_late": {id: status}}."""
    with transaction.atomic():
        cancelled = _cancel(scope, reason)
        done = {n.pk for n in cancelled}
        too_late = {
            str(pk): status
            for pk, status in Notification.objects.with_shown_status()
            .filter(scope)
            .exclude(pk__in=done)
            .values_list("pk", "shown_status")
        }
    return {"cancelled": [str(n.pk) for n in cancelled], "too_late": too_late}


def _cancel(scope: Q, reason: str) -> list[Notification]:
    """The rows of `scope` that nothing holds yet, cancelled in one statement (their events written by the
    status trigger); a campaign row's batch is recounted, so its campaign can still complete.  A row its campaign's
    cancel took is skipped already (models.cancelled_unsent_sql): too late for it."""
    rows = list(
        Notification.objects.select_for_update()
        .filter(scope, status__in=CANCELLABLE)
        .exclude(cancelled_unsent())
        .only("pk", "status", "campaign_id", "recipient_id")
    )
    if not rows:
        return []
    Notification.objects.filter(pk__in=[r.pk for r in rows], status__in=CANCELLABLE).update(
        status=NotificationStatus.CANCELLED,
        last_error=reason[:4000],
        context=wiped_context(),
        next_attempt_at=None,
        updated_at=Now(),
    )
    for row in rows:
        row.status = NotificationStatus.CANCELLED
        if row.campaign_id:
            campaign_recount_for(row)
    return rows
