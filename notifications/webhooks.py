"""Status webhooks out: each event of a notification's timeline POSTed to every endpoint that asks for its kind,
signed per the Standard Webhooks specification, as a durable job on the runtime (jobs/durable.py).

    event ......... written by the statement that changes a notification's status (a trigger), or by a
                    provider's report; while an endpoint is active, the same transaction puts it in the
                    outbox (a second trigger)
    dispatch ...... one dispatcher at a time (an advisory lock) takes the outbox in event order and enqueues
                    one delivery job per event and endpoint in the same transaction: idempotency key
                    "<event>:<endpoint>" (a second dispatch of an event adds nothing), order key
                    "<endpoint>:<notification>" (one notification's events reach an endpoint in order)
    deliver ....... POST with webhook-id ("evt_<event id>", the same on every retry), webhook-timestamp and
                    webhook-signature; 2xx is done; 410 Gone is final; anything else is retried with
                    exponential backoff and full jitter for up to 24 hours.  One breaker per endpoint (a dead
                    endpoint costs the others nothing) and one global rate limit per endpoint
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import requests
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import connection, transaction
from standardwebhooks import Webhook

from jobs.durable import Enqueue, current_job, job
from jobs.errors import PermanentError, TransientError
from jobs.http import classify_request_exception, environment_once, parse_retry_after
from jobs.ratelimit import RateLimiter
from notifications.models import EventKind, Notification, NotificationEvent, WebhookEndpoint

logger = logging.getLogger(__name__)

#: The retry policy in JOBS_RETRY_POLICIES: 5 s doubling up to an hour between attempts, for a day.
WEBHOOK_RETRY = "webhooks"
#: Deliveries to one endpoint a worker takes per message.
WEBHOOKS_PER_MESSAGE = 20
#: Events the dispatcher turns into jobs per transaction.
DISPATCH_BATCH = 1000
#: The advisory lock that keeps dispatchers one at a time (so events become jobs in event order).
_DISPATCH_LOCK = 0x5EB400C5
#: Seconds an endpoint's settings are cached in a worker (a change applies within this).
ENDPOINT_CACHE_SECONDS = 5.0
#: The event type in the payload for each kind.
TYPE_PREFIX = "notification."


def _utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z, as the payloads give every time."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def webhook_message_id(event_id: int) -> str:
    """The webhook-id of an event: the same on every retry and for every endpoint (receivers deduplicate on it)."""
    return f"evt_{event_id}"


#: What a payload reads of an event and of its notification.
EVENT_FIELDS = ("id", "kind", "at", "provider", "data", "created_at", "notification_id")
NOTIFICATION_FIELDS = ("id", "priority", "channel", "idempotency_key", "campaign_id")


def webhook_payload(event: NotificationEvent, notification: Notification | None) -> dict[str, Any]:
    """The JSON body of an event (the README's "Webhook format")."""
    data: dict[str, Any] = {
        "notification_id": str(event.notification_id),
        "kind": event.kind,
        "at": _utc(event.at),
        "provider": event.provider,
        "details": event.data,
    }
    if notification is not None:
        data.update(
            priority=notification.priority,
            channel=notification.channel,
            idempotency_key=notification.idempotency_key,
            campaign_id=notification.campaign_id,
        )
    return {
        "type": TYPE_PREFIX + event.kind,
        "timestamp": _utc(event.created_at),
        "data": data,
    }


# --- endpoints ----------------------------------------------------------------------------


def webhook_endpoint_validate(*, url: str, event_kinds: list[str], rate_per_second: int) -> None:
    """ValidationError naming the field and the reason; nothing is written before this passes."""
    try:
        URLValidator(schemes=["https", "http"])(url)
    except ValidationError:
        raise ValidationError({"url": "must be an absolute http(s) URL"}) from None
    parsed = requests.utils.urlparse(url)
    if parsed.scheme != "https" and not settings.WEBHOOKS_ALLOW_PRIVATE_ADDRESSES:
        raise ValidationError({"url": "must use https"})
    if not settings.WEBHOOKS_ALLOW_PRIVATE_ADDRESSES:
        # No deliveries into our own network (a metadata service, the database): the name must resolve to
        # public addresses only.  Checked when the endpoint is registered.
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(parsed.hostname, parsed.port or 443)}
        except (socket.gaierror, UnicodeError):
            raise ValidationError({"url": f"the host {parsed.hostname!r} does not resolve"}) from None
        private = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_global)
        if private:
            raise ValidationError({"url": f"the host resolves to a non-public address ({private[0]})"})
    unknown = sorted(set(event_kinds) - set(EventKind.values))
    if unknown:
        raise ValidationError({"event_kinds": f"unknown kind {unknown[0]!r}; use {', '.join(EventKind.values)}"})
    if not 1 <= rate_per_second <= 10_000:
        raise ValidationError({"rate_per_second": "must lie between 1 and 10000"})


