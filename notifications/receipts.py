"""Delivery receipts: the providers' own reports (delivered, bounced, opened, ...) turned into events of the
notification's timeline, once each, whatever order they arrive in.

    e-mail ........ django-anymail's tracking webhook (/anymail/postmark/tracking/, basic auth): its normalised
                    events, so any anymail ESP gives the same kinds
    SMS ........... Twilio's status callback (X-Twilio-Signature) and Vonage's delivery receipt (signed:
                    `sig`, HMAC-SHA256), views in notifications/views.py
    push .......... FCM reports nothing back to the sender (delivery data only in BigQuery exports): a push
                    notification's timeline ends at `sent`

A report names the provider's message id.  One that arrives before our own `sent` is recorded (the
provider answered the callback before our UPDATE committed) is kept with no notification and linked
when the id appears (`receipts_link`, run every second by the webhook dispatcher's task); it is then
written again as a new event, so the timeline's order is the order we learned things in.
A report delivered twice is stored once (`dedupe_key`, unique).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from anymail.signals import AnymailTrackingEvent, EventType, tracking
from django.db import connection, transaction
from django.dispatch import receiver

from jobs.metrics import SharedCounter, metric_name
from notifications.consent import address_suppress
from notifications.models import Channel, EventKind

logger = logging.getLogger(__name__)

RECEIPTS = SharedCounter(
    metric_name("receipts_total"),
    "Provider reports stored, by provider and kind (delivered, bounced, opened, ...).",
    ("provider", "kind"),
)
#: Reports kept this long without a notification of their message id are dropped by the link step.
ORPHAN_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Receipt:
    provider: str
    message_id: str
    kind: str
    #: The provider's idempotent name for this report (its event id, or message id + status).
    dedupe_key: str
    at: datetime | None = None
    data: dict[str, Any] = field(default_factory=dict)


_INSERT_SQL = """
INSERT INTO notifications_notificationevent (notification_id, kind, at, provider, data, dedupe_key,
                                             provider_message_id, created_at)
SELECT n.id, v.kind, COALESCE(v.at, statement_timestamp()), v.provider, v.data::jsonb, v.dedupe_key, v.message_id,
       statement_timestamp()
FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::text[], %s::text[])
     AS v(message_id, kind, at, provider, data, dedupe_key)
-- `n.provider_message_id <> ''` lets the planner use the partial index notif_provider_msg_idx.
LEFT JOIN notifications_notification n ON n.provider_message_id = v.message_id AND n.provider_message_id <> ''
ON CONFLICT (dedupe_key, notification_id) WHERE dedupe_key IS NOT NULL DO NOTHING
RETURNING provider, kind, notification_id IS NULL
"""


def receipts_record(receipts: Iterable[Receipt]) -> int:
    """Store the reports (those already stored are skipped); how many were new."""
    receipts = [r for r in receipts if r.kind in EventKind.values and r.message_id]
    if not receipts:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT_SQL,
            [
                [r.message_id for r in receipts],
                [r.kind for r in receipts],
                [r.at for r in receipts],
                [r.provider for r in receipts],
                [json.dumps(r.data) for r in receipts],
                [r.dedupe_key[:200] for r in receipts],
            ],
        )
        stored = cursor.fetchall()
    counts: dict[tuple[str, str], int] = {}
    for provider, kind, orphan in stored:
        counts[(provider, kind)] = counts.get((provider, kind), 0) + 1
        if orphan:
            logger.info("receipt %s from %s names no notification yet; kept to link later", kind, provider)
    for (provider, kind), count in counts.items():
        RECEIPTS.inc(provider, kind, amount=count)
    return len(stored)


_LINK_SQL = """
WITH found AS (
    DELETE FROM notifications_notificationevent e
    USING notifications_notification n
    WHERE e.notification_id IS NULL AND e.provider_message_id <> '' AND n.provider_message_id <> ''
        AND n.provider_message_id = e.provider_message_id
    RETURNING n.id AS notification_id, e.kind, e.at, e.provider, e.data, e.dedupe_key, e.provider_message_id, e.id
)
INSERT INTO notifications_notificationevent (notification_id, kind, at, provider, data, dedupe_key,
                                             provider_message_id, created_at)
SELECT notification_id, kind, at, provider, data, dedupe_key, provider_message_id, statement_timestamp()
FROM found ORDER BY id
-- The same report again, already stored with its notification (it came back once that was known).
ON CONFLICT (dedupe_key, notification_id) WHERE dedupe_key IS NOT NULL DO NOTHING
"""
_DROP_ORPHANS_SQL = """
DELETE FROM notifications_notificationevent
WHERE notification_id IS NULL AND created_at < statement_timestamp() - make_interval(secs => %s)
"""


def receipts_link() -> int:
    """Attach the reports that arrived before their notification's `sent`; how many."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_LINK_SQL)
        linked = cursor.rowcount
        cursor.execute(_DROP_ORPHANS_SQL, [ORPHAN_SECONDS])
        if cursor.rowcount:
            logger.warning("dropped %s receipt(s) whose message id named no notification for a day", cursor.rowcount)
    return linked


# --- e-mail: django-anymail's normalised tracking events ----------------------------------------------

