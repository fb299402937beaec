"""The campaign benchmarks of `make bench`: a 5 M-recipient fan-out, the global rate limit held by 4 worker
processes, and security alerts submitted over HTTP while marketing saturates the e-mail provider; and the
notification admin's pages at a year of traffic (50 M rows).

Every figure comes from real processes (gunicorn, `celery worker` pools, the sandbox) on the bench's own
database and Redis database; nothing here is asserted, it is measured and written to bench-results/.
"""

import asyncio
import bisect
import os
import re
import statistics
import subprocess  # nosec B404 - the bench starts our own manage.py
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import psutil
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from harness.processes import WebProcess, WorkerProcess
from harness.sandbox.process import SandboxProcess, free_port
from harness.waiting import wait_until
from jobs.redis import broker_client
from notifications.counting import campaign_notification_id, campaign_notifications
from notifications.models import (
    ApiToken,
    Campaign,
    CampaignBatch,
    Notification,
    NotificationEvent,
    NotificationStatus,
    Recipient,
)
from settings.topology import FANOUT_QUEUE, Priority, pool_queues

MARKETING_QUEUE = "marketing.email"
#: The kombu Redis transport keeps reserved-but-unacknowledged messages in these keys.
UNACKED_KEYS = ("unacked", "unacked_index")


