"""The one way a notification reaches a provider, for single sends and campaign batches alike.

For the messages of one call (one notification, or a few rows of a campaign batch):

    an earlier attempt's outcome unknown ....... ask the vendors that can tell (lookup) first
    for each provider of the channel, primary first (after an unknown outcome: that one first)
      breaker open ............................ skip it; the rest of its cool-down is the wait
      busy: paced (429) or no rate-limit token  security, transactional: skip it at once
                                                marketing: stop and wait for it (a campaign never
                                                spills onto the fallback's quota)
      call it (tokens taken just before), then per message:
        accepted, with the vendor's message id . sent
        refused for good ........................ dead letter (+ suppression if the address is bad)
        outcome unknown (timeout after sending) . stop: retry later, same key, same provider first
        failed, nothing accepted ................ next provider, same attempt
        told to wait (429) ...................... next provider; every worker paces this one
    called, nobody accepted ..................... retry (backoff >= Retry-After) or dead letter
    nobody could be called ...................... a busy chain is waited for up to
                                                  INLINE_WAIT_SECONDS; longer waits go back to
                                                  the caller (no attempt counted): a single row
                                                  waits in PostgreSQL, a campaign batch is deferred

The breaker hears about each call as a whole: any acceptance or refusal of a message says the
provider is up; a failure with nothing accepted counts against it; a 429 paces it instead.
Every outcome is written here (`record_*`), and only by the worker that holds the row's claim.
"""

import logging
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache

from django.conf import settings
from django.db import connection, transaction
from django.db.models import DateTimeField, ExpressionWrapper, F
from django.db.models.functions import Now
from django.utils import timezone

from jobs.breaker import OPEN, PACED, CircuitBreaker, Permit, breaker_config, breaker_named
from jobs.deadletters import deadletter_record
from jobs.errors import ConfigurationError, JobError, NotCalled, PermanentError, TransientError
from jobs.ratelimit import RateLimiter, rate_limiter_for
from jobs.retry import retry_policy
from notifications import task_names
from notifications.consent import address_suppress
from notifications.counting import campaign_recount_for
from notifications.events import notification_event, notifications_events
from notifications.inputs import wipe_secrets_sql, wiped_context
from notifications.models import Channel, Notification, NotificationStatus, Priority
from notifications.providers.base import BaseProvider, OutboundMessage, SendResult
from notifications.providers.registry import providers_for
from notifications.rendering import RenderedMessage
from notifications.unsubscribe import marketing_email

logger = logging.getLogger(__name__)

#: The job name of a notification's dead letters (its replayer is registered under it).
JOB_NAME = task_names.DELIVER
#: Longest a call sleeps for a busy provider (no token, paced) before it frees its worker slot.
INLINE_WAIT_SECONDS = 1.0
#: Longest an urgent call (security, transactional) waits for the primary's tokens before it goes to the next
#: provider: the few milliseconds a call's worth of tokens takes to refill, not a saturated provider's wait.
URGENT_TOKEN_WAIT_SECONDS = 0.1
#: Pause applied to a provider that answered 429 without a Retry-After.
DEFAULT_PACE_SECONDS = 1.0


def breaker_for(provider: BaseProvider) -> CircuitBreaker:
    """The provider's breaker, built once per process."""
    return breaker_named(provider.name)


def build_message(row: Notification, content: RenderedMessage) -> OutboundMessage:
    """What a provider gets for a notification: its content (a marketing e-mail's with the recipient's preference
    and unsubscribe links), its idempotency key, the unsubscribe headers."""
    headers = {}
    if row.priority == Priority.MARKETING and row.channel == Channel.EMAIL:
        content, headers = marketing_email(content, recipient_id=row.recipient_id)
    return OutboundMessage(
        notification_id=str(row.pk),
        idempotency_key=row.delivery_key,
        channel=row.channel,
        to=row.to,
        content=content,
        headers=headers,
    )