#: Anymail's event types and the kinds they become; queued and sent are ours to say.
ANYMAIL_KINDS = {
    EventType.DELIVERED: EventKind.DELIVERED,
    EventType.BOUNCED: EventKind.BOUNCED,
    EventType.REJECTED: EventKind.BOUNCED,
    EventType.FAILED: EventKind.UNDELIVERED,
    EventType.DEFERRED: EventKind.DEFERRED,
    EventType.OPENED: EventKind.OPENED,
    EventType.CLICKED: EventKind.CLICKED,
    EventType.COMPLAINED: EventKind.COMPLAINED,
    EventType.UNSUBSCRIBED: EventKind.UNSUBSCRIBED,
}


def receipt_from_anymail(event: AnymailTrackingEvent, esp_name: str) -> Receipt | None:
    kind = ANYMAIL_KINDS.get(event.event_type)
    if kind is None or not event.message_id:
        return None
    esp_event = event.esp_event if isinstance(event.esp_event, dict) else {}
    data: dict[str, Any] = {}
    if kind == EventKind.BOUNCED:
        # Postmark's Type (HardBounce, SoftBounce, ...); a rejected address is as final as a hard bounce.
        bounce_type = esp_event.get("Type", "")
        data["bounce_type"] = bounce_type
        data["hard"] = event.event_type == EventType.REJECTED or bounce_type in ("HardBounce", "BadEmailAddress")
    if event.description:
        data["description"] = event.description[:500]
    if event.click_url:
        data["url"] = event.click_url[:1000]
    if event.mta_response:
        data["mta_response"] = str(event.mta_response)[:500]
    provider = esp_name.lower()
    key = event.event_id or f"{event.message_id}:{esp_event.get('RecordType', event.event_type)}"
    return Receipt(provider, str(event.message_id), kind, f"{provider}:{key}", event.timestamp, data)


@receiver(tracking, dispatch_uid="notifications.receipts")
def record_anymail_event(sender, event: AnymailTrackingEvent, esp_name: str, **kwargs) -> None:
    receipt = receipt_from_anymail(event, esp_name)
    if receipt is not None:
        receipts_record([receipt])


# --- signatures -----------------------------------------------------------------------------------


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's X-Twilio-Signature: base64 of HMAC-SHA1 over the URL followed by each POST parameter's name and
    value, sorted by name, keyed with the account's auth token."""
    payload = url + "".join(f"{name}{params[name]}" for name in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def vonage_signature(secret: str, params: dict[str, str]) -> str:
    """Vonage's signed-webhook `sig` (HMAC-SHA256): "&name=value" for each parameter but `sig`, sorted by name,
    "&" and "=" in values replaced by "_", keyed with the signature secret; upper-case hex."""
    payload = "".join(
        f"&{name}={str(params[name]).replace('&', '_').replace('=', '_')}" for name in sorted(params) if name != "sig"
    )
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest().upper()


def signature_matches(expected: str, given: str) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), given.encode())


# --- SMS ----------------------------------------------------------------------------------------------

#: Twilio's MessageStatus values and the kinds they become (queued, sending and sent, which is "handed to the
#: carrier", are not news: our own `sent` says as much).
TWILIO_KINDS = {
    "delivered": EventKind.DELIVERED,
    "undelivered": EventKind.UNDELIVERED,
    "failed": EventKind.UNDELIVERED,
    "read": EventKind.OPENED,
}
#: Vonage's delivery-receipt statuses.
VONAGE_KINDS = {
    "delivered": EventKind.DELIVERED,
    "failed": EventKind.UNDELIVERED,
    "rejected": EventKind.UNDELIVERED,
    "expired": EventKind.UNDELIVERED,
}


def receipt_from_twilio(params: dict[str, str], provider: str = "twilio") -> Receipt | None:
    status = params.get("MessageStatus") or params.get("SmsStatus") or ""
    kind = TWILIO_KINDS.get(status)
    sid = params.get("MessageSid") or params.get("SmsSid") or ""
    if kind is None or not sid:
        return None
    data = {"status": status}
    if params.get("ErrorCode"):
        data["error_code"] = params["ErrorCode"]
    return Receipt(provider, sid, kind, f"{provider}:{sid}:{status}", None, data)


def receipt_from_vonage(params: dict[str, str], provider: str = "vonage") -> Receipt | None:
    status = params.get("status", "")
    kind = VONAGE_KINDS.get(status)
    message_id = params.get("messageId", "")
    if kind is None or not message_id:
        return None
    data = {"status": status}
    if params.get("err-code") not in (None, "", "0"):
        data["error_code"] = params["err-code"]
    return Receipt(provider, message_id, kind, f"{provider}:{message_id}:{status}", None, data)


#: Twilio error codes that mean the number cannot receive SMS at all (unknown, landline, invalid).
UNREACHABLE_TWILIO_CODES = {"30005", "30006", "21211", "21614"}


def sms_suppress_if_unreachable(receipt: Receipt, *, to: str) -> None:
    """An SMS the carrier says can never reach its number suppresses the number (as a hard bounce does an
    e-mail address: bounces.py)."""
    code = receipt.data.get("error_code", "")
    if receipt.kind == EventKind.UNDELIVERED and code in UNREACHABLE_TWILIO_CODES and to:
        address_suppress(channel=Channel.SMS, address=to, reason=f"{receipt.provider} reported error {code}")