class Platform:
    """The processes one scenario needs; stopped together."""

    def __init__(self, log_dir: Path, sandbox: SandboxProcess) -> None:
        self.log_dir = log_dir
        self.sandbox = sandbox
        self.processes: list[Any] = []

    def pool(self, priority: str, *, concurrency: int, env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(
            f"bench-{priority}-{uuid.uuid4().hex[:6]}",
            queues=pool_queues(priority),
            log_path=self.log_dir / f"worker-{priority}.log",
            concurrency=concurrency,
            env={**os.environ, **(env or {})},
        )
        self.processes.append(worker.start())
        return worker

    def web(self, *, workers: int = 2, threads: int = 1) -> WebProcess:
        web = WebProcess(port=free_port(), log_path=self.log_dir / "web.log", workers=workers, threads=threads)
        self.processes.append(web.start())
        return web

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()


def reset_campaigns() -> None:
    """Empty the campaign tables of the bench database (never the development one: see the Makefile)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE notifications_notification, notifications_campaign, notifications_campaignsegment, "
            "notifications_campaignbatch, notifications_suppression, jobs_deadletter"
        )
    broker_client().flushdb()


def ensure_recipients(count: int) -> float | None:
    """At least `count` recipients in the bench database; seconds spent seeding (None if none were needed)."""
    have = Recipient.objects.count()
    if have >= count:
        return None
    started = time.monotonic()
    call_command("seed_recipients", count - have)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE notifications_recipient")
    return time.monotonic() - started


def api_token() -> str:
    """A new API token of the bench user, who may send and start campaigns."""
    user, _ = get_user_model().objects.get_or_create(username="bench")
    user.user_permissions.add(
        *Permission.objects.filter(
            codename__in=["add_campaign", "change_campaign", "add_notification", "send_security", "send_transactional"]
        )
    )
    _, key = ApiToken.issue(user, may_send_security=True)
    return key


def api_session(base_url: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Token {api_token()}"
    session.base_url = base_url
    return session


def api_load(*, web: WebProcess, count: int, connections: int, run: str) -> dict[str, Any]:
    """POST `count` transactional e-mails to /api/v1/notifications over `connections` concurrent keep-alive
    connections (an asyncio client in this process); requests/s, latency percentiles, status codes."""
    url = f"{web.url}/api/v1/notifications"
    headers = {"Authorization": f"Token {api_token()}"}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    numbers = iter(range(count))

    async def connection_loop(session: aiohttp.ClientSession) -> None:
        for i in numbers:
            body = {"priority": Priority.TRANSACTIONAL, "channel": "email", "template": "order_shipped",
                    "to": f"api-{run}-{i}@example.com", "context": {"name": "Ada", "order_number": f"B-{i}"}}  # fmt: skip
            began = time.perf_counter()
            async with session.post(url, json=body) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            latencies.append(time.perf_counter() - began)

    async def main() -> float:
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            began = time.perf_counter()
            await asyncio.gather(*(connection_loop(session) for _ in range(connections)))
            return time.perf_counter() - began

    elapsed = asyncio.run(main())
    latencies.sort()
    return {
        "requests": count,
        "connections": connections,
        "requests_per_second": round(count / elapsed, 1),
        "latency_ms": {
            "p50": round(statistics.median(latencies) * 1000, 1),
            "p99": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000, 1),
            "max": round(latencies[-1] * 1000, 1),
        },
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
    }


def api(*, platform: Platform, count: int, connections: int, concurrency: int) -> dict[str, Any]:
    """Scenario: the HTTP API under load, gunicorn as `make run` starts it (2 workers, 4 threads each): first
    with the workers stopped (the web tier alone), then while a transactional pool drains what it accepted."""
    web = platform.web(workers=2, threads=4)
    run = uuid.uuid4().hex[:8]
    api_load(web=web, count=min(count, 200), connections=connections, run=f"{run}-warm")
    alone = api_load(web=web, count=count, connections=connections, run=f"{run}-alone")
    platform.pool(Priority.TRANSACTIONAL, concurrency=concurrency)
    draining = api_load(web=web, count=count, connections=connections, run=f"{run}-drain")
    accepted = Notification.objects.filter(to__startswith=f"api-{run}-")
    wait_until(
        lambda: not accepted.exclude(status=NotificationStatus.SENT).exists(),
        timeout=600,
        interval=0.5,
        what="the API's notifications to be sent",
    )
    accepted.delete()
    return {
        "scenario": "HTTP API, POST /api/v1/notifications",
        "web": "gunicorn, 2 workers x 4 threads",
        "workers_stopped": alone,
        "while_workers_drain": {**draining, "worker_processes": concurrency},
    }


class RedisSampler(threading.Thread):
    """Samples the broker every 100 ms: Redis memory, and the memory and length of the campaign queues."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.client = broker_client()
        self.baseline = int(self.client.info("memory")["used_memory"])
        self.peak_used = self.baseline
        self.peak_queue_bytes = 0
        self.peak_queue_length = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            pipe = self.client.pipeline(transaction=False)
            pipe.info("memory")
            for key in (MARKETING_QUEUE, FANOUT_QUEUE, *UNACKED_KEYS):
                pipe.memory_usage(key, samples=0)
            pipe.llen(MARKETING_QUEUE)
            info, *usages, length = pipe.execute()
            self.peak_used = max(self.peak_used, int(info["used_memory"]))
            self.peak_queue_bytes = max(self.peak_queue_bytes, sum(u or 0 for u in usages))
            self.peak_queue_length = max(self.peak_queue_length, int(length))
            time.sleep(0.1)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def _published_batches(campaign: Campaign) -> int:
    """Batch messages published so far: still queued in Redis, reserved by a worker, or already taken."""
    client = broker_client()
    taken = CampaignBatch.objects.filter(campaign=campaign).exclude(status="queued").count()
    return int(client.llen(MARKETING_QUEUE)) + int(client.hlen("unacked")) + taken


def _bench_campaign(api: requests.Session, url: str, name: str) -> int:
    """A newsletter campaign to every consenting recipient, created through the API; its id."""
    created = api.post(
        f"{url}/api/v1/campaigns",
        json={"name": name, "template": "newsletter", "channel": "email",
              "context": {"headline": "Benchmark", "body": "Hello"}},
        timeout=10,
    )  # fmt: skip
    created.raise_for_status()
    return created.json()["id"]


def fanout(*, recipients: int, platform: Platform, web: WebProcess, concurrency: int) -> dict[str, Any]:
    """Scenario 1: start a campaign to every consenting recipient; time the answer, the fan-out, the broker's memory."""
    seeded = ensure_recipients(recipients)
    reset_campaigns()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE notifications_notification")
    platform.pool(Priority.MARKETING, concurrency=concurrency)
    api = api_session(web.url)
    campaign_id = _bench_campaign(api, web.url, "bench fan-out")
    sampler = RedisSampler()
    sampler.start()
    started = time.monotonic()
    answer = api.post(f"{web.url}/api/v1/campaigns/{campaign_id}/start", json={}, timeout=30)
    answered = time.monotonic()
    answer.raise_for_status()
    campaign = Campaign.objects.get(pk=campaign_id)

    def every_batch_enqueued() -> bool:
        campaign.refresh_from_db()
        if campaign.fanout_completed_at is None:
            return False
        return _published_batches(campaign) >= CampaignBatch.objects.filter(campaign=campaign).count()

    wait_until(every_batch_enqueued, timeout=600, interval=0.05, what="the fan-out to write and enqueue every batch")
    enqueued = time.monotonic()
    total_batches = CampaignBatch.objects.filter(campaign=campaign).count()
    time.sleep(1.0)
    sampler.stop()
    campaign.refresh_from_db()
    return {
        "scenario": "fan-out of one campaign",
        "recipients_in_database": Recipient.objects.count(),
        "seeded_seconds": round(seeded, 1) if seeded is not None else None,
        "notifications_materialised": campaign.materialized_count,
        "batches": total_batches,
        "segments": campaign.segments_total,
        "marketing_worker_processes": concurrency,
        "start_answer_seconds": round(answered - started, 3),
        "materialised_and_enqueued_seconds": round(enqueued - started, 1),
        "rows_per_second": round(campaign.materialized_count / (enqueued - started)),
        "sent_meanwhile": campaign.sent_count,
        "peak_redis_used_memory_delta_mb": round((sampler.peak_used - sampler.baseline) / 2**20, 1),
        "peak_queue_memory_mb": round(sampler.peak_queue_bytes / 2**20, 1),
        "peak_queue_length": sampler.peak_queue_length,
        "campaign_id": campaign.pk,
    }


def _ledger_since(sandbox: SandboxProcess, seq: int) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    while True:
        page = sandbox.entries(since_seq=seq, limit=10_000)
        if not page:
            return entries
        entries.extend(page)
        seq = page[-1]["seq"]


def _busiest_window(moments: list[float], width: float = 1.0) -> int:
    moments = sorted(moments)
    return max((bisect.bisect_left(moments, t + width) - i for i, t in enumerate(moments)), default=0)


def limiter(*, platform: Platform, duration: float, concurrency: int) -> dict[str, Any]:
    """Scenario 2: marketing e-mail from `concurrency` worker processes against the global limit, for `duration` s.

    Marketing's share is set to 1 for this run, so the figure is the limiter's, not the share's.
    """
    rate = settings.JOBS_RATE_LIMITS["postmark"]["rate_per_second"]
    result = _campaign_sends(
        platform=platform, duration=duration, concurrency=concurrency, env={"POSTMARK_MARKETING_SHARE": "1.0"}
    )
    return {
        "scenario": "global rate limit, marketing e-mail",
        "limit_per_second": rate,
        "burst": settings.JOBS_RATE_LIMITS["postmark"].get("burst"),
        **result,
        "achieved_share_of_limit": round(result["achieved_per_second"] / rate, 4),
    }


#: The provider's limit for the unlimited run: far above what two cores can send, with a burst that lets one
#: call carry a full Postmark batch (group_size is half the burst, at most 500).
UNLIMITED = {"POSTMARK_RATE_PER_SECOND": "10000000", "POSTMARK_BURST": "1000", "POSTMARK_MARKETING_SHARE": "1.0"}


def unlimited(*, platform: Platform, duration: float, concurrency: int) -> dict[str, Any]:
    """Scenario 4: the campaign batch path with the provider's limit lifted: what the machine itself can send."""
    return {
        "scenario": "campaign sends, provider limit lifted",
        "limit_per_second": int(UNLIMITED["POSTMARK_RATE_PER_SECOND"]),
        **_campaign_sends(platform=platform, duration=duration, concurrency=concurrency, env=UNLIMITED),
    }


def _campaign_sends(*, platform: Platform, duration: float, concurrency: int, env: dict[str, str]) -> dict[str, Any]:
    """The running campaign's marketing e-mail from `concurrency` worker processes (their environment `env`),
    counted at the sandbox over `duration` seconds of steady state."""
    worker = platform.pool(Priority.MARKETING, concurrency=concurrency, env=env)
    sandbox = platform.sandbox
    sandbox.clear()  # a fresh ledger: what is read back is this run's, and the sandbox stays small
    start_seq = 0
    # Measure the steady state: the window opens once sends flow.
    wait_until(
        lambda: sandbox.entries(since_seq=start_seq, limit=1), timeout=60, what="a marketing e-mail in the sandbox"
    )
    time.sleep(2.0)
    memory_before = pool_memory(worker)
    window_start = time.time()
    time.sleep(duration)
    window_end = time.time()
    memory_after = pool_memory(worker)
    entries = [e for e in _ledger_since(sandbox, start_seq) if window_start <= e["accepted_ts"] < window_end]
    moments = [e["accepted_ts"] for e in entries]
    per_second: dict[int, int] = {}
    for moment in moments:
        per_second[int(moment)] = per_second.get(int(moment), 0) + 1
    keys = [e["idempotency_key"] for e in entries]
    return {
        "worker_processes": concurrency,
        "seconds": round(window_end - window_start, 1),
        "sent": len(entries),
        "achieved_per_second": round(len(entries) / (window_end - window_start), 1),
        "max_in_any_1s_window": _busiest_window(moments),
        "max_in_a_calendar_second": max(per_second.values(), default=0),
        "per_second": [per_second.get(second, 0) for second in range(int(window_start) + 1, int(window_end))],
        "duplicates": len(keys) - len(set(keys)),
        "worker_rss_mb_before_and_after": {
            pid: [before, memory_after.get(pid)] for pid, before in memory_before.items()
        },
    }


def pool_memory(worker: WorkerProcess) -> dict[str, float]:
    """Resident memory (MB) of a pool's processes, by pid: the main process and each child."""
    main = psutil.Process(worker.pid)
    return {
        str(process.pid): round(process.memory_info().rss / 2**20, 1)
        for process in [main, *main.children(recursive=True)]
    }


def blast(*, platform: Platform, web: WebProcess, duration: float, per_second: float, concurrency: int) -> dict:
    """Scenario 3: security alerts through the HTTP API at `per_second` while marketing saturates its share."""
    platform.pool(Priority.MARKETING, concurrency=concurrency)
    platform.pool(Priority.SECURITY, concurrency=2)
    sandbox = platform.sandbox
    sandbox.clear()
    start_seq = 0
    time.sleep(3.0)  # marketing at full speed before the first alert
    api = api_session(web.url)
    run = uuid.uuid4().hex[:8]
    submitted: dict[str, float] = {}
    statuses: list[int] = []
    started = time.time()
    for i in range(int(duration * per_second)):
        moment = started + i / per_second
        time.sleep(max(0.0, moment - time.time()))
        to = f"alert-{run}-{i}@example.com"
        submitted[to] = time.time()
        response = api.post(
            f"{web.url}/api/v1/notifications",
            json={"priority": Priority.SECURITY, "channel": "email", "template": "password_reset", "to": to,
                  "context": {"code": f"{i:06d}"}},
            timeout=10,
        )  # fmt: skip
        statuses.append(response.status_code)
    accepted: dict[str, float] = {}
    marketing_moments: list[float] = []

    def every_alert_accepted() -> bool:
        entries = _ledger_since(sandbox, start_seq)
        accepted.clear()
        accepted.update({e["to"]: e["accepted_ts"] for e in entries if e["to"] in submitted})
        if len(accepted) < len(submitted):
            return False
        marketing_moments.extend(e["accepted_ts"] for e in entries if e["to"] not in submitted)
        return True

    # Whatever arrived within a minute is reported; a missing alert shows as alerts_delivered < submitted.
    wait_until(every_alert_accepted, timeout=60, interval=1.0)
    latencies = sorted(accepted[to] - submitted[to] for to in accepted)
    in_window = [m for m in marketing_moments if started <= m < started + duration]

    def percentile(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1) if latencies else -1

    return {
        "scenario": "security alerts under a marketing blast",
        "alerts_submitted": len(submitted),
        "http_202": statuses.count(202),
        "alerts_delivered": len(accepted),
        "submit_to_provider_ms": {
            "p50": round(statistics.median(latencies) * 1000, 1) if latencies else -1,
            "p99": percentile(0.99),
            "max": round(latencies[-1] * 1000, 1) if latencies else -1,
        },
        "marketing_per_second_meanwhile": round(len(in_window) / duration, 1),
        "marketing_share_cap_per_second": settings.JOBS_RATE_LIMITS["postmark"]["rate_per_second"]
        * settings.JOBS_RATE_LIMITS["postmark"]["shares"][Priority.MARKETING],
    }


def receipts_and_webhooks(*, platform: Platform, web: WebProcess, count: int, connections: int) -> dict[str, Any]:
    """Scenario: `count` signed Twilio status callbacks POSTed to the web (2 gunicorn workers) over `connections`
    connections, each naming a sent notification (events ingested per second); then those events dispatched to
    a webhook endpoint (the sandbox's receiver) and delivered by the marketing pool (deliveries per second)."""
    from notifications.models import NotificationEvent, WebhookEndpoint
    from notifications.receipts import twilio_signature
    from notifications.webhooks import webhook_endpoint_create, webhooks_dispatch_all

    run = uuid.uuid4().hex[:8]
    token = next(p for p in settings.NOTIFICATIONS_PROVIDERS["sms"] if p["name"] == "twilio")["options"]["auth_token"]
    recipient, _ = Recipient.objects.get_or_create(phone="+14150000000")
    rows = [
        Notification(
            recipient=recipient, priority=Priority.TRANSACTIONAL, channel="sms", to=f"+1415{i:07d}",
            template="order_shipped",
            status=NotificationStatus.SENT, provider="twilio", provider_message_id=f"SM{run}{i:08d}",
            idempotency_key=f"bench-receipts-{run}-{i}",
        )
        for i in range(count)
    ]  # fmt: skip
    Notification.objects.bulk_create(rows, batch_size=5000)
    WebhookEndpoint.objects.filter(description="bench").delete()
    endpoint = webhook_endpoint_create(
        url=platform.sandbox.url("/bench-receiver/hooks/app"), event_kinds=["delivered"], rate_per_second=10_000,
        description="bench",
    )  # fmt: skip
    platform.sandbox.clear()
    url = f"{web.url}/receipts/twilio"
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    numbers = iter(range(count))

    async def connection_loop(session: aiohttp.ClientSession) -> None:
        for i in numbers:
            params = {"MessageSid": f"SM{run}{i:08d}", "MessageStatus": "delivered", "To": f"+1415{i:07d}"}
            headers = {"X-Twilio-Signature": twilio_signature(token, url, params)}
            began = time.perf_counter()
            async with session.post(url, data=params, headers=headers) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            latencies.append(time.perf_counter() - began)

    async def main() -> float:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
            began = time.perf_counter()
            await asyncio.gather(*(connection_loop(session) for _ in range(connections)))
            return time.perf_counter() - began

    platform.pool(Priority.SECURITY, concurrency=2)
    alerts_before = _alert_stream(web, platform.sandbox, seconds=10.0, per_second=5.0)
    stop = threading.Event()
    alerts_during: list[float] = []

    def alerts_beside_the_flood() -> None:
        while not stop.is_set():
            alerts_during.extend(_alert_stream(web, platform.sandbox, seconds=2.0, per_second=5.0, wait=False))

    try:
        stream = threading.Thread(target=alerts_beside_the_flood, daemon=True)
        stream.start()
        elapsed = asyncio.run(main())
        stop.set()
        stream.join()
        latencies.sort()
        stored = NotificationEvent.objects.filter(provider_message_id__startswith=f"SM{run}").count()
        began = time.perf_counter()
        dispatched = 0
        while dispatched < stored:
            done = webhooks_dispatch_all(budget_seconds=60)
            dispatched += done
            if not done:
                break
        dispatch_seconds = time.perf_counter() - began
        platform.pool(Priority.MARKETING, concurrency=4)
        began = time.perf_counter()
        wait_until(
            lambda: platform.sandbox.ledger(provider="bench-receiver", limit=0)["count"] >= stored,
            timeout=600,
            interval=0.5,
        )
        deliver_seconds = time.perf_counter() - began
        delivered = platform.sandbox.ledger(provider="bench-receiver", limit=0)["count"]
    finally:
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(active=False)
    return {
        "scenario": "delivery receipts in, status webhooks out",
        "callbacks": count,
        "connections": connections,
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
        "events_stored": stored,
        "receipts_per_second": round(count / elapsed, 1),
        "receipt_latency_ms": {
            "p50": round(statistics.median(latencies) * 1000, 1),
            "p99": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000, 1),
        },
        "security_alert_ms_before_flood": _percentiles(alerts_before),
        "security_alert_ms_during_flood": _percentiles(alerts_during),
        "dispatched_per_second": round(dispatched / dispatch_seconds, 1) if dispatch_seconds else None,
        "webhooks_delivered": delivered,
        "webhook_deliveries_per_second": round(delivered / deliver_seconds, 1) if deliver_seconds else None,
    }