@dataclass(eq=False)
class Delivery:
    """One claimed notification on its way through the chain, and what this attempt has learned so far."""

    row: Notification
    message: OutboundMessage
    #: One line per provider tried, for last_error and the dead letter.
    errors: list[str] = field(default_factory=list)
    #: A provider may have received it: the attempt counts (a 429 or a skip is no call).
    called: bool = False
    #: The provider that may have accepted it (timeout after sending); the walk stops there.
    unknown_at: str = ""
    #: Longest Retry-After of a provider that was called and failed: the earliest the next attempt may come.
    retry_after: float = 0.0
    #: Longest pace a provider asked for without being called (a 429, or "not called" after one): that provider
    #: is paced for every worker (its breaker), so the next attempt goes to the others and need not wait for it.
    paced_for: float = 0.0
    #: Sent or dead-lettered: nothing more to do.
    done: bool = False
    last_provider: str = ""


@dataclass(frozen=True)
class Unsent:
    """Deliveries no provider could be called for (every one open or busy), and how long until one may be."""

    deliveries: list[Delivery]
    wait: float
    reason: str


def send(deliveries: list[Delivery], *, priority: str, channel: str, recount: bool = True) -> Unsent | None:
    """Send claimed deliveries (one priority and channel) and record every outcome.

    Returns the deliveries nobody could be called for, for the caller to put back without
    counting an attempt.  `recount`: update a campaign row's counters in the same transaction
    (a campaign batch recounts once per run instead).
    """
    pending = [d for d in deliveries if not (d.row.outcome_unknown and _found_by_lookup(d, recount=recount))]
    deadline = time.monotonic() + INLINE_WAIT_SECONDS
    while True:
        waits = _walk([d for d in pending if not d.called], priority=priority, channel=channel, recount=recount)
        pending = [d for d in pending if not d.done]
        uncalled = [d for d in pending if not d.called]
        wait = min(waits, default=0.0)
        # A chain busy for less than the inline budget is waited for; longer, the slot is freed.
        if not (uncalled and waits and time.monotonic() + wait <= deadline):
            break
        time.sleep(wait)
    for delivery in pending:
        if delivery.called:
            record_retry(
                delivery.row,
                "; ".join(delivery.errors),
                provider=delivery.unknown_at or delivery.last_provider,
                retry_after=delivery.retry_after or None,
                outcome_unknown=bool(delivery.unknown_at),
                recount=recount,
            )
    if not uncalled:
        return None
    return Unsent(uncalled, wait or breaker_config().cooldown_seconds, "; ".join(uncalled[0].errors))


