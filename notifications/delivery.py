"""Delivery services: claim a notification, send it along its channel's providers, retry, dead-letter, relay.

One attempt: claim the row (conditional UPDATE, attempts + 1) -> try the providers in
order, skipping any whose circuit breaker is open -> record the outcome.

| outcome of the attempt                   | what happens                                          |
|------------------------------------------|-------------------------------------------------------|
| a provider accepted                      | sent                                                  |
| permanent error (invalid recipient, 4xx) | dead letter at once, no retry                         |
| transient error, outcome known           | next provider in the same attempt                     |
| transient error, outcome unknown         | stop; retry later with the same key, same provider    |
| every provider failed                    | failed + next_attempt_at (backoff, >= Retry-After)    |
| every provider's breaker open (no call)  | failed, attempt not counted, retry after a cool-down  |
| no token under the global rate limit     | waits up to 1 s for it; else failed, attempt not      |
|                                          | counted, retry when a token is due                     |
| attempts or time budget used up          | dead letter                                           |

Marketing is checked again at every attempt: a withdrawn consent, a suppressed address
or a cancelled campaign makes the row skipped; quiet hours or a paused campaign make it
wait (no attempt counted).  A suppressed address gets no transactional mail either;
security alerts are always tried.

An unknown outcome (timeout after the request went out) is never sent to another
provider in the same attempt: the first may have accepted it.  The next attempt goes
to the same provider with the same idempotency key, unless that provider's breaker
is open; then it falls back (a possible duplicate, preferred to losing the message).
"""

import logging
import os
import signal
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from jobs.breaker import OPEN, CircuitBreaker, breaker_config
from jobs.deadletters import deadletter_record, register_replayer
from jobs.errors import ConfigurationError, JobError, PermanentError, TransientError
from jobs.models import DeadLetter
from jobs.ratelimit import rate_limiter_for
from jobs.retry import retry_policy
from notifications.campaigns import campaign_finish_if_done, campaign_recount_for
from notifications.consent import address_suppress, marketing_consent, quiet_until, suppression_reason
from notifications.events import notification_event
from notifications.models import Campaign, CampaignStatus, Channel, Notification, NotificationStatus, Priority
from notifications.providers.base import BaseProvider, OutboundMessage
from notifications.providers.registry import providers_for
from notifications.rendering import render
from notifications.services import notification_publish
from notifications.unsubscribe import unsubscribe_headers

logger = logging.getLogger(__name__)

JOB_NAME = "notifications.deliver"
#: Longest a worker sleeps for a rate-limit token; a longer wait goes back to PostgreSQL and frees the slot.
INLINE_TOKEN_WAIT_SECONDS = 1.0
#: How long a marketing row of a paused campaign waits before it looks again.
PAUSED_RECHECK_SECONDS = 5.0
_breakers: dict[str, CircuitBreaker] = {}


def claim_lease() -> timedelta:
    """How long a worker owns a claimed notification.

    Longer than the task's hard time limit, so a live task never loses its claim;
    shorter than the broker's visibility timeout, so a redelivered message finds it expired.
    """
    return timedelta(seconds=settings.JOBS_CLAIM_LEASE_SECONDS)


def breaker_for(provider: BaseProvider) -> CircuitBreaker:
    if provider.name not in _breakers:
        _breakers[provider.name] = CircuitBreaker(provider.name)
    return _breakers[provider.name]


def _claimable(now) -> Q:
    return (
        Q(status__in=[NotificationStatus.PENDING, NotificationStatus.QUEUED])
        | Q(status=NotificationStatus.FAILED, next_attempt_at__lte=now)
        | Q(status=NotificationStatus.SENDING, lease_expires_at__lt=now)
    )


def notification_claim(*, notification_id: str) -> Notification | None:
    """Take the notification with one conditional UPDATE; None if it is done, owned, not due, or exhausted.

    An exhausted one (every attempt used, typically by a message that kept killing its
    worker) is dead-lettered here, so it cannot loop.
    """
    now = timezone.now()
    row = Notification.objects.filter(pk=notification_id).values("priority", "attempts").first()
    if row is None:
        return None
    max_attempts = retry_policy(row["priority"]).max_attempts
    updated = Notification.objects.filter(_claimable(now), pk=notification_id, attempts__lt=max_attempts).update(
        status=NotificationStatus.SENDING,
        attempts=F("attempts") + 1,
        lease_expires_at=now + claim_lease(),
        updated_at=now,
    )
    if updated:
        return Notification.objects.get(pk=notification_id)
    exhausted = Notification.objects.filter(_claimable(now), pk=notification_id, attempts__gte=max_attempts).first()
    if exhausted is not None:
        dead_letter(
            exhausted,
            f"gave up after {exhausted.attempts} attempts; the last did not finish (its worker died or timed out)",
            provider=exhausted.provider,
        )
    return None