def _percentiles(seconds: list[float]) -> dict[str, float]:
    values = sorted(seconds)
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "p50": round(statistics.median(values) * 1000, 1),
        "p99": round(values[min(len(values) - 1, int(0.99 * len(values)))] * 1000, 1),
    }


def _alert_stream(
    web: WebProcess, sandbox: SandboxProcess, *, seconds: float, per_second: float, wait: bool = True
) -> list[float]:
    """Security e-mails through the API at `per_second` for `seconds`; each one's seconds from submit to the
    provider (the sandbox ledger), once all arrived (or a minute passed)."""
    api = api_session(web.url)
    run = uuid.uuid4().hex[:8]
    submitted: dict[str, float] = {}
    started = time.time()
    for i in range(int(seconds * per_second)):
        time.sleep(max(0.0, started + i / per_second - time.time()))
        to = f"alert-{run}-{i}@example.com"
        submitted[to] = time.time()
        api.post(
            f"{web.url}/api/v1/notifications",
            json={"priority": Priority.SECURITY, "channel": "email", "template": "password_reset", "to": to,
                  "context": {"code": f"{i:06d}"}},
            timeout=10,
        )  # fmt: skip
    accepted: dict[str, float] = {}

    def arrived() -> bool:
        for entry in sandbox.entries(provider="postmark", limit=1_000_000):
            if entry["to"] in submitted:
                accepted[entry["to"]] = entry["accepted_ts"]
        return len(accepted) == len(submitted)

    wait_until(arrived, timeout=60 if wait else 30, interval=0.5)
    return [accepted[to] - submitted[to] for to in accepted]


