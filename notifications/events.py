"""A notification's state changes: one structured log line each (JSON fields in production), the
matching Prometheus counters and latency histogram (jobs/metrics.py), and the per-second send rates
of providers and campaigns (jobs/rates.py) that the admin shows."""

import logging
from collections.abc import Iterable
from typing import Any

from django.utils import timezone

from jobs.masking import mask_personal_data
from jobs.metrics import record_outcomes
from jobs.rates import RollingCounter, add_counts
from notifications.models import Notification

logger = logging.getLogger("notifications.events")

#: Seconds the displayed send rates average over.
RATE_WINDOW_SECONDS = 10
#: Outcomes that are counted in notify_sends_total (the others are only logged).
COUNTED = {"sent", "retry", "dead", "skipped"}
LEVELS = {"retry": logging.WARNING, "dead": logging.WARNING}


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
            latency = (now - notification.created_at).total_seconds()
            event["latency_seconds"] = round(latency, 3)
            latencies.setdefault((notification.channel, notification.priority), []).append(latency)
            counters = [provider_rate(provider)]
            if notification.campaign_id:
                counters.append(campaign_rate(notification.campaign_id))
            for counter in counters:
                sends[counter.name] = sends.get(counter.name, 0) + 1
        if outcome in COUNTED:
            outcomes.append((notification.channel, notification.priority, provider or "none", outcome))
        text = (
            f"notification {notification.pk} {outcome} priority={notification.priority} channel={notification.channel}"
        )
        text += f" provider={provider or '-'} attempt={notification.attempts}" + (f": {detail}" if detail else "")
        logger.log(LEVELS.get(outcome, logging.INFO), text, extra={"event": event})
    record_outcomes(outcomes, latencies)
    add_counts([(RollingCounter(name), count) for name, count in sends.items()])
