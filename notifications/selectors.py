"""Reads of the notification domain, shaped for who asks (HackSoft's selectors beside services.py): a notification
as an API client may see it, the admin's searches and counts at a year of traffic, a campaign's progress and why it
is not sending, the operations page's snapshot and the campaign gauges."""

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from django.core.exceptions import EmptyResultSet, ValidationError
from django.db import OperationalError, connection, transaction
from django.db.models import Min, Q, QuerySet
from django.urls import reverse
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric

from jobs.metrics import metric_name
from jobs.models import DeadLetter, DeadLetterStatus
from jobs.redis import queue_head, redis_client
from jobs.selectors import breaker_states, queue_facets
from notifications.events import RATE_WINDOW_SECONDS, campaign_rate, provider_rate
from notifications.models import (
    QUIET_HOURS_REASON,
    BatchStatus,
    Campaign,
    CampaignBatch,
    CampaignStatus,
    Notification,
    Priority,
    Recipient,
)
from settings.topology import all_queue_names


def notification_visible_to(user, notification_id: str) -> Notification | None:
    """The notification `notification_id` if `user` may read it (staff: any; others: those they submitted), with
    `shown_status`: the status every reader gives (a cancelled campaign's unsent row is skipped)."""
    notifications = Notification.objects.with_shown_status()
    if not user.is_staff:
        notifications = notifications.filter(created_by=user)
    try:
        return notifications.filter(pk=notification_id).first()
    except ValidationError:  # not a UUID
        return None


def notification_timeline(notification: Notification) -> list:
    """Its events, oldest first."""
    return list(notification.events.order_by("id"))


# --- the notification list at a year of traffic -----------------------------------------

#: Up to this many rows a filtered list is counted exactly; beyond it the planner's estimate stands in (counting
#: millions of rows per page view took seconds at 50 M rows, and nobody pages that far).
EXACT_COUNT_LIMIT = 10_000
#: The most an exact count of a filtered list may take before the estimate is shown instead.
COUNT_TIMEOUT_MS = 150
E164_SEARCH = re.compile(r"^\+[1-9]\d{1,14}$")
CAMPAIGN_SEARCH = re.compile(r"^(?:campaign[:# ]\s*)?(\d{1,12})$", re.IGNORECASE)


@dataclass(frozen=True)
class NotificationSearch:
    """What a search term means, as exact lookups each served by an index (never a scan of the table)."""

    #: "address", "campaign", "key" (id, idempotency key or provider message id) or "" for no term.
    kind: str
    condition: Q
    #: For "campaign": its id; its rows are a primary-key range (counting.campaign_notifications), read in key order.
    campaign_id: int | None = None


def notification_search(term: str) -> NotificationSearch:
    """The rows a search term names, exactly:

    - an e-mail address or an E.164 phone: the rows to it, through the recipient's unique address index and
      notif_recipient_idx (a term that is nobody's address finds nothing);
    - ``campaign:12`` (or a bare number that is a campaign's id): that campaign's rows;
    - anything else: the row with that id, idempotency key (notif_idempotency_key_unique) or provider message id
      (notif_provider_msg_idx; both partial indexes, so the condition repeats their ``<> ''``).
    """
    term = term.strip()
    if not term:
        return NotificationSearch("", Q())
    if "@" in term or E164_SEARCH.match(term):
        field = "email" if "@" in term else "phone"
        addresses = {term, term.lower()}
        recipient_ids = list(Recipient.objects.filter(**{f"{field}__in": addresses}).values_list("pk", flat=True))
        if not recipient_ids:
            return NotificationSearch("address", Q(pk__in=[]))
        return NotificationSearch("address", Q(recipient_id__in=recipient_ids, to__in=addresses))
    campaign = CAMPAIGN_SEARCH.match(term)
    if campaign and (term[0].isalpha() or Campaign.objects.filter(pk=int(campaign.group(1))).exists()):
        return NotificationSearch("campaign", Q(), campaign_id=int(campaign.group(1)))
    condition = (Q(idempotency_key=term) & ~Q(idempotency_key="")) | (
        Q(provider_message_id=term) & ~Q(provider_message_id="")
    )
    try:
        condition |= Q(pk=uuid.UUID(term))
    except ValueError:
        pass
    return NotificationSearch("key", condition)


def count_estimate(rows: QuerySet) -> int:
    """How many rows `rows` holds: exact up to EXACT_COUNT_LIMIT, else PostgreSQL's estimate (pg_class.reltuples for
    a whole table, EXPLAIN's row estimate for a filter), so a list page never counts millions of rows."""
    table = rows.model._meta.db_table
    if not rows.query.where:
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [table])
            (estimate,) = cursor.fetchone()
        # -1: never analysed.  A small figure may be stale (a bulk load before autovacuum's analyse): capped too.
        if estimate > EXACT_COUNT_LIMIT:
            return int(estimate)
        return _capped_count(rows, estimate=max(0, estimate))
    try:
        rows.query.get_compiler(using=rows.db).as_sql()
    except EmptyResultSet:  # e.g. the rows to an address nobody has
        return 0
    plan = json.loads(rows.order_by().explain(format="json"))
    estimate = int(plan[0]["Plan"]["Plan Rows"])
    if estimate > 10 * EXACT_COUNT_LIMIT:
        return estimate
    return _capped_count(rows, estimate=estimate)