def notification_deliver(*, notification_id: str) -> None:
    """One delivery attempt of one notification."""
    notification = notification_claim(notification_id=notification_id)
    if notification is None:
        logger.info("notification %s: not claimable (done, owned by another worker, or not due)", notification_id)
        return
    notification_event(notification, "sending")
    _chaos_hook(notification)
    if _held(notification):
        return
    try:
        content = render(template=notification.template, channel=notification.channel, context=notification.context)
    except ValidationError as exc:
        dead_letter(notification, PermanentError(f"cannot render: {'; '.join(exc.messages)}"))
        return
    headers = {}
    if notification.priority == Priority.MARKETING and notification.channel == Channel.EMAIL:
        headers = unsubscribe_headers(recipient_id=notification.recipient_id, channel=notification.channel)
    message = OutboundMessage(
        notification_id=str(notification.pk),
        idempotency_key=notification.delivery_key,
        channel=notification.channel,
        to=notification.to,
        content=content,
        headers=headers,
    )
    errors: list[str] = []
    retry_after: float | None = None
    last_provider = notification.provider
    called = False
    outcome_unknown = False
    #: When nothing was called: how long to wait before the next try.
    skip_wait = 0.0
    for provider in _provider_order(notification):
        breaker = breaker_for(provider)
        if breaker.allow() == OPEN:
            errors.append(f"{provider.name}: circuit open")
            skip_wait = max(skip_wait, breaker_config().cooldown_seconds)
            continue
        limiter = rate_limiter_for(provider.name)
        if limiter is not None:
            wait = limiter.acquire_within(
                1, share=limiter.share_for(notification.priority), max_wait=INLINE_TOKEN_WAIT_SECONDS
            )
            if wait > 0:
                # Over the global rate: wait for a token rather than spill onto the
                # fallback provider, and give the worker slot back meanwhile.
                errors.append(f"{provider.name}: global rate limit, next token in {wait:.2f}s")
                skip_wait = wait
                break
        last_provider = provider.name
        called = True
        try:
            result = provider.send(message)
        except PermanentError as exc:
            breaker.record_success()  # the provider is up; it refused this message
            if exc.recipient_refused:
                address_suppress(channel=notification.channel, address=notification.to, reason=str(exc))
            dead_letter(notification, exc, provider=provider.name)
            return
        except (TransientError, ConfigurationError) as exc:
            # A 429 says "slow down", not "down": Retry-After paces this message, and
            # opening the breaker would only move the load onto the fallback's quota.
            if getattr(exc, "status", None) != 429:
                breaker.record_failure(str(exc))
            elif limiter is not None:
                limiter.penalize(exc.retry_after or 1.0)  # every worker slows down, not just this message
            errors.append(f"{provider.name}: {type(exc).__name__}: {exc}")
            if isinstance(exc, TransientError):
                retry_after = max(retry_after or 0.0, exc.retry_after or 0.0) or None
                if exc.unknown_outcome:
                    errors.append("outcome unknown: retrying with the same key")
                    outcome_unknown = True
                    break
            else:
                logger.error("notification %s: provider %s is misconfigured: %s", notification.pk, provider.name, exc)
            continue
        breaker.record_success()
        _mark_sent(notification, provider.name, result.message_id)
        return
    if not called:
        # Nothing was tried (breakers open, or no token under the global rate limit), so
        # no attempt is used up; wait for the cool-down or the token instead of the
        # backoff (the time budget still bounds this).
        schedule_retry(
            notification, "; ".join(errors), last_provider, max(retry_after or 0.0, skip_wait), refund_attempt=True
        )
        return
    schedule_retry(notification, "; ".join(errors), last_provider, retry_after, outcome_unknown=outcome_unknown)