# --- retention -----------------------------------------------------------------------------

#: How old the seeded rows are: past every keeping time but the dead letters'.
EXPIRED_DAYS = 200

_SEED_EXPIRED_SQL = """
WITH written AS (
    INSERT INTO notifications_notification
        (id, idempotency_key, request_fingerprint, priority, channel, recipient_id, "to", template, context, status,
         attempts, provider, provider_message_id, last_error, outcome_unknown, campaign_id, created_at, updated_at,
         sent_at)
    SELECT (%(prefix)s || '8' || lpad(to_hex(g), 15, '0'))::uuid, '', '', 'marketing', 'email', -g,
           'expired-' || g || '@example.com', 'newsletter', '{}', 'sent', 1, 'postmark', 'pm-' || g, '', false,
           %(campaign)s, %(at)s, %(at)s, %(at)s
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) g
    RETURNING id, created_at
)
INSERT INTO notifications_notificationevent (notification_id, kind, at, provider, data, provider_message_id, created_at)
SELECT id, 'sent', created_at, 'postmark', '{}', '', created_at FROM written
"""


def seed_expired(count: int) -> float | None:
    """At least `count` sent campaign notifications (each with its event) older than any keeping time but the dead
    letters', in a finished campaign; seconds spent seeding (None if none were needed).  Their recipient ids are
    negative: no recipient has them, so no other scenario's clean-up finds its recipients protected by them."""
    from jobs.partitions import leaf_add
    from notifications.counting import campaign_key_prefix
    from notifications.partitions import FAMILY, campaign_leaf

    cutoff = timezone.now() - timedelta(days=EXPIRED_DAYS - 1)
    have = Notification.objects.filter(created_at__lt=cutoff).count()
    if have >= count:
        return None
    started = time.monotonic()
    at = timezone.now() - timedelta(days=EXPIRED_DAYS)
    campaign = Campaign.objects.create(
        name="expired (bench)", template="newsletter", channel="email", status="completed",
        materialized_count=count - have, sent_count=count - have, started_at=at, finished_at=at,
    )  # fmt: skip
    # Its own partition, as the fan-out would have made (notifications/partitions.py): retention drops it whole.
    leaf_add(FAMILY, campaign_leaf(campaign.pk, campaign.pk + 1))
    chunk = 500_000
    for first in range(1, count - have + 1, chunk):
        last = min(first + chunk - 1, count - have)
        with connection.cursor() as cursor:
            cursor.execute(
                _SEED_EXPIRED_SQL,
                {"prefix": campaign_key_prefix(campaign.pk), "campaign": campaign.pk, "at": at, "first": first,
                 "last": last},
            )  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE notifications_notification")
        cursor.execute("VACUUM ANALYZE notifications_notificationevent")
        # The seeding's gigabytes of WAL written out now, not by a checkpoint during the sends measured next.
        cursor.execute("CHECKPOINT")
    return time.monotonic() - started