def webhook_endpoint_create(
    *, url: str, event_kinds: list[str], description: str = "", rate_per_second: int = 50, user=None
) -> WebhookEndpoint:
    webhook_endpoint_validate(url=url, event_kinds=event_kinds, rate_per_second=rate_per_second)
    return WebhookEndpoint.objects.create(
        url=url,
        event_kinds=sorted(set(event_kinds)),
        description=description[:200],
        rate_per_second=rate_per_second,
        created_by=user,
    )


# --- dispatch -----------------------------------------------------------------------------


def webhooks_dispatch(*, limit: int = DISPATCH_BATCH) -> int:
    """Turn up to `limit` outbox events into delivery jobs; how many events (0 when another dispatcher runs)."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_DISPATCH_LOCK])
            if not cursor.fetchone()[0]:
                return 0
            cursor.execute(
                "DELETE FROM notifications_webhookoutbox WHERE event_id IN ("
                " SELECT event_id FROM notifications_webhookoutbox ORDER BY event_id LIMIT %s"
                ") RETURNING event_id",
                [limit],
            )
            event_ids = sorted(row[0] for row in cursor.fetchall())
        if not event_ids:
            return 0
        events = list(
            NotificationEvent.objects.filter(pk__in=event_ids).only("pk", "kind", "notification_id").order_by("pk")
        )
        endpoints = list(WebhookEndpoint.objects.filter(active=True).only("pk", "event_kinds"))
        # Per endpoint, so that a message's runs all call the same receiver (a slow one holds only its own).
        for endpoint in endpoints:
            webhook_deliver.enqueue_many(
                (
                    Enqueue(
                        {"endpoint_id": endpoint.pk, "event_id": event.pk},
                        idempotency_key=f"{event.pk}:{endpoint.pk}",
                        order_key=f"{endpoint.pk}:{event.notification_id}",
                    )
                    for event in events
                    if endpoint.wants(event.kind)
                ),
                per_message=WEBHOOKS_PER_MESSAGE,
            )
    return len(event_ids)


def webhooks_dispatch_all(*, budget_seconds: float = 20.0) -> int:
    """Dispatch until the outbox is empty or the time is up (a beat task's run); how many events."""
    deadline = time.monotonic() + budget_seconds
    total = 0
    while time.monotonic() < deadline:
        done = webhooks_dispatch()
        total += done
        if done < DISPATCH_BATCH:
            break
    return total


# --- delivery --------------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _endpoint(endpoint_id: int, epoch: int) -> WebhookEndpoint | None:
    # `epoch` changes every ENDPOINT_CACHE_SECONDS: an endpoint is read at most that often per worker.
    return WebhookEndpoint.objects.filter(pk=endpoint_id).first()


def endpoint_cached(endpoint_id: int) -> WebhookEndpoint | None:
    return _endpoint(endpoint_id, int(time.monotonic() / ENDPOINT_CACHE_SECONDS))


def webhook_breaker(arguments) -> str:
    return f"webhook-{arguments['endpoint_id']}"


def webhook_limiter(arguments) -> RateLimiter | None:
    endpoint = endpoint_cached(arguments["endpoint_id"])
    if endpoint is None:
        return None
    return _limiter(endpoint.pk, endpoint.rate_per_second)


@lru_cache(maxsize=1024)
def _limiter(endpoint_id: int, rate: int) -> RateLimiter:
    return RateLimiter(f"webhook-{endpoint_id}", rate_per_second=rate, burst=max(1, rate // 10))


@lru_cache(maxsize=1)
def _session() -> requests.Session:
    session = environment_once(requests.Session())
    session.headers["User-Agent"] = "notify-webhooks/1"
    return session


def webhook_post(endpoint: WebhookEndpoint, *, message_id: str, payload: dict[str, Any]) -> requests.Response:
    """POST one signed message; classified: 2xx returns, 410 is a PermanentError, the rest TransientError."""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True)
    now = datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(endpoint.secret).sign(message_id, now, body),
    }
    try:
        response = _session().post(
            endpoint.url, data=body.encode(), headers=headers, timeout=settings.WEBHOOK_TIMEOUT_SECONDS
        )
    except requests.RequestException as exc:
        raise classify_request_exception(exc, what=f"webhook {endpoint.pk}") from exc
    if 200 <= response.status_code < 300:
        return response
    detail = f"webhook {endpoint.pk}: HTTP {response.status_code}"
    if response.status_code == 410:
        raise PermanentError(f"{detail} (the endpoint is gone)", status=410, response_text=response.text)
    # Any other answer may be temporary at a receiver (Standard Webhooks: retry every non-2xx).
    raise TransientError(
        detail,
        status=response.status_code,
        response_text=response.text,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


@job(
    "notifications.webhook_deliver",
    queue=settings.WEBHOOKS_QUEUE,
    retry=WEBHOOK_RETRY,
    breaker=webhook_breaker,
    limit=webhook_limiter,
    # A receiver that fails now and then (a deploy, one bad instance) keeps getting its events; one that is down
    # fails ten times in a row within seconds and stops being called.
    breaker_failures=settings.WEBHOOKS_BREAKER_FAILURES,
)
def webhook_deliver(*, endpoint_id: int, event_id: int) -> None:
    """One event to one endpoint.  An endpoint deleted or switched off meanwhile gets nothing."""
    endpoint = endpoint_cached(endpoint_id)
    if endpoint is None or not endpoint.active:
        logger.info("webhook event %s: endpoint %s is gone or inactive; not sent", event_id, endpoint_id)
        return
    # The event and its notification in one query.
    event = (
        NotificationEvent.objects.select_related("notification")
        .only(*EVENT_FIELDS, *(f"notification__{name}" for name in NOTIFICATION_FIELDS))
        .filter(pk=event_id)
        .first()
    )
    if event is None:
        raise PermanentError(f"event {event_id} no longer exists")
    payload = webhook_payload(event, event.notification)
    webhook_post(endpoint, message_id=webhook_message_id(event.pk), payload=payload)
    this = current_job()
    if this is not None and this.attempt > 1:
        logger.info("webhook event %s to endpoint %s: delivered at attempt %s", event_id, endpoint_id, this.attempt)


def webhook_send_test(*, endpoint: WebhookEndpoint) -> tuple[bool, str]:
    """POST a `test` event now, in the caller's thread, and say what the endpoint answered (admin and API)."""
    payload = {
        "type": "webhook.test",
        "timestamp": _utc(datetime.now(UTC)),
        "data": {"endpoint_id": endpoint.pk, "kinds": endpoint.event_kinds or list(EventKind.values)},
    }
    message_id = f"test_{int(time.time() * 1000)}"
    try:
        response = webhook_post(endpoint, message_id=message_id, payload=payload)
    except (TransientError, PermanentError) as exc:
        return False, str(exc)
    return True, f"HTTP {response.status_code} for {message_id}"
