"""Reads of the notification domain, shaped for who asks (HackSoft's selectors beside services.py): a notification
as an API client may see it, a campaign's progress, the operations page's snapshot and the campaign gauges."""

import time
from collections.abc import Iterator
from typing import Any

import redis
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric

from jobs.metrics import metric_name
from jobs.models import DeadLetter, DeadLetterStatus
from jobs.redis import queue_head, redis_client
from jobs.selectors import breaker_states, queue_facets
from notifications.events import RATE_WINDOW_SECONDS, campaign_rate, provider_rate
from notifications.models import Campaign, CampaignStatus, Notification, Priority
from settings.topology import all_queue_names


def notification_visible_to(user, notification_id: str) -> Notification | None:
    """The notification `notification_id` if `user` may read it (staff: any; others: those they submitted)."""
    notifications = Notification.objects.all()
    if not user.is_staff:
        notifications = notifications.filter(created_by=user)
    try:
        return notifications.filter(pk=notification_id).first()
    except ValidationError:  # not a UUID
        return None


def notification_timeline(notification: Notification) -> list:
    """Its events, oldest first."""
    return list(notification.events.order_by("id"))


def campaign_find(campaign_id: int) -> Campaign | None:
    return Campaign.objects.filter(pk=campaign_id).first()


def campaigns_active():
    """The running and paused campaigns, the ones an operator watches."""
    return Campaign.objects.filter(status__in=[CampaignStatus.RUNNING, CampaignStatus.PAUSED])


def campaign_progress(campaign: Campaign) -> dict[str, Any]:
    """What an operator wants to see: counts, percent done, current rate and time to finish."""
    total = campaign.materialized_count
    rate = campaign_rate(campaign.pk).rate(RATE_WINDOW_SECONDS) if campaign.status == CampaignStatus.RUNNING else 0.0
    remaining = campaign.remaining_count
    return {
        "id": campaign.pk,
        "name": campaign.name,
        "status": campaign.status,
        "fanout_complete": campaign.fanout_completed_at is not None,
        "segments": {"done": campaign.segments_done, "total": campaign.segments_total},
        "recipients": total,
        "sent": campaign.sent_count,
        "failed": campaign.dead_count,
        "skipped": campaign.skipped_count,
        "remaining": remaining,
        "percent_done": round(100 * campaign.done_count / total, 1) if total else 0.0,
        "rate_per_second": round(rate, 1),
        "eta_seconds": round(remaining / rate) if rate > 0 and remaining else None,
        "last_error": campaign.last_error or None,
        "started_at": campaign.started_at.isoformat() if campaign.started_at else None,
        "finished_at": campaign.finished_at.isoformat() if campaign.finished_at else None,
    }


# --- the operations page ------------------------------------------------------

#: A security message (a login code) leaves its queue in well under a second; waiting longer than
#: this means the security pool is down or swamped, so its queue is shown in red.
SECURITY_LATE_SECONDS = 10.0
#: The per-provider send rate is the average over this many seconds (as in the campaign admin).
#: The chart's history: long enough to see a burst end, within what the rolling counters keep.
CHART_SECONDS = 300

BROKER_DOWN = "unavailable: the broker (Redis) does not answer"
RATES_DOWN = "unavailable: Redis does not answer"


def operations_snapshot(*, queues: list[str] | None = None, now: float | None = None) -> dict[str, Any]:
    """Everything the operations page shows, as JSON-ready data: `queues` defaults to every queue of
    the topology, `now` (epoch seconds) is the moment queue ages and send rates are measured at.

    A part that lives in Redis carries ``error`` (None when it could be read) instead of
    raising, so Redis being down leaves the PostgreSQL parts on the page.
    """
    now = now if now is not None else time.time()
    providers, chart = _providers_and_chart(now)
    rates_readable = providers["error"] is None
    return {
        "generated_at": timezone.now().isoformat(),
        "queues": _queues(queues if queues is not None else all_queue_names(), now),
        "providers": providers,
        "sends_per_second": chart,
        "dead_letters": {
            "open": DeadLetter.objects.filter(status=DeadLetterStatus.OPEN).count(),
            "url": f"{reverse('admin:jobs_deadletter_changelist')}?status__exact={DeadLetterStatus.OPEN}",
        },
        "campaigns": [_campaign(campaign, rates_readable=rates_readable) for campaign in campaigns_active()],
    }


def _queues(names: list[str], now: float) -> dict[str, Any]:
    rows = []
    for name in names:
        head = queue_head(name)
        if head is None:
            # One failed read means the broker is down: asking the other queues would only add timeouts.
            return {"error": BROKER_DOWN, "rows": []}
        depth, age = head.depth, head.age(now)
        rows.append(
            {
                "name": name,
                "depth": depth,
                "oldest_age_seconds": round(age, 1) if age is not None else None,
                "late": bool(
                    queue_facets(name).get("priority") == Priority.SECURITY
                    and age is not None
                    and age > SECURITY_LATE_SECONDS
                ),
            }
        )
    return {"error": None, "rows": rows}


def _providers_and_chart(now: float) -> tuple[dict[str, Any], dict[str, Any]]:
    end = int(now)
    try:
        states = breaker_states()
        # The rolling counters read zero when Redis is down; "0/s" must not stand for "unknown".
        redis_client().ping()
    except redis.RedisError:
        return {"error": RATES_DOWN, "rows": []}, {"error": RATES_DOWN, "end": end, "counts": []}
    rows, totals = [], [0] * CHART_SECONDS
    for state in states:
        # One read per provider: the rate is the tail of the chart's series.
        counts = [count for _, count in provider_rate(state.name).series(CHART_SECONDS, now=now)]
        for index, count in enumerate(counts):
            totals[index] += count
        rows.append(
            {
                "name": state.name,
                "state": state.state,
                "failures": state.failures,
                "open_since": state.open_since.isoformat() if state.open_since else None,
                "rate_per_second": round(sum(counts[-RATE_WINDOW_SECONDS:]) / RATE_WINDOW_SECONDS, 1),
            }
        )
    return {"error": None, "rows": rows}, {"error": None, "end": end, "counts": totals}


def _campaign(campaign: Campaign, *, rates_readable: bool) -> dict[str, Any]:
    progress = campaign_progress(campaign)
    if not rates_readable:
        progress.update(rate_per_second=None, eta_seconds=None)
    return {**progress, "url": reverse("admin:notifications_campaign_change", args=[campaign.pk])}


def campaign_metrics() -> Iterator[Metric]:
    """Prometheus gauges of the running and paused campaigns (registered with jobs.metrics at start-up)."""
    messages = GaugeMetricFamily(
        metric_name("campaign_messages"), "Notifications of a campaign by state.", labels=["campaign", "name", "state"]
    )
    rate = GaugeMetricFamily(
        metric_name("campaign_send_rate"), "Sends per second of a campaign.", labels=["campaign", "name"]
    )
    for campaign in campaigns_active():
        progress = campaign_progress(campaign)
        labels = [str(campaign.pk), campaign.name]
        for state in ("sent", "failed", "skipped", "remaining"):
            messages.add_metric([*labels, state], float(progress[state]))
        rate.add_metric(labels, float(progress["rate_per_second"]))
    yield messages
    yield rate