def prune_process(log_dir: Path) -> "subprocess.Popen":
    """`manage.py prune` as operators run it, on the bench's database."""
    log = open(log_dir / "prune.log", "w")  # noqa: SIM115 - closed with the process by the caller
    return subprocess.Popen(  # nosec B603 - our own interpreter and manage.py, no shell
        [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "prune"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
    )


# --- the admin at a year of traffic -------------------------------------------------------

#: Timed runs of each admin page after one warm-up; best and median are reported.
ADMIN_RUNS = 5


def ensure_notifications(count: int) -> dict[str, Any]:
    """At least `count` notifications in the bench database, kept for later runs: only the missing ones are seeded."""
    have = Notification.objects.count()
    seeded = None
    if have < count:
        started = time.monotonic()
        call_command("seed_notifications", str(count - have))
        seeded = time.monotonic() - started
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE notifications_notification")
        cursor.execute("ANALYZE notifications_recipient")
    return {"had": have, "seeded": max(0, count - have), "seeding_seconds": round(seeded, 1) if seeded else None}


def _admin_pages() -> dict[str, str]:
    """Each page an operator opens, with real terms taken from the data (found through indexes, not scans)."""
    half_a_year_ago = timezone.now() - timedelta(days=180)
    older = Notification.objects.filter(created_at__lt=half_a_year_ago).order_by("-created_at")
    single = older.exclude(idempotency_key="").exclude(provider_message_id="").first()
    sms = Notification.objects.filter(channel="sms", campaign__isnull=True).order_by("-created_at").first()
    marketing = older.filter(priority=Priority.MARKETING).first()
    campaigns = Campaign.objects.exclude(materialized_count=0).order_by("pk")
    campaign = campaigns[campaigns.count() // 2]
    pages = {"list": ""}
    for status in (NotificationStatus.SENT, NotificationStatus.DEAD, NotificationStatus.FAILED,
                   NotificationStatus.SCHEDULED, NotificationStatus.PENDING):  # fmt: skip
        pages[f"filter status={status}"] = f"?status__exact={status}"
    for priority in (Priority.SECURITY, Priority.MARKETING):
        pages[f"filter priority={priority}"] = f"?priority__exact={priority}"
    for channel in ("sms", "push"):
        pages[f"filter channel={channel}"] = f"?channel__exact={channel}"
    pages |= {
        "search e-mail address": f"?q={quote(marketing.to)}",
        "search phone": f"?q={quote(sms.to)}",
        "search idempotency key": f"?q={quote(single.idempotency_key)}",
        "search provider message id": f"?q={quote(single.provider_message_id)}",
        "search id": f"?q={single.pk}",
        "search campaign": f"?q=campaign:{campaign.pk}",
        "recipient's notifications": f"?recipient__id__exact={marketing.recipient_id}",
        "recipient page": f"/admin/notifications/recipient/{marketing.recipient_id}/change/",
    }
    return pages


def admin(*, rows: int, runs: int = ADMIN_RUNS) -> dict[str, Any]:
    """Scenario: the notification admin at `rows` notifications, through the real admin (Django's test client,
    a logged-in superuser): each page's time, best and median of `runs`, its queries, and whether the plan of the
    query that read its rows scans the table."""
    seeding = ensure_notifications(rows)
    # The pages name their static files through the manifest, as in production (`make run` collects them too).
    call_command("collectstatic", "--no-input", verbosity=0)
    user, _ = get_user_model().objects.get_or_create(username="bench-admin")
    user.is_staff = user.is_superuser = True
    user.save()
    client = Client(HTTP_HOST=settings.ALLOWED_HOSTS[0])
    client.force_login(user)
    results = {}
    for name, page in _admin_pages().items():
        url = page if page.startswith("/") else f"/admin/notifications/notification/{page}"
        client.get(url)  # warm-up: the first read of cold index pages is not what an operator sees twice
        times = []
        for _ in range(runs):
            with CaptureQueriesContext(connection) as queries:
                began = time.perf_counter()
                response = client.get(url)
                times.append(time.perf_counter() - began)
            if response.status_code != 200:
                raise RuntimeError(f"{url} answered {response.status_code}")
        sqls = [q["sql"] for q in queries.captured_queries]
        results[name] = {
            "best_ms": round(min(times) * 1000, 1),
            "median_ms": round(statistics.median(times) * 1000, 1),
            "queries": len(sqls),
            "seq_scan": _scans_notifications(sqls),
        }
    return {
        "scenario": "the notification admin at a year of traffic",
        "notifications": _estimated_rows(),
        **seeding,
        "runs_per_page": runs,
        "pages": results,
    }


def _estimated_rows() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = 'notifications_notification'::regclass")
        return int(cursor.fetchone()[0])


def _scans_notifications(sqls: list[str]) -> bool:
    """Whether the plan of any query on the notifications has a sequential scan of that table."""
    with connection.cursor() as cursor:
        for sql in sqls:
            if not sql.startswith("SELECT") or '"notifications_notification"' not in sql:
                continue
            # Bandit B608 (SQL built from strings): the statement is one Django just ran, values already bound.
            cursor.execute(f"EXPLAIN {sql}")  # nosec B608
            if any("Seq Scan on notifications_notification" in row[0] for row in cursor.fetchall()):
                return True
    return False


# --- cancelling a running campaign ----------------------------------------------------------

#: Transactional e-mails per measurement of the concurrent stream.
STREAM_COUNT = 1000


def transactional_stream(count: int = STREAM_COUNT) -> float:
    """Sends/s of `count` transactional e-mails submitted from this process, submit -> every row sent (the ledger
    also holds the campaign's sends, so the rows are asked, every 200 ms by their ids)."""
    from notifications.services import notification_send

    run = uuid.uuid4().hex[:8]
    started = time.monotonic()
    ids = []
    for i in range(count):
        notification, _ = notification_send(
            priority=Priority.TRANSACTIONAL,
            channel="email",
            template="order_shipped",
            context={"name": "Ada", "order_number": f"{run}-{i}"},
            to=f"stream-{run}-{i}@example.com",
        )
        ids.append(notification.pk)
    rows = Notification.objects.filter(pk__in=ids)
    wait_until(
        lambda: rows.filter(status=NotificationStatus.SENT).count() >= count,
        timeout=600,
        interval=0.2,
        what="the transactional stream to be sent",
    )
    rate = count / (time.monotonic() - started)
    rows.delete()
    Recipient.objects.filter(email__startswith=f"stream-{run}-").delete()
    return rate


def _sweep_log(log_dir: Path) -> tuple[int, float, int]:
    """(rows, seconds in their UPDATEs, transactions) of the sweep, from the marketing workers' log lines."""
    pattern = re.compile(r"cancelled: (\d+) row\(s\) of \d+ batch\(es\) written skipped in ([0-9.]+)s")
    rows, seconds, transactions = 0, 0.0, 0
    for line in (log_dir / "worker-marketing.log").read_text(errors="replace").splitlines():
        found = pattern.search(line)
        if found:
            rows += int(found.group(1))
            seconds += float(found.group(2))
            transactions += 1
    return rows, seconds, transactions


def cancel(
    *, recipients: int, platform: Platform, web: WebProcess, concurrency: int, run_seconds: float = 20.0
) -> dict[str, Any]:
    """Fan out a campaign to every consenting recipient, let it send for `run_seconds`, cancel it through the API;
    time the answer, until the counters and the API say every unsent row is skipped, and the sweep that rewrites
    them; a transactional stream's sends/s while the campaign runs, during the sweep and after it."""
    seeded = ensure_recipients(recipients)
    reset_campaigns()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE notifications_notification")
    (platform.log_dir / "worker-marketing.log").unlink(missing_ok=True)
    platform.pool(Priority.MARKETING, concurrency=concurrency)
    platform.pool(Priority.TRANSACTIONAL, concurrency=2)
    relaying = threading.Event()
    relay = threading.Thread(target=_relay_until, args=(relaying,), daemon=True)
    relay.start()
    api = api_session(web.url)
    api.headers["Authorization"] = f"Token {_campaign_token()}"
    try:
        campaign_id = _bench_campaign(api, web.url, "bench cancel")
        api.post(f"{web.url}/api/v1/campaigns/{campaign_id}/start", json={}, timeout=30).raise_for_status()
        campaign = Campaign.objects.get(pk=campaign_id)
        wait_until(
            lambda: Campaign.objects.filter(pk=campaign_id, fanout_completed_at__isnull=False).exists(),
            timeout=900,
            interval=0.5,
            what="the fan-out",
        )
        fanned_out = time.monotonic()
        transactional_stream(200)  # warm up
        while_running = [transactional_stream() for _ in range(2)]
        time.sleep(max(0.0, run_seconds - (time.monotonic() - fanned_out)))
        rows_of = campaign_notifications(campaign)  # its key range: no scan of the table
        unsent_row = rows_of.filter(status="scheduled").order_by("-pk").values_list("pk", flat=True).first()
        started = time.monotonic()
        answer = api.post(f"{web.url}/api/v1/campaigns/{campaign_id}/cancel", json={}, timeout=120)
        answered = time.monotonic()
        answer.raise_for_status()
        cancelled = Campaign.objects.get(pk=campaign_id)
        at_answer = {
            "materialised": cancelled.materialized_count,
            "sent": cancelled.sent_count,
            "dead": cancelled.dead_count,
            "skipped": cancelled.skipped_count,
            "remaining (rows workers held)": cancelled.remaining_count,
        }
        shown = api.get(f"{web.url}/api/v1/notifications/{unsent_row}", timeout=10).json()["status"]
        wait_until(
            lambda: Campaign.objects.get(pk=campaign_id).remaining_count == 0, timeout=300, interval=0.1,
            what="the counters final",
        )  # fmt: skip
        exact = time.monotonic()
        during = []
        batches = CampaignBatch.objects.filter(campaign_id=campaign_id, status="cancelled")
        while batches.exists():
            during.append(transactional_stream())
        swept = time.monotonic()
        wait_until(
            lambda: not rows_of.filter(status="scheduled").exists(),
            timeout=300,
            interval=1.0,
            what="no scheduled row left",
        )
        after = [transactional_stream() for _ in range(2)]
        rows, update_seconds, transactions = _sweep_log(platform.log_dir)
        campaign.refresh_from_db()
        low, high = campaign_notification_id(campaign_id, 0), campaign_notification_id(campaign_id, 16**15 - 1)
        events = NotificationEvent.objects.filter(
            kind="skipped", notification_id__gte=low, notification_id__lte=high
        ).count()
    finally:
        relaying.set()
        relay.join()
    return {
        "scenario": "cancel a running campaign",
        "recipients_in_database": Recipient.objects.count(),
        "seeded_seconds": round(seeded, 1) if seeded is not None else None,
        "notifications_materialised": campaign.materialized_count,
        "batches": CampaignBatch.objects.filter(campaign_id=campaign_id).count(),
        "marketing_worker_processes": concurrency,
        "cancel_answer_seconds": round(answered - started, 3),
        "counters_at_the_answer": at_answer,
        "api_status_of_an_unsent_row_right_after": shown,
        "counters_final_outright_seconds": round(exact - started, 2),
        "sweep_seconds": round(swept - started, 1),
        "sweep_rows_rewritten": rows,
        "sweep_update_seconds": round(update_seconds, 1),
        "sweep_transactions": transactions,
        "sweep_pause_ratio": settings.CAMPAIGN_SWEEP_PAUSE_RATIO,
        "final_counters": {
            "sent": campaign.sent_count,
            "dead": campaign.dead_count,
            "skipped": campaign.skipped_count,
        },  # fmt: skip
        "skipped_events_written": events,
        "stream_sends_per_second_while_the_campaign_runs": [round(r, 1) for r in while_running],
        "stream_sends_per_second_during_the_sweep": [round(r, 1) for r in during],
        "stream_sends_per_second_after": [round(r, 1) for r in after],
        "during_over_after": round(statistics.mean(during) / statistics.mean(after), 3) if during else None,
        "campaign_id": campaign_id,
    }


def _campaign_token() -> str:
    """A token of a staff user who may run campaigns and read any notification (the API shows campaign rows to
    staff only)."""
    user, _ = get_user_model().objects.get_or_create(username="bench-staff", defaults={"is_staff": True})
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["add_campaign", "change_campaign", "view_campaign"])
    )
    _, key = ApiToken.issue(user)
    return key


def _relay_until(stop: threading.Event) -> None:
    """The relays every RELAY_INTERVAL_SECONDS until `stop` is set, as beat runs them (on its own connection)."""
    from jobs.clock import database_now
    from notifications.recovery import campaign_relay, notification_relay

    try:
        while not stop.wait(settings.RELAY_INTERVAL_SECONDS):
            now = database_now()
            notification_relay(now=now)
            campaign_relay(now=now)
    finally:
        connection.close()
