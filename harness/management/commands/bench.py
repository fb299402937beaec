"""`make bench`: end-to-end throughput next to a raw-Celery baseline, then the campaign scenarios
(5 M fan-out, global rate limit, security under a marketing blast; notifications/benchmarks.py).

Starts its own sandbox, web server and worker pools on the database, Redis database and
ports the Makefile gives it, so a running `make run` is not disturbed; prints tables and
writes JSON to bench-results/.
"""

import json
import multiprocessing
import os
import platform as platform_module
import statistics
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, connections

from harness import benchmarks
from harness.processes import WorkerProcess
from harness.sandbox.process import SandboxProcess
from harness.waiting import WaitTimeout, wait_until
from jobs import publishing
from jobs.redis import broker_client, redis_client
from jobs.tasks import probe
from notifications.models import Notification, NotificationStatus, Recipient
from notifications.services import notification_send
from settings.topology import Priority

RESULTS = Path(settings.BASE_DIR) / "bench-results"
SCENARIOS = (
    "throughput", "api", "webhooks", "fanout", "limiter", "blast", "unlimited", "retention", "admin", "cancel"
)  # fmt: skip
#: Run only when named: `admin` keeps tens of millions of rows in the bench database (the campaign scenarios empty
#: the notifications table, so run it on its own); `retention` seeds and prunes 5 M rows (about 15 minutes);
#: `cancel` fans out a campaign to --recipients and cancels it while it sends (about 10 minutes at 5 M).
ONLY_WHEN_NAMED = ("retention", "admin", "cancel")
QUEUE = "transactional.email"