def _held(notification: Notification) -> bool:
    """Skip or postpone a claimed notification the recipient no longer wants now; True if it was."""
    if notification.priority == Priority.SECURITY:
        return False
    now = timezone.now()
    reason = suppression_reason(notification.channel, notification.to)
    if reason is not None:
        _skip(notification, f"not sent: address suppressed ({reason})")
        return True
    if notification.priority != Priority.MARKETING:
        return False
    if notification.campaign_id is not None:
        status = Campaign.objects.filter(pk=notification.campaign_id).values_list("status", flat=True).first()
        if status == CampaignStatus.PAUSED:
            _postpone(notification, now + timedelta(seconds=PAUSED_RECHECK_SECONDS), "campaign paused")
            return True
        if status == CampaignStatus.CANCELLED:
            _skip(notification, "not sent: campaign cancelled")
            return True
    if not marketing_consent(notification.recipient, notification.channel):
        _skip(notification, f"not sent: the recipient withdrew marketing consent for {notification.channel}")
        return True
    until = quiet_until(notification.recipient.timezone, now)
    if until is not None:
        _postpone(notification, until, f"quiet hours in {notification.recipient.timezone}")
        return True
    return False


def _skip(notification: Notification, reason: str) -> None:
    with transaction.atomic():
        updated = Notification.objects.filter(pk=notification.pk, status=NotificationStatus.SENDING).update(
            status=NotificationStatus.SKIPPED, last_error=reason, lease_expires_at=None, updated_at=timezone.now()
        )
        if updated and notification.campaign_id:
            campaign_recount_for(notification)
    notification_event(notification, "skipped", detail=reason)
    if notification.campaign_id:
        campaign_finish_if_done(campaign_id=notification.campaign_id)


def _postpone(notification: Notification, until, reason: str) -> None:
    """Wait without using an attempt or the retry budget (the wait is the recipient's wish, not a failure)."""
    Notification.objects.filter(pk=notification.pk, status=NotificationStatus.SENDING).update(
        status=NotificationStatus.FAILED,
        attempts=F("attempts") - 1,
        next_attempt_at=until,
        last_error=f"waiting: {reason} until {until.isoformat()}",
        lease_expires_at=None,
        updated_at=timezone.now(),
    )
    notification_event(notification, "postponed", detail=reason, until=until.isoformat())


def _provider_order(notification: Notification) -> list[BaseProvider]:
    """The channel's providers, primary first; after an unknown outcome, that provider first."""
    providers = list(providers_for(notification.channel))
    if notification.provider and notification.outcome_unknown:
        providers.sort(key=lambda p: p.name != notification.provider)
    return providers


def _mark_sent(notification: Notification, provider: str, message_id: str) -> None:
    now = timezone.now()
    with transaction.atomic():
        updated = Notification.objects.filter(pk=notification.pk, status=NotificationStatus.SENDING).update(
            status=NotificationStatus.SENT,
            provider=provider,
            provider_message_id=message_id,
            outcome_unknown=False,
            sent_at=now,
            lease_expires_at=None,
            next_attempt_at=None,
            last_error="",
            updated_at=now,
        )
        if updated and notification.campaign_id:
            campaign_recount_for(notification)
    if notification.campaign_id:
        campaign_finish_if_done(campaign_id=notification.campaign_id)
    notification_event(notification, "sent", provider=provider, provider_message_id=message_id)


def schedule_retry(
    notification: Notification,
    error: str,
    provider: str,
    retry_after: float | None,
    refund_attempt: bool = False,
    outcome_unknown: bool | None = None,
) -> None:
    """Set the next attempt; `outcome_unknown` None keeps what an earlier attempt recorded
    (an attempt that called nobody learns nothing about the last provider's outcome)."""
    now = timezone.now()
    policy = retry_policy(notification.priority)
    attempts = notification.attempts - 1 if refund_attempt else notification.attempts
    # A campaign row may wait hours for its turn (rate limit, quiet hours): its retry
    # budget runs from its first failure, not from the fan-out.
    started = (notification.first_failed_at or now) if notification.campaign_id else notification.created_at
    moment = policy.next_attempt_at(attempt=attempts, created_at=started, now=now, retry_after=retry_after)
    if moment is None:
        dead_letter(notification, TransientError(f"retries exhausted: {error}"), provider=provider)
        return
    Notification.objects.filter(pk=notification.pk, status=NotificationStatus.SENDING).update(
        status=NotificationStatus.FAILED,
        attempts=attempts,
        provider=provider,
        last_error=error[:4000],
        next_attempt_at=moment,
        **({} if outcome_unknown is None else {"outcome_unknown": outcome_unknown}),
        first_failed_at=notification.first_failed_at or now,
        lease_expires_at=None,
        updated_at=now,
    )
    notification_event(
        notification,
        # Nobody was called (breakers open, no token): a wait, not a failed attempt.
        "postponed" if refund_attempt else "retry",
        provider=provider,
        detail=error,
        retry_in_seconds=round((moment - now).total_seconds(), 1),
    )


