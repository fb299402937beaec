"""Services of the notification domain: submit a notification, deliver it. Every write goes through here."""

import hashlib
import json
import logging
import re
import uuid
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import Case, F, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from jobs.publishing import publish_after_commit
from notifications import task_names
from notifications.inputs import context_check, text_check
from notifications.models import (
    MARKETING_CONSENT_FIELDS,
    Channel,
    Notification,
    NotificationStatus,
    Priority,
    PushDevice,
    Recipient,
)
from notifications.rendering import render

logger = logging.getLogger(__name__)

E164 = re.compile(r"^\+[1-9]\d{1,14}$")


class IdempotencyConflict(Exception):
    """The idempotency key was already used for a different request."""


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
) -> None:
    """Raise ValidationError (field -> reason) unless a notification with these values can be sent."""
    errors: dict[str, str] = {}
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
            _validate_address(channel, to)
        except ValidationError as exc:
            errors.update({k: " ".join(v) for k, v in exc.message_dict.items()})
    if errors:
        raise ValidationError(errors)
    context_check(template, context)
    render(template=template, channel=channel, context=context)


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
) -> tuple[Notification, bool]:
    """Validate, write the notification in the caller's transaction, publish it after commit.

    Returns (notification, created). With an idempotency key already used for the same
    request, returns the existing notification and created=False; for a different
    request, raises IdempotencyConflict.  Invalid input raises ValidationError (a dict
    of field -> reason) and writes nothing.
    """
    notification_validate(
        priority=priority, channel=channel, template=template, context=context, to=to, recipient_id=recipient_id
    )
    key = idempotency_key or str(uuid.uuid4())

    if idempotency_key:
        existing = _existing_for_key(key, fingerprint)
        if existing is not None:
            return existing, False
    try:
        # No savepoint around the insert: a duplicate key aborts this whole block,
        # and the recipient it may have created is rolled back with it.
        with transaction.atomic():
            recipient, address = recipient_resolve(
                channel=channel, to=to, recipient_id=recipient_id, defaults=_new_recipient_defaults(priority, channel)
            )
            notification = Notification.objects.create(
                idempotency_key=key,
                request_fingerprint=fingerprint,
                priority=priority,
                channel=channel,
                recipient=recipient,
                to=address,
                template=template,
                context=context,
                created_by=created_by,
            )
            notification_publish(notification, background=True)
    except IntegrityError:
        # A concurrent request with the same key committed first.
        existing = _existing_for_key(key, fingerprint) if idempotency_key else None
        if existing is None:
            raise
        return existing, False
    logger.info("notification %s created %s/%s template=%s", notification.pk, priority, channel, template)
    return notification, True


def _new_recipient_defaults(priority: str, channel: str) -> dict[str, Any]:
    """A caller who sends marketing to an address we have never seen asserts its consent; an
    address that exists keeps what it chose (an unsubscribe is never overridden by a submit)."""
    if priority != Priority.MARKETING:
        return {}
    return {MARKETING_CONSENT_FIELDS[channel]: True}


def _existing_for_key(key: str, fingerprint: str) -> Notification | None:
    existing = Notification.objects.filter(idempotency_key=key).first()
    if (
        existing is not None
        and fingerprint
        and existing.request_fingerprint
        and existing.request_fingerprint != fingerprint
    ):
        raise IdempotencyConflict(f"idempotency key {key!r} was already used for a different request")
    return existing


def notification_publish(notification: Notification, *, background: bool = False) -> None:
    """Publish to the notification's queue once the current transaction commits.

    `background` (the submit path) returns at once and publishes on a thread, so a
    frozen broker cannot hold a web request; the relay covers a publish that never lands.
    """
    pk = notification.pk

    def mark_queued() -> None:
        # A fast worker may have claimed the row already: keep its status, still record queued_at.
        Notification.objects.filter(pk=pk).update(
            status=Case(
                When(status=NotificationStatus.PENDING, then=Value(NotificationStatus.QUEUED)), default=F("status")
            ),
            queued_at=Coalesce(F("queued_at"), Value(timezone.now())),
        )

    publish_after_commit(
        task_names.DELIVER,
        args=[str(pk)],
        queue=notification.queue,
        on_published=mark_queued,
        background=background,
    )
