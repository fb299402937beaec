"""A notification's state changes: one structured log line each (JSON fields in production), the
matching Prometheus counters and latency histogram (jobs/metrics.py), and the per-second send rates
of providers and campaigns (jobs/rates.py) that the admin shows."""

import logging
from collections.abc import Iterable
from typing import Any

import redis
from django.utils import timezone

from jobs.masking import mask_personal_data
from jobs.metrics import SharedCounter, SharedHistogram, metric_name, run_in_pipeline
from jobs.rates import RollingCounter, add_counts
from notifications.models import Notification

logger = logging.getLogger("notifications.events")

#: Seconds the displayed send rates average over.
RATE_WINDOW_SECONDS = 10
#: Outcomes that are counted in notify_sends_total (the others are only logged).
COUNTED = {"sent", "retry", "dead", "skipped"}
#: A line per message sent is noise at INFO on the hot path (the metrics count them; the admin and the API
#: show each one): "sending" and "sent" are DEBUG, shown with EVENTS_LOG_LEVEL=DEBUG.
LEVELS = {"sending": logging.DEBUG, "sent": logging.DEBUG, "retry": logging.WARNING, "dead": logging.WARNING}
#: Seconds: from a security alert (well under 1 s) to a marketing retry (an hour).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)

SENDS = SharedCounter(
    metric_name("sends_total"),
    "Delivery attempts by outcome: sent, retry (failed, will retry), dead (dead-lettered), skipped.",
    ("channel", "priority", "provider", "outcome"),
)
RETRIES = SharedCounter(
    metric_name("retries_total"), "Attempts that failed and were scheduled again.", ("channel", "priority")
)
LATENCY = SharedHistogram(
    metric_name("delivery_latency_seconds"),
    "From the moment a notification was written to the moment a provider accepted it.",
    ("channel", "priority"),
    LATENCY_BUCKETS,
)


def provider_rate(provider: str) -> RollingCounter:
    """Sends per second through one provider (every worker adds to it)."""
    return RollingCounter(f"provider:{provider}:sent")


def campaign_rate(campaign_id: int) -> RollingCounter:
    """Sends per second of one campaign."""
    return RollingCounter(f"campaign:{campaign_id}:sent")


def notification_event(
    notification: Notification, outcome: str, *, provider: str = "", detail: str = "", **fields: Any
) -> None:
    """Log and count one state change: sending, sent, retry, dead, skipped, postponed, replayed."""
    notifications_events([(notification, outcome, provider, detail, fields)])


def notifications_events(events: Iterable[tuple[Notification, str, str, str, dict[str, Any]]]) -> None:
    """Several state changes (a campaign call): one log line each, the metrics in one round trip."""
    now = timezone.now()
    outcomes: list[tuple[str, str, str, str]] = []
    latencies: dict[tuple[str, str], list[float]] = {}
    sends: dict[str, int] = {}
    for notification, outcome, provider, detail, fields in events:
        provider = provider or notification.provider or ""
        level = LEVELS.get(outcome, logging.INFO)
        logged = logger.isEnabledFor(level)
        if not logged and outcome not in COUNTED:
            continue
        event = {
            "notification_id": str(notification.pk),
            # Masked: enough to tell two recipients apart in a trace, no one's address in the logs.
            "to": mask_personal_data(notification.to),
            "priority": notification.priority,
            "channel": notification.channel,
            "provider": provider,
            "attempt": notification.attempts,
            "outcome": outcome,
            **({"campaign_id": notification.campaign_id} if notification.campaign_id else {}),
            **fields,
        }
        if outcome == "sent":
            # From the moment it was due: a scheduled notification's wait for its send_at is not latency.
            latency = (
                now - max(notification.created_at, notification.send_at or notification.created_at)
            ).total_seconds()
            event["latency_seconds"] = round(latency, 3)
            latencies.setdefault((notification.channel, notification.priority), []).append(latency)
            counters = [provider_rate(provider)]
            if notification.campaign_id:
                counters.append(campaign_rate(notification.campaign_id))
            for counter in counters:
                sends[counter.name] = sends.get(counter.name, 0) + 1
        if outcome in COUNTED:
            outcomes.append((notification.channel, notification.priority, provider or "none", outcome))
        if not logged:
            continue
        text = (
            f"notification {notification.pk} {outcome} priority={notification.priority} channel={notification.channel}"
        )
        text += f" provider={provider or '-'} attempt={notification.attempts}" + (f": {detail}" if detail else "")
        logger.log(level, text, extra={"event": event})
    if not (outcomes or latencies or sends):
        return

    def record(pipe: redis.client.Pipeline) -> None:
        record_outcomes(outcomes, latencies, pipe=pipe)
        add_counts([(RollingCounter(name), count) for name, count in sends.items()], pipe=pipe)

    run_in_pipeline(record)


def record_outcomes(
    outcomes: Iterable[tuple[str, str, str, str]],
    latencies: dict[tuple[str, str], list[float]],
    *,
    pipe: redis.client.Pipeline,
) -> None:
    """Count (channel, priority, provider, outcome) events and observe latencies, in `pipe`."""
    counts: dict[tuple[str, str, str, str], int] = {}
    for outcome in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
    for labels, count in counts.items():
        SENDS.inc(*labels, amount=count, pipe=pipe)
        if labels[3] == "retry":
            RETRIES.inc(labels[0], labels[1], amount=count, pipe=pipe)
    if latencies:
        LATENCY.observe_many(latencies, pipe=pipe)