def dead_letter(notification: Notification, error: JobError | str, provider: str = "") -> None:
    now = timezone.now()
    with transaction.atomic():
        updated = (
            Notification.objects.filter(pk=notification.pk)
            .exclude(status=NotificationStatus.SENT)
            .update(
                status=NotificationStatus.DEAD,
                provider=provider or notification.provider,
                last_error=str(error)[:4000],
                lease_expires_at=None,
                next_attempt_at=None,
                first_failed_at=notification.first_failed_at or now,
                updated_at=now,
            )
        )
        if not updated:
            return
        if notification.campaign_id:
            campaign_recount_for(notification)
        deadletter_record(
            job_name=JOB_NAME,
            arguments={"args": [str(notification.pk)], "to": notification.to, "template": notification.template},
            error=error,
            attempts=notification.attempts,
            queue=notification.queue,
            subject=notification,
            provider=provider or notification.provider,
            first_failed_at=notification.first_failed_at or now,
        )
    notification_event(notification, "dead", provider=provider, detail=str(error))
    if notification.campaign_id:
        campaign_finish_if_done(campaign_id=notification.campaign_id)


def notification_replay(dead_letter: DeadLetter) -> None:
    """Replayer of the dead-letter table: back to queued with fresh attempts and the same idempotency key."""
    notification = Notification.objects.get(pk=dead_letter.subject_id)
    with transaction.atomic():
        replayed = Notification.objects.filter(pk=notification.pk, status=NotificationStatus.DEAD).update(
            status=NotificationStatus.QUEUED,
            attempts=0,
            next_attempt_at=None,
            queued_at=timezone.now(),
            updated_at=timezone.now(),
        )
        if replayed and notification.campaign_id:
            campaign_recount_for(notification)
    if replayed:
        notification_event(notification, "replayed", detail=f"dead letter {dead_letter.pk}")
    notification_publish(notification)


register_replayer(JOB_NAME, notification_replay)


def notification_relay(*, now=None) -> int:
    """Publish again what no worker will otherwise pick up; returns how many rows.

    Due retries, rows never published (pending), rows whose message may be lost
    (queued too long: Redis restarted) and rows whose worker died (sending, lease
    expired).  Rows are locked with SKIP LOCKED, so concurrent relays share the work.
    """
    now = now or timezone.now()
    due = (
        Q(status=NotificationStatus.FAILED, next_attempt_at__lte=now)
        | Q(
            status=NotificationStatus.PENDING,
            created_at__lt=now - timedelta(seconds=settings.RELAY_PENDING_AFTER_SECONDS),
        )
        | Q(
            status=NotificationStatus.QUEUED, queued_at__lt=now - timedelta(seconds=settings.RELAY_QUEUED_AFTER_SECONDS)
        )
        | Q(status=NotificationStatus.SENDING, lease_expires_at__lt=now)
    )
    with transaction.atomic():
        rows = list(
            Notification.objects.select_for_update(skip_locked=True)
            .filter(due)
            .order_by("priority", "created_at")
            .only("pk", "priority", "channel", "status")[: settings.RELAY_BATCH_SIZE]
        )
        if not rows:
            return 0
        # Back to queued; queued_at restarts the clock, so a row is republished at most
        # once per RELAY_QUEUED_AFTER_SECONDS even if this message is lost too.
        Notification.objects.filter(pk__in=[r.pk for r in rows]).update(
            status=NotificationStatus.QUEUED, queued_at=now, next_attempt_at=None, lease_expires_at=None, updated_at=now
        )
        for row in rows:
            notification_publish(row)
    logger.info("relay: published %s notification(s) again", len(rows))
    return len(rows)


def _chaos_hook(notification: Notification) -> None:
    """Fault injection for the drills: a notification marked as poison kills its worker process."""
    if settings.CHAOS_DRILLS_ENABLED and notification.context.get("chaos") == "kill-worker":
        logger.error("notification %s: chaos drill, killing worker process %s", notification.pk, os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)