class Command(BaseCommand):
    help = "Measure end-to-end notifications/s against a raw Celery no-op baseline; print and write JSON."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--count", type=int, default=2000, help="messages per scenario (default 2000)")
        parser.add_argument("--concurrency", type=int, default=4, help="worker processes (default 4)")
        parser.add_argument(
            "--submitters", type=int, default=2, help="processes submitting in parallel, like web workers (default 2)"
        )
        parser.add_argument("--output", default=str(RESULTS / "throughput.json"))
        parser.add_argument(
            "--scenarios",
            default=",".join(s for s in SCENARIOS if s not in ONLY_WHEN_NAMED),
            help=f"comma-separated, from {', '.join(SCENARIOS)} (default: all but {', '.join(ONLY_WHEN_NAMED)})",
        )
        parser.add_argument("--recipients", type=int, default=5_000_000, help="fan-out audience (default 5,000,000)")
        parser.add_argument("--duration", type=float, default=60.0, help="seconds of the limiter and blast runs")
        parser.add_argument("--marketing-workers", type=int, default=4, help="marketing worker processes (default 4)")
        parser.add_argument("--api-requests", type=int, default=3000, help="requests per API run (default 3000)")
        parser.add_argument("--api-connections", type=int, default=16, help="concurrent API connections (default 16)")
        parser.add_argument("--receipts", type=int, default=10_000, help="status callbacks posted (default 10,000)")
        parser.add_argument(
            "--expired-rows", type=int, default=5_000_000, help="expired notifications pruned (default 5,000,000)"
        )
        parser.add_argument(
            "--admin-rows",
            type=int,
            default=50_000_000,
            help="notifications the admin scenario needs; missing ones are seeded and kept (default 50,000,000)",
        )
        parser.add_argument(
            "--keep-campaign",
            action="store_true",
            help="leave the fanned-out campaign for the next run (which then skips the fan-out unless asked)",
        )

    def handle(self, *args, count: int, concurrency: int, submitters: int, output: str, **options) -> None:
        if count < 1 or concurrency < 1 or submitters < 1:
            raise CommandError("--count, --concurrency and --submitters must be at least 1")
        scenarios = [s.strip() for s in options["scenarios"].split(",") if s.strip()]
        unknown = set(scenarios) - set(SCENARIOS)
        if unknown:
            raise CommandError(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
        if options["recipients"] < 1 or options["duration"] <= 0 or options["marketing_workers"] < 1:
            raise CommandError("--recipients, --duration and --marketing-workers must be positive")
        if options["admin_rows"] < 1:
            raise CommandError("--admin-rows must be at least 1, e.g. 50000000")
        self.submitters = submitters
        self.baseline_rate: float | None = None
        redis_client().ping()
        log_dir = RESULTS / "logs"
        sandbox = SandboxProcess(
            http_port=urlparse(settings.SANDBOX_HTTP_URL).port,
            smtp_port=settings.SANDBOX_SMTP_PORT,
            log_path=log_dir / "sandbox.log",
        )
        sandbox.start()
        try:
            if "throughput" in scenarios:
                self._throughput(sandbox, log_dir, count, concurrency, output)
            if "api" in scenarios:
                self._api(sandbox, log_dir, concurrency, options)
            if "webhooks" in scenarios:
                self._webhooks(sandbox, log_dir, options)
            if "retention" in scenarios:
                self._retention(sandbox, log_dir, count, concurrency, options)
            if "admin" in scenarios:
                self._write(benchmarks.admin(rows=options["admin_rows"]), "admin.json")
            if "cancel" in scenarios:
                self._cancel(sandbox, log_dir, options)
            campaign = [
                s for s in scenarios if s not in ("throughput", "api", "webhooks", "retention", "admin", "cancel")
            ]
            if campaign:
                self._campaigns(sandbox, log_dir, campaign, options)
        except WaitTimeout as exc:
            raise CommandError(str(exc)) from exc
        finally:
            sandbox.stop()

    def _campaigns(self, sandbox: SandboxProcess, log_dir: Path, scenarios: list[str], options: dict) -> None:
        platform = benchmarks.Platform(log_dir, sandbox)
        web = benchmarks.Platform(log_dir, sandbox).web()
        results: dict[str, dict] = {}
        workers = options["marketing_workers"]
        try:
            if "fanout" in scenarios or not benchmarks.Campaign.objects.filter(status="running").exists():
                results["fanout"] = benchmarks.fanout(
                    recipients=options["recipients"], platform=platform, web=web, concurrency=workers
                )
                platform.stop()
                self._print(results["fanout"])
            if "limiter" in scenarios:
                results["limiter"] = benchmarks.limiter(
                    platform=platform, duration=options["duration"], concurrency=workers
                )
                platform.stop()
                self._print(results["limiter"])
            if "unlimited" in scenarios:
                results["unlimited"] = benchmarks.unlimited(
                    platform=platform, duration=options["duration"], concurrency=workers
                )
                if self.baseline_rate is not None:
                    results["unlimited"]["baseline_celery_noop_per_s"] = round(self.baseline_rate, 1)
                    results["unlimited"]["ratio_to_baseline"] = round(
                        results["unlimited"]["achieved_per_second"] / self.baseline_rate, 2
                    )
                platform.stop()
                self._print(results["unlimited"])
            if "blast" in scenarios:
                results["blast"] = benchmarks.blast(
                    platform=platform, web=web, duration=options["duration"], per_second=5, concurrency=workers
                )
                platform.stop()
                self._print(results["blast"])
        finally:
            platform.stop()
            web.stop()
            if not options["keep_campaign"]:
                benchmarks.reset_campaigns()
        results["machine"] = {"cpus": os.cpu_count(), "python": platform_module.python_version()}
        results["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        path = RESULTS / "campaigns.json"
        path.write_text(json.dumps(results, indent=2) + "\n")
        self.stdout.write(f"written to {path}")

    def _api(self, sandbox: SandboxProcess, log_dir: Path, concurrency: int, options: dict) -> None:
        platform = benchmarks.Platform(log_dir, sandbox)
        try:
            result = benchmarks.api(
                platform=platform,
                count=options["api_requests"],
                connections=options["api_connections"],
                concurrency=concurrency,
            )
        finally:
            platform.stop()
        self._write(result, "api.json")

    def _webhooks(self, sandbox: SandboxProcess, log_dir: Path, options: dict) -> None:
        platform = benchmarks.Platform(log_dir, sandbox)
        try:
            web = platform.web()
            result = benchmarks.receipts_and_webhooks(
                platform=platform, web=web, count=options["receipts"], connections=options["api_connections"]
            )
        finally:
            platform.stop()
        self._write(result, "webhooks.json")

    def _retention(self, sandbox: SandboxProcess, log_dir: Path, count: int, concurrency: int, options: dict) -> None:
        """Single sends/s (submit -> sandbox) before and while `manage.py prune` deletes the expired rows."""
        seeded = benchmarks.seed_expired(options["expired_rows"])
        worker = WorkerProcess("bench", queues=[QUEUE], log_path=log_dir / "worker.log", concurrency=concurrency)
        # A send that meets a busy provider is retried through the relay, as beat runs it in production; this
        # scenario runs long enough for one, and a run would otherwise wait for it for ever.
        relaying = threading.Event()
        relay = threading.Thread(target=_relay_until, args=(relaying,), daemon=True)
        relay.start()
        try:
            worker.start()
            self._notifications(min(count, 200), sandbox)  # warm up
            before = [self._notifications(count, sandbox)["rate"] for _ in range(3)]
            started = time.monotonic()
            pruner = benchmarks.prune_process(log_dir)
            during = []
            while pruner.poll() is None:
                during.append(self._notifications(count, sandbox)["rate"])
            pruned_in = time.monotonic() - started
            after = [self._notifications(count, sandbox)["rate"] for _ in range(2)]
        finally:
            worker.stop()
            relaying.set()
            relay.join()
        if pruner.returncode != 0:
            raise CommandError(f"prune failed; see {log_dir / 'prune.log'}")
        mean_before = statistics.mean(before)
        result = {
            "scenario": "retention: single sends while manage.py prune deletes expired rows",
            "expired_rows": options["expired_rows"],
            "seeding_seconds": round(seeded, 1) if seeded is not None else None,
            "prune_seconds": round(pruned_in, 1),
            "pruned_per_second": round(options["expired_rows"] / pruned_in),
            "prune_output": (log_dir / "prune.log").read_text().strip().splitlines(),
            "sends_per_second_before": [round(r, 1) for r in before],
            "sends_per_second_during": [round(r, 1) for r in during],
            "sends_per_second_after": [round(r, 1) for r in after],
            "during_over_before": round(statistics.mean(during) / mean_before, 3) if during else None,
            # The runs on either side of the prune: this machine's send rate drifts from run to run by more than
            # a partition's drop costs, so the neighbours say more than the mean of the first runs.
            "during_over_neighbours": (
                round(statistics.mean(during) / statistics.mean([before[-1], after[0]]), 3) if during else None
            ),
            "pause_ratio": settings.RETENTION_PAUSE_RATIO,
            "worker_processes": concurrency,
            "count_per_run": count,
        }
        self._write(result, "retention.json")

    def _cancel(self, sandbox: SandboxProcess, log_dir: Path, options: dict) -> None:
        platform = benchmarks.Platform(log_dir, sandbox)
        try:
            web = platform.web()
            result = benchmarks.cancel(
                recipients=options["recipients"], platform=platform, web=web, concurrency=options["marketing_workers"]
            )
        finally:
            platform.stop()
            benchmarks.reset_campaigns()
        self._write(result, "cancel.json")

    def _write(self, result: dict, name: str) -> None:
        """Print one scenario's result and write it, with the machine and the time, to bench-results/<name>."""
        result["machine"] = {"cpus": os.cpu_count(), "python": platform_module.python_version()}
        result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        path = RESULTS / name
        path.write_text(json.dumps(result, indent=2) + "\n")
        self._print(result)
        self.stdout.write(f"written to {path}")

    def _print(self, result: dict) -> None:
        self.stdout.write(f"\n== {result['scenario']}")
        for key, value in result.items():
            if key == "pages":  # the admin scenario: one line per page
                for page, figures in value.items():
                    self.stdout.write(f"  {page:<40}{figures}")
            elif key not in ("scenario", "per_second"):
                self.stdout.write(f"  {key:<40}{value}")

    def _throughput(self, sandbox: SandboxProcess, log_dir: Path, count: int, concurrency: int, output: str) -> None:
        worker = WorkerProcess("bench", queues=[QUEUE], log_path=log_dir / "worker.log", concurrency=concurrency)
        try:
            worker.start()
            # Warm up both paths (child processes, connections, caches) before measuring.
            self._baseline(min(count, 200))
            self._notifications(min(count, 50), sandbox)
            baseline = self._baseline(count)
            self.baseline_rate = baseline["rate"]
            memory_before = benchmarks.pool_memory(worker)
            notifications = self._notifications(count, sandbox)
            memory_after = benchmarks.pool_memory(worker)
        finally:
            worker.stop()
        # Read once the workers are gone: a backend reports its statistics when it exits, an idle one only
        # every few seconds.
        before, after = notifications["counters_before"], _database_counters()
        statements = after["statements"] - before["statements"] if before["statements"] is not None else None
        notifications["transactions"] = round((after["transactions"] - before["transactions"]) / count, 2)
        notifications["statements"] = round(statements / count, 2) if statements is not None else None
        one_process = self._submit_one_process(count)
        result = {
            "scenario": "end-to-end throughput, transactional e-mail",
            "count": count,
            "worker_processes": concurrency,
            "submitting_processes": self.submitters,
            "machine": {"cpus": os.cpu_count(), "python": platform_module.python_version()},
            "baseline_celery_noop_per_s": round(baseline["rate"], 1),
            "notifications_per_s": round(notifications["rate"], 1),
            "ratio": round(notifications["rate"] / baseline["rate"], 3),
            "submit_per_s": round(notifications["submit_rate"], 1),
            "submit_one_process_per_s": round(one_process, 1),
            "postgres_transactions_per_notification": notifications["transactions"],
            "postgres_statements_per_notification": notifications["statements"],
            "broker_messages_per_notification": notifications["messages"],
            "worker_rss_mb_before_and_after": {
                pid: [before, memory_after.get(pid)] for pid, before in memory_before.items()
            },
            "ledger_entries": notifications["ledger"],
            "duplicates": notifications["duplicates"],
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2) + "\n")
        self.stdout.write(
            "\n".join(
                [
                    f"{'scenario':<40}{'per second':>12}",
                    f"{'raw Celery no-op task (baseline)':<40}{result['baseline_celery_noop_per_s']:>12.1f}",
                    f"{'notifications, submit -> sandbox':<40}{result['notifications_per_s']:>12.1f}",
                    f"{'ratio notifications / baseline':<40}{result['ratio']:>12.3f}",
                    f"{'submit only (service function)':<40}{result['submit_per_s']:>12.1f}",
                    f"{'submit only, one process':<40}{result['submit_one_process_per_s']:>12.1f}",
                    f"per notification: {result['postgres_transactions_per_notification']} PostgreSQL transactions, "
                    f"{result['postgres_statements_per_notification']} statements (pg_stat_statements, if loaded), "
                    f"{result['broker_messages_per_notification']} broker messages",
                    f"{count} messages each, {concurrency} worker processes, {self.submitters} submitting processes",
                    f"ledger entries {result['ledger_entries']} for {count} notifications, duplicates {result['duplicates']}",
                    f"worker memory (MB) by pid, before and after the notifications: "
                    f"{result['worker_rss_mb_before_and_after']}",
                    f"written to {output}",
                ]
            )
        )

    def _in_parallel(self, function, count: int, run: str) -> list:
        """Run function(run, indexes) in `submitters` forked processes; their results, concatenated."""
        connections.close_all()
        shares = [range(i, count, self.submitters) for i in range(self.submitters)]
        with multiprocessing.get_context("fork").Pool(self.submitters) as pool:
            results = pool.starmap(function, [(run, share) for share in shares])
        return [item for result in results for item in result]

    def _baseline(self, count: int) -> dict:
        counter = f"bench:probe:{uuid.uuid4()}"
        client = redis_client()
        start = time.monotonic()
        self._in_parallel(_publish_probes, count, counter)
        wait_until(lambda: int(client.get(counter) or 0) >= count, timeout=300, interval=0.05, what="the probe tasks")
        end = time.monotonic()
        client.delete(counter)
        return {"rate": count / (end - start)}

    def _notifications(self, count: int, sandbox: SandboxProcess) -> dict:
        run = uuid.uuid4().hex[:8]
        sandbox.clear()
        counters = _database_counters()
        received = _messages_received()
        start = time.monotonic()
        ids = self._in_parallel(_submit_notifications, count, run)
        submitted = time.monotonic()
        # Done when the sandbox holds them all: as cheap to ask as the baseline's Redis counter (a poll of
        # PostgreSQL every 50 ms would load the machine being measured).
        wait_until(
            lambda: sandbox.ledger(limit=0)["count"] >= count,
            timeout=600,
            interval=0.05,
            what="the notifications to reach the sandbox",
        )
        end = time.monotonic()
        rows = Notification.objects.filter(pk__in=ids)
        wait_until(
            lambda: not rows.exclude(status__in=[NotificationStatus.SENT, NotificationStatus.DEAD]).exists(),
            timeout=60,
            interval=0.1,
            what="every sent notification recorded",
        )
        messages = _messages_received() - received
        failed = rows.exclude(status=NotificationStatus.SENT).count()
        if failed:
            raise CommandError(f"{failed} of {count} notifications were not sent; see {RESULTS / 'logs'}")
        entries = sandbox.entries(limit=count * 2)
        keys = [e["idempotency_key"] for e in entries]
        rows.delete()
        Recipient.objects.filter(email__startswith=f"bench-{run}-").delete()
        return {
            "rate": count / (end - start),
            "submit_rate": count / (submitted - start),
            "ledger": len(entries),
            "duplicates": len(keys) - len(set(keys)),
            "counters_before": counters,
            "messages": round(messages / count, 3),
        }

    def _submit_one_process(self, count: int) -> float:
        """notification_send from this one process, the workers stopped; its rows and messages removed after."""
        run = uuid.uuid4().hex[:8]
        _submit_notifications(f"{run}-warm", range(min(count, 100)))
        start = time.monotonic()
        _submit_notifications(run, range(count))
        publishing.shutdown()  # every publish out, as a long-lived process would do meanwhile
        elapsed = time.monotonic() - start
        Notification.objects.filter(to__startswith=f"bench-{run}").delete()
        Recipient.objects.filter(email__startswith=f"bench-{run}").delete()
        broker_client().delete(QUEUE)
        return count / elapsed


def _relay_until(stop: threading.Event) -> None:
    """The notification relay every RELAY_INTERVAL_SECONDS until `stop` is set (on its own connection)."""
    from notifications.recovery import notification_relay

    try:
        while not stop.wait(settings.RELAY_INTERVAL_SECONDS):
            notification_relay()
    finally:
        connection.close()


def _database_counters() -> dict:
    """Transactions committed in the bench database so far, and statements run (pg_stat_statements, when the
    server loads it)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        (transactions,) = cursor.fetchone()
        statements = None
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'")
        if cursor.fetchone():
            cursor.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE dbid = "
                           "(SELECT oid FROM pg_database WHERE datname = current_database())")  # fmt: skip
            (statements,) = cursor.fetchone()
    # The statistics collector lags by up to half a second.
    return {"transactions": int(transactions), "statements": int(statements) if statements is not None else None}


def _messages_received() -> int:
    """Messages the bench's workers took off the queue so far (Celery's task-received events would need Flower;
    the worker log's "received" lines are the same count)."""
    log = RESULTS / "logs" / "worker.log"
    if not log.exists():
        return 0
    with log.open(errors="replace") as lines:
        return sum(1 for line in lines if "notifications.deliver[" in line and "received" in line)


def _publish_probes(counter: str, indexes: range) -> list:
    for _ in indexes:
        probe.apply_async(args=[counter], queue=QUEUE)
    return []


def _submit_notifications(run: str, indexes: range) -> list[str]:
    ids = []
    for i in indexes:
        notification, _ = notification_send(
            priority=Priority.TRANSACTIONAL,
            channel="email",
            template="password_reset",
            context={"code": f"{i:06d}"},
            to=f"bench-{run}-{i}@example.com",
        )
        ids.append(str(notification.pk))
    # The last publishes may still wait on their thread (they linger a few milliseconds to share a message): a
    # process that ended now would leave them to the relay, a delay the scenario would count as the platform's.
    publishing.shutdown()
    connections.close_all()
    return ids
