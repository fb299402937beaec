"""The operators' page in the admin (/admin/operations/): queues, breakers, send rates, dead letters and campaigns
at a glance, kept fresh by the page's script reading the same snapshot as JSON (/admin/operations/data)."""

import time
from typing import Any

import redis
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from jobs.models import DeadLetter, DeadLetterStatus
from jobs.redis import queue_head, redis_client
from jobs.selectors import breaker_states, queue_priority_channel
from notifications.campaigns import campaign_progress
from notifications.events import RATE_WINDOW_SECONDS, provider_rate
from notifications.models import Campaign, CampaignStatus, Priority
from settings.topology import all_queue_names

#: A security message (a login code) leaves its queue in well under a second; waiting longer than
#: this means the security pool is down or swamped, so its queue is shown in red.
SECURITY_LATE_SECONDS = 10.0
#: The per-provider send rate is the average over this many seconds (as in the campaign admin).
#: The chart's history: long enough to see a burst end, within what the rolling counters keep.
CHART_SECONDS = 300
#: How often the page asks for a new snapshot; each costs a few dozen Redis round trips.
REFRESH_MILLISECONDS = 2000

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
        "campaigns": [
            _campaign(campaign, rates_readable=rates_readable)
            for campaign in Campaign.objects.filter(status__in=[CampaignStatus.RUNNING, CampaignStatus.PAUSED])
        ],
    }


def _queues(names: list[str], now: float) -> dict[str, Any]:
    rows = []
    for name in names:
        head = queue_head(name)
        if head is None:
            # One failed read means the broker is down: asking the other queues would only add timeouts.
            return {"error": BROKER_DOWN, "rows": []}
        depth, age = head.depth, head.age(now)
        parts = queue_priority_channel(name)
        rows.append(
            {
                "name": name,
                "depth": depth,
                "oldest_age_seconds": round(age, 1) if age is not None else None,
                "late": bool(
                    parts and parts[0] == Priority.SECURITY and age is not None and age > SECURITY_LATE_SECONDS
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


@require_GET
def _operations_page(request: HttpRequest) -> HttpResponse:
    request.current_app = admin.site.name
    context = {
        **admin.site.each_context(request),
        "title": "Operations",
        "snapshot": operations_snapshot(),
        "refresh_milliseconds": REFRESH_MILLISECONDS,
        "security_late_seconds": SECURITY_LATE_SECONDS,
        "chart_seconds": CHART_SECONDS,
        "rate_window_seconds": RATE_WINDOW_SECONDS,
    }
    return TemplateResponse(request, "admin/operations.html", context)


@require_GET
def _operations_data(request: HttpRequest) -> JsonResponse:
    return JsonResponse(operations_snapshot())


#: The page shows dead letters and campaigns: who sees it must be allowed to see both.
VIEW_PERMISSIONS = ("jobs.view_deadletter", "notifications.view_campaign")


def _allowed(view):
    def check(request: HttpRequest, *args, **kwargs):
        if not request.user.has_perms(VIEW_PERMISSIONS):
            raise PermissionDenied(f"the operations page needs {' and '.join(VIEW_PERMISSIONS)}")
        return view(request, *args, **kwargs)

    return check


# Staff only, like the rest of the admin (anyone else is sent to the admin's login page), and only those
# who may view what it shows.
operations_page = admin.site.admin_view(_allowed(_operations_page))
operations_data = admin.site.admin_view(_allowed(_operations_data))

# The stock admin templates come first in the template search (django.contrib.admin is the first
# installed app), so an admin/index.html here would never be found: the index names its own.
admin.site.index_template = "admin/operations_index.html"
