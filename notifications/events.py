"""A notification's state changes: one structured log line each (JSON fields in production) and the
matching Prometheus counters and latency histogram (jobs/metrics.py)."""

import logging
from collections.abc import Iterable
from typing import Any

from django.utils import timezone

from jobs.metrics import record_outcomes
from notifications.models import Notification

logger = logging.getLogger("notifications.events")

#: Outcomes that are counted in notify_sends_total (the others are only logged).
COUNTED = {"sent", "retry", "dead", "skipped"}
LEVELS = {"retry": logging.WARNING, "dead": logging.WARNING}


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
    for notification, outcome, provider, detail, fields in events:
        provider = provider or notification.provider or ""
        event = {
            "notification_id": str(notification.pk),
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
        if outcome in COUNTED:
            outcomes.append((notification.channel, notification.priority, provider or "none", outcome))
        text = (
            f"notification {notification.pk} {outcome} priority={notification.priority} channel={notification.channel}"
        )
        text += f" provider={provider or '-'} attempt={notification.attempts}" + (f": {detail}" if detail else "")
        logger.log(LEVELS.get(outcome, logging.INFO), text, extra={"event": event})
    record_outcomes(outcomes, latencies)