def _capped_count(rows: QuerySet, *, estimate: int) -> int:
    """COUNT over a LIMITed subquery: it stops at the cap however many rows match.  Few matches of a column with
    no index (a provider nobody uses) would still read the whole table to prove there are no more, so the count
    gets COUNT_TIMEOUT_MS and the estimate stands in when it runs out."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout')")
        (previous,) = cursor.fetchone()
        try:
            with transaction.atomic():
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(COUNT_TIMEOUT_MS)])
                capped = rows.order_by().values("pk")[: EXACT_COUNT_LIMIT + 1].count()
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [previous])
        except OperationalError:  # the timeout: rolled back to the savepoint, the setting with it
            return max(estimate, 1)
    return capped if capped <= EXACT_COUNT_LIMIT else max(estimate, capped)


def recipient_notifications(recipient_id: int) -> QuerySet:
    """A recipient's notifications newest first (notif_recipient_idx: recipient, created_at descending), each with
    its `shown_status`."""
    return Notification.objects.with_shown_status().filter(recipient_id=recipient_id).order_by("-created_at", "-pk")


def campaign_find(campaign_id: int) -> Campaign | None:
    return Campaign.objects.filter(pk=campaign_id).first()


def campaigns_active():
    """The running and paused campaigns, the ones an operator watches."""
    return Campaign.objects.filter(status__in=[CampaignStatus.RUNNING, CampaignStatus.PAUSED])


def campaign_waiting(campaign: Campaign, *, now: datetime | None = None) -> str | None:
    """Why a campaign is not sending, and until when; None when nothing holds it (or it is over).

    Scheduled: its send_at.  Paused: by whom (a worker's last_error).  Running: what holds its deferred batches
    (campaign_delivery stores each one's reason): quiet hours (until the first zone wakes, how many zones), an open
    circuit breaker, or a busy provider (no rate-limit tokens, or it asked us to wait), each until the earliest
    batch is due again.  One short line: the campaign list shows one line per campaign.
    """
    now = now or timezone.now()
    if campaign.status == CampaignStatus.SCHEDULED:
        return f"scheduled for {_moment(campaign.send_at, now)}" if campaign.send_at else "scheduled"
    if campaign.status == CampaignStatus.PAUSED:
        return f"paused by a worker: {campaign.last_error}" if campaign.last_error else "paused"
    if campaign.status == CampaignStatus.CANCELLED and campaign.remaining_count:
        # Its unsent rows counted as skipped at the cancel; what remains are rows workers held then (calls in
        # flight, a worker that died holding them), ending through their normal path.
        return f"cancelled: {campaign.remaining_count:,} row(s) a worker held at the cancel still finishing"
    if campaign.status != CampaignStatus.RUNNING:
        return None
    deferred = (
        CampaignBatch.objects.filter(campaign=campaign, status=BatchStatus.DEFERRED)
        .values("reason")
        .annotate(until=Min("next_attempt_at"))
    )
    kinds: dict[str, dict[str, Any]] = {}
    zones: set[str] = set()
    for row in deferred:
        reason = row["reason"]
        if reason.startswith(QUIET_HOURS_REASON):
            kind = "quiet"
            zones.update(reason.partition(":")[2].split())
        elif "circuit open" in reason:
            kind = "breaker"
        else:
            kind = "busy"
        held = kinds.setdefault(kind, {"until": row["until"], "reasons": set()})
        if kind != "quiet":
            held["reasons"].add(reason)
        if row["until"] is not None and (held["until"] is None or row["until"] < held["until"]):
            held["until"] = row["until"]
    parts = []
    for kind, held in sorted(kinds.items(), key=lambda item: item[1]["until"] or now):
        until = _moment(held["until"], now) if held["until"] else "its next run"
        # A provider's answer starts with its name ("postmark: circuit open").
        providers = ", ".join(sorted({reason.partition(":")[0] for reason in held["reasons"]})) or "provider"
        if kind == "quiet":
            parts.append(f"quiet hours until {until} in {len(zones)} time zone{'s' if len(zones) != 1 else ''}")
        elif kind == "breaker":
            parts.append(f"{providers} circuit open until {until}")
        else:
            parts.append(f"waiting for rate-limit tokens / {providers} busy until {until}")
    return "; ".join(parts) or None


def _moment(at: datetime, now: datetime) -> str:
    """A time in UTC, with its date when it is not within the next day."""
    at = at.astimezone(UTC)
    if timedelta(0) <= at - now < timedelta(hours=20) or abs(at - now) < timedelta(minutes=1):
        return at.strftime("%H:%M:%S UTC") if at - now < timedelta(minutes=10) else at.strftime("%H:%M UTC")
    return at.strftime("%Y-%m-%d %H:%M UTC")


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
        "waiting": campaign_waiting(campaign),
        "send_at": campaign.send_at.isoformat() if campaign.send_at else None,
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