def group_size(*, priority: str, channel: str) -> int:
    """Messages per call for a campaign batch: half the primary's rate-limit burst (tokens then pile up
    while a worker is busy with PostgreSQL instead of going unused), at most its batch size."""
    provider = providers_for(channel)[0]
    limiter = rate_limiter_for(provider.name)
    if limiter is None:
        return provider.max_batch
    return min(max(1, limiter.max_batch(limiter.share_for(priority)) // 2), provider.max_batch)


def _provider_order(deliveries: list[Delivery], channel: str) -> list[BaseProvider]:
    """The channel's providers, primary first; after an unknown outcome, the provider that may have it first."""
    providers = list(providers_for(channel))
    preferred = {d.row.provider for d in deliveries if d.row.outcome_unknown and d.row.provider}
    if len(preferred) == 1:
        (name,) = preferred
        providers.sort(key=lambda p: p.name != name)
    return providers


def _walk(pending: list[Delivery], *, priority: str, channel: str, recount: bool) -> list[float]:
    """One pass down the chain; returns the waits of the providers that could not be called."""
    urgent = priority != Priority.MARKETING
    waits: list[float] = []
    for provider in _provider_order(pending, channel):
        pending = [d for d in pending if not d.done and not d.unknown_at]
        if not pending:
            break
        breaker = breaker_for(provider)
        permit = breaker.allow()
        if not permit.call:
            why = "circuit open" if permit.decision == OPEN else "asked us to wait"
            _note(pending, f"{provider.name}: {why}")
            waits.append(permit.wait if permit.wait > 0 else breaker.config.cooldown_seconds)
            if permit.decision == PACED and not urgent:
                break
            continue
        limiter = rate_limiter_for(provider.name)
        share = limiter.share_for(priority) if limiter else 1.0
        size = min(limiter.max_batch(share), provider.max_batch) if limiter else provider.max_batch
        called = busy = False
        for start in range(0, len(pending), size):
            chunk = pending[start : start + size]
            wait = _tokens(limiter, len(chunk), share, urgent=urgent)
            if wait <= 0:
                called = True
                wait = _call(provider, breaker, permit, limiter, chunk, recount=recount)
            else:
                _note(pending[start:], f"{provider.name}: global rate limit, next token in {wait:.2f}s")
            if wait > 0:  # no token, or the provider answered 429: busy for `wait` seconds
                waits.append(wait)
                busy = True
                break
        if not called:
            breaker.release(permit)
        if busy and not urgent:
            break
    return waits


def _tokens(limiter: RateLimiter | None, count: int, share: float, *, urgent: bool) -> float:
    """0 once `count` tokens are taken; else the wait.  Urgent calls wait only for a refill of a few milliseconds
    (a batch may need more tokens than are in the bucket this instant); a longer wait, they try the next provider."""
    if limiter is None:
        return 0.0
    return limiter.acquire_within(
        count, share=share, max_wait=URGENT_TOKEN_WAIT_SECONDS if urgent else INLINE_WAIT_SECONDS
    )


def _note(deliveries: Iterable[Delivery], error: str) -> None:
    for delivery in deliveries:
        delivery.errors.append(error)


def _call(
    provider: BaseProvider,
    breaker: CircuitBreaker,
    permit: Permit,
    limiter: RateLimiter | None,
    chunk: list[Delivery],
    *,
    recount: bool,
) -> float:
    """One provider call: classify each message's result, tell the breaker, write what is final.

    Returns how long the provider asked every worker to wait (a 429), else 0.
    """
    try:
        results = provider.send_batch([d.message for d in chunk])
    except ConfigurationError as exc:
        results = [exc] * len(chunk)
    sent: list[tuple[Delivery, str]] = []
    up = paced = False
    failure: Exception | None = None
    failed = 0
    for delivery, result in zip(chunk, results, strict=True):
        delivery.last_provider = provider.name
        if isinstance(result, SendResult) and result.message_id:
            sent.append((delivery, result.message_id))
            up = True
            continue
        if isinstance(result, NotCalled):
            # Never sent: an earlier message of the call was told to wait.  No attempt; the next provider may take it.
            delivery.errors.append(str(result))
            delivery.paced_for = max(delivery.paced_for, result.retry_after or DEFAULT_PACE_SECONDS)
            continue
        if isinstance(result, SendResult):
            # What the vendor says is what we record: "OK" without its message id is no acceptance.
            result = TransientError(f"{provider.name}: answered without a message id", unknown_outcome=True)
        delivery.errors.append(f"{provider.name}: {type(result).__name__}: {result}")
        if isinstance(result, PermanentError):
            up = True  # the provider is up; it refused this message
            delivery.called = delivery.done = True
            if result.recipient_refused:
                address_suppress(channel=delivery.row.channel, address=delivery.row.to, reason=str(result))
            record_dead(delivery.row, result, provider=provider.name, recount=recount)
        elif isinstance(result, TransientError) and result.status == 429:
            # "Slow down", not "down": pace the provider for every worker; this message tries the next one.
            paced = True
            delivery.paced_for = max(delivery.paced_for, result.retry_after or DEFAULT_PACE_SECONDS)
        else:
            delivery.called = True
            failure = failure or result
            failed += 1
            if isinstance(result, TransientError):
                delivery.retry_after = max(delivery.retry_after, result.retry_after or 0.0)
                if result.unknown_outcome:
                    delivery.unknown_at = provider.name
                    delivery.errors.append("outcome unknown: retrying with the same key")
            else:
                logger.error("provider %s is misconfigured: %s", provider.name, result)
    pause = 0.0
    if paced:
        pause = max(d.paced_for for d in chunk)
        breaker.pace(pause)
        if limiter is not None:
            limiter.penalize(pause)
    if up:
        breaker.record_success(permit)
    elif failure is not None:
        # Each message the call failed for counts, so a batch opens the breaker after as many failed sends as
        # single calls would: the rows of a failing batch do not spend their attempts while it stays closed.
        breaker.record_failure(str(failure), permit, count=failed)
    else:
        breaker.release(permit)  # only 429s: the probe learned nothing
    if sent:
        record_sent([(d.row, provider.name, message_id) for d, message_id in sent], recount=recount)
        for delivery, _ in sent:
            delivery.called = delivery.done = True
    return pause


def sent_by_lookup(row: Notification, content: RenderedMessage) -> bool:
    """Whether a claimed row whose outcome is unknown was accepted after all (a vendor that can tell has it),
    recorded as sent if so; nothing is sent.  For a row that must not be sent again (its campaign was cancelled)."""
    return _found_by_lookup(Delivery(row, build_message(row, content)), recount=True)


def _found_by_lookup(delivery: Delivery, *, recount: bool) -> bool:
    """An earlier attempt may have been accepted (timeout, worker died mid-call): ask each vendor of the
    chain that offers a lookup; True (and recorded as sent) if one has it."""
    for provider in providers_for(delivery.row.channel):
        if not provider.can_look_up:
            continue
        try:
            found = provider.look_up(delivery.message, since=delivery.row.created_at)
        except (JobError, ConfigurationError) as exc:
            logger.warning("notification %s: lookup at %s failed: %s", delivery.row.pk, provider.name, exc)
            continue
        if found is not None and found.message_id:
            logger.info(
                "notification %s: %s already has it (%s); recorded without sending again",
                delivery.row.pk,
                provider.name,
                found.message_id,
            )
            record_sent([(delivery.row, provider.name, found.message_id)], recount=recount, detail="found by lookup")
            delivery.done = True
            return True
    return False


# --- recording outcomes (only the claim's holder may) ---------------------------------------

_SENT_SQL = """
UPDATE notifications_notification n SET status = 'sent', provider = v.provider, provider_message_id = v.message_id,
    outcome_unknown = false, sent_at = statement_timestamp(), lease_expires_at = NULL, next_attempt_at = NULL, last_error = '',
    context = {wipe}, updated_at = statement_timestamp()
FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::uuid[]) AS v(id, provider, message_id, token)
WHERE n.id = v.id AND n.status = 'sending' AND n.claim_token = v.token
    -- The ids again, as constants: PostgreSQL plans the UPDATE on their leaves alone (notifications/partitions.py).
    AND n.id = ANY(%s::uuid[])
RETURNING n.id
"""


@cache
def _sent_sql() -> str:
    return _SENT_SQL.format(wipe=wipe_secrets_sql("n."))


def _still_claimed(row: Notification):
    """The row, as long as this worker still holds the claim it was given (one rule for every outcome)."""
    return Notification.objects.filter(pk=row.pk, status=NotificationStatus.SENDING, claim_token=row.claim_token)


def record_sent(sent: list[tuple[Notification, str, str]], *, recount: bool = True, detail: str = "") -> None:
    """(row, provider, message id) accepted: sent, in one statement however many (and, for campaign rows, their
    counters recounted in the same transaction)."""
    recount = recount and any(row.campaign_id for row, _, _ in sent)
    with transaction.atomic() if recount else nullcontext():
        with connection.cursor() as cursor:
            cursor.execute(
                _sent_sql(),
                [
                    [row.pk for row, _, _ in sent],
                    [provider for _, provider, _ in sent],
                    [message_id for _, _, message_id in sent],
                    [row.claim_token for row, _, _ in sent],
                    [row.pk for row, _, _ in sent],
                ],
            )
            updated = {pk for (pk,) in cursor.fetchall()}
        if recount:
            _recount({row.campaign_id: row for row, _, _ in sent if row.campaign_id and row.pk in updated}.values())
    for row, provider, _ in sent:
        if row.pk not in updated:
            logger.warning("notification %s: accepted by %s after its claim was lost; not recorded", row.pk, provider)
    notifications_events(
        (row, "sent", provider, detail, {"provider_message_id": message_id})
        for row, provider, message_id in sent
        if row.pk in updated
    )


def record_retry(
    row: Notification,
    error: str,
    *,
    provider: str,
    retry_after: float | None,
    called: bool = True,
    outcome_unknown: bool | None = None,
    recount: bool = True,
) -> None:
    """The attempt did not get it through: wait in PostgreSQL for the next one, or dead-letter it when
    the attempts or the time budget are used up.  `called` False: nobody was called, the attempt
    does not count.  `outcome_unknown` None keeps what an earlier attempt recorded."""
    now = timezone.now()
    policy = retry_policy(row.priority)
    attempts = row.attempts if called else row.attempts - 1
    # A campaign row may wait hours for its turn (rate limit, quiet hours): its budget runs from its
    # first failure; a replayed row's from the replay; a scheduled notification's from its send_at.
    budget_from = row.retry_budget_from or (
        now if row.campaign_id else max(row.created_at, row.send_at or row.created_at)
    )
    moment = policy.next_attempt_at(attempt=attempts, created_at=budget_from, now=now, retry_after=retry_after)
    if moment is None:
        record_dead(row, TransientError(f"retries exhausted: {error}"), provider=provider, recount=recount)
        return
    delay = moment - now
    with transaction.atomic():
        updated = _still_claimed(row).update(
            status=NotificationStatus.FAILED,
            attempts=attempts,
            provider=provider,
            last_error=error[:4000],
            # On PostgreSQL's clock, which the relay compares it with.
            next_attempt_at=ExpressionWrapper(Now() + delay, output_field=DateTimeField()),
            **({} if outcome_unknown is None else {"outcome_unknown": outcome_unknown}),
            first_failed_at=row.first_failed_at or now,
            retry_budget_from=budget_from,
            lease_expires_at=None,
            updated_at=now,
        )
        if updated and recount:
            _recount([row])
    if updated:
        notification_event(
            row,
            "retry" if called else "postponed",
            provider=provider,
            detail=error,
            retry_in_seconds=round(delay.total_seconds(), 1),
        )


def record_wait(row: Notification, until, reason: str) -> None:
    """Wait for the recipient's sake (quiet hours, a paused campaign): no attempt used, no budget spent."""
    _still_claimed(row).update(
        status=NotificationStatus.FAILED,
        attempts=F("attempts") - 1,
        next_attempt_at=until,
        last_error=f"waiting: {reason} until {until.isoformat()}",
        lease_expires_at=None,
        updated_at=timezone.now(),
    )
    notification_event(row, "postponed", detail=reason, until=until.isoformat())


def record_skipped(row: Notification, reason: str) -> None:
    """Not sent and never will be (consent withdrawn, address suppressed, campaign cancelled)."""
    with transaction.atomic():
        updated = _still_claimed(row).update(
            status=NotificationStatus.SKIPPED,
            last_error=reason,
            context=wiped_context(),
            lease_expires_at=None,
            updated_at=timezone.now(),
        )
        if updated:
            _recount([row])
    notification_event(row, "skipped", detail=reason)


def record_dead(
    row: Notification, error: JobError | str, *, provider: str = "", recount: bool = True, claimed: bool = True
) -> None:
    """Dead letter: the row is final, the reason kept for an operator to replay or discard.

    `claimed` False: the caller does not hold the row (it is exhausted at the claim).
    """
    now = timezone.now()
    rows = _still_claimed(row) if claimed else Notification.objects.filter(pk=row.pk)
    with transaction.atomic():
        updated = rows.exclude(status__in=[NotificationStatus.SENT, NotificationStatus.DEAD]).update(
            status=NotificationStatus.DEAD,
            provider=provider or row.provider,
            last_error=str(error)[:4000],
            # A reset code is of no use any more and must not lie around: a replay asks for a new one.
            context=wiped_context(),
            lease_expires_at=None,
            next_attempt_at=None,
            first_failed_at=row.first_failed_at or now,
            updated_at=now,
        )
        if not updated:
            return
        if recount:
            _recount([row])
        deadletter_record(
            job_name=JOB_NAME,
            arguments={"args": [str(row.pk)], "to": row.to, "template": row.template},
            error=error,
            attempts=row.attempts,
            queue=row.queue,
            subject=row,
            dependency=provider or row.provider,
            first_failed_at=row.first_failed_at or now,
        )
    notification_event(row, "dead", provider=provider, detail=str(error))


def _recount(rows: Iterable[Notification]) -> None:
    """A campaign row's outcome moves its batch's and campaign's counters (and completes the campaign when
    it was the last), in the transaction that wrote it."""
    for row in rows:
        if row.campaign_id:
            campaign_recount_for(row)


def claim_lease() -> timedelta:
    """How long a worker owns a claimed row: longer than the task's hard time limit (a live task never
    loses its claim), shorter than the broker's visibility timeout (a redelivered message finds it expired)."""
    return timedelta(seconds=settings.JOBS_CLAIM_LEASE_SECONDS)
