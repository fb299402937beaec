"""The fault drills: each sends bursts through the HTTP API of a ChaosStack, injects one fault, then checks the outcome.

Every drill returns one row: drill, submitted, sent, dead, lost, duplicates,
recovery_seconds, notes, ok (plus checks, the drill's own checks by name).

    lost        = submitted - (sent + dead)     after waiting for every notification to be final
    duplicates  = ledger entries beyond the first per idempotency key, across every provider
    recovery    = seconds from the fault's end (or the kill) until the last notification was final

A drill is ok when lost and duplicates are 0, every dead notification has a dead-letter
row with a reason, every sent one is in the sandbox ledger, every client request got its
202 (retrying a 5xx with the same key), and the drill's own checks pass.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import requests

from harness.chaos.stack import ChaosStack
from harness.waiting import wait_until
from jobs.breaker import CLOSED, CircuitBreaker
from settings.topology import PRIORITIES, Priority

DrillRow = dict[str, Any]

FINAL = ("sent", "dead")
#: Every priority on every channel, so a burst exercises all pools and providers.
MIX = tuple((p, c) for p in PRIORITIES for c in ("email", "sms", "push"))
EMAIL_MIX = tuple((p, "email") for p in PRIORITIES)
#: A client's patience for one request; far above the API's normal answer, so a hang shows.
REQUEST_TIMEOUT_SECONDS = 10.0
#: Threads a burst submits with (a few clients at once, as web traffic is).
SUBMIT_THREADS = 4
#: The issue's promise for a SIGKILLed worker's unfinished notifications.
SIGKILL_RECOVERY_LIMIT_SECONDS = 60.0
#: The issue's latency goal for a submit while Redis is down.
REDIS_DOWN_P99_LIMIT_SECONDS = 0.5
#: A realistic vendor answer time, set on every provider in the drills that kill or stop
#: something mid-burst: without it a burst drains faster than the fault lands.
PROVIDER_LATENCY_MS = 200


@dataclass(frozen=True)
class Plan:
    """Sizes and repetitions of one run of the drills."""

    burst: int = 100
    sigkill_runs: int = 10
    sigterm_runs: int = 5
    postgres_down_seconds: float = 15.0
    half_errors_seconds: float = 60.0
    retry_after_seconds: int = 3
    retry_after_burst: int = 20
    poison_companions: int = 30
    idempotency_clients: int = 50
    redis_down_submissions: int = 50
    #: Seconds to wait for every notification of a burst to be final before counting it lost.
    final_timeout: float = 150.0
    # The drills that compose faults with campaigns, retries and replays (composed.py).
    campaign_recipients: int = 20_000
    campaign_error_rate: float = 0.3
    campaign_error_seconds: float = 20.0
    campaign_kills: int = 3
    storm_transitions: int = 30
    storm_seconds: float = 30.0
    paced_security: int = 100
    paced_retry_after: int = 300
    #: The issue's promise for security mail while the primary paces us.
    paced_deadline_seconds: float = 30.0
    relay_backlog: int = 20_000
    relay_security: int = 50
    replay_letters: int = 100
    skew_burst: int = 100
    skew_seconds: int = 30
    abuse_requests: int = 1_000
    abuse_seconds: float = 10.0
    #: Security e-mails per second submitted through the API beside the abuse, and before it (baseline).
    abuse_security_rate: float = 5.0
    #: Seconds a campaign drill waits for its campaign to be final before counting what is not.
    campaign_timeout: float = 600.0
    #: Status webhooks: notifications sent while the receiver is down, then answers 500 to half its calls.
    webhook_notifications: int = 2_000
    webhook_down_seconds: float = 60.0
    webhook_timeout: float = 600.0
    #: Durable jobs of another app while its workers are SIGKILLed.
    job_count: int = 300
    job_kills: int = 4
    #: Notifications scheduled this many seconds ahead (at random), a share cancelled, workers killed meanwhile.
    scheduled_count: int = 10_000
    scheduled_cancels: int = 2_000
    scheduled_ahead: tuple[float, float] = (5.0, 60.0)
    scheduled_kills: int = 2
    #: Expired campaign rows pruned while the pruner is killed and PostgreSQL restarted.
    prune_rows: int = 1_000_000


FULL = Plan()
#: Small enough for the test suite: all drills in about five minutes.
QUICK = Plan(
    burst=30,
    sigkill_runs=2,
    sigterm_runs=1,
    half_errors_seconds=20.0,
    retry_after_burst=10,
    poison_companions=15,
    final_timeout=90.0,
    campaign_recipients=3_000,
    campaign_error_seconds=10.0,
    storm_transitions=10,
    storm_seconds=10.0,
    relay_backlog=1_000,
    replay_letters=30,
    skew_burst=40,
    abuse_requests=300,
    abuse_seconds=5.0,
    campaign_timeout=180.0,
    webhook_notifications=60,
    webhook_down_seconds=8.0,
    webhook_timeout=240.0,
    job_count=40,
    job_kills=2,
    scheduled_count=200,
    scheduled_cancels=40,
    scheduled_ahead=(3.0, 15.0),
    scheduled_kills=1,
    prune_rows=40_000,
)


# --- submitting -----------------------------------------------------------------------


def post_notification(
    session: requests.Session, stack: ChaosStack, key: str, body: dict[str, Any]
) -> requests.Response:
    """POST one notification to the stack's API with its Idempotency-Key."""
    return session.post(
        f"{stack.api_url}/api/v1/notifications",
        json=body,
        headers={"Idempotency-Key": key},
        timeout=REQUEST_TIMEOUT_SECONDS,
    )


def message_body(tag: str, index: int, priority: str, channel: str, **context: str) -> dict[str, Any]:
    """A valid API body; the address is unique per tag and index."""
    if channel == "email":
        to = f"{tag}-{index}@example.com"
    elif channel == "sms":
        to = "+1415" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}-{index}").int % 10**7).zfill(7)
    else:
        to = f"push-{tag}-{index}"
    if priority == Priority.MARKETING:
        template, defaults = "newsletter", {"headline": "News", "body": f"Issue {index}"}
    else:
        template, defaults = "password_reset", {"code": f"{index:06d}"}
    return {
        "priority": priority,
        "channel": channel,
        "template": template,
        "to": to,
        "context": {**defaults, **context},
    }


def burst_bodies(tag: str, count: int, mix: Iterable[tuple[str, str]] = MIX) -> list[tuple[str, dict[str, Any]]]:
    """(Idempotency-Key, body) pairs cycling through `mix`."""
    mix = list(mix)
    return [(f"{tag}-{i}", message_body(tag, i, *mix[i % len(mix)])) for i in range(count)]


@dataclass
class Submission:
    """What the clients saw: accepted ids, the latency of each accepted call, every answer by code."""

    ids: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    answers: Counter = field(default_factory=Counter)
    refused: list[str] = field(default_factory=list)

    def add(self, other: Submission) -> None:
        self.ids += other.ids
        self.latencies += other.latencies
        self.answers.update(other.answers)
        self.refused += other.refused


def api_session(stack: ChaosStack) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Token {stack.api_key}"
    return session


def submit(
    stack: ChaosStack,
    requests_: list[tuple[str, dict[str, Any] | Callable[[], dict[str, Any]]]],
    *,
    threads: int = SUBMIT_THREADS,
    retry_seconds: float = 60.0,
    into: Submission | None = None,
    on_accepted: Callable[[str, str], None] | None = None,
) -> Submission:
    """POST each (key, body) from a few threads; a 5xx or a connection error is retried with the same key.

    That is what a well-behaved client does, and what the Idempotency-Key is for.  Pass
    `into` to watch the progress of a burst running in the background.  A body may be a function, called
    once just before the first try (a send_at relative to the request); `on_accepted(key, id)` hears each 202.
    """
    result = into if into is not None else Submission()
    lock = threading.Lock()
    pending = list(reversed(requests_))

    def send(session: requests.Session, key: str, body: dict[str, Any] | Callable[[], dict[str, Any]]) -> None:
        last: dict[str, Any] = {}
        body = body() if callable(body) else body

        def answered() -> bool:
            """One POST; True when no retry is due (a 202, or an answer a retry cannot change)."""
            started = time.monotonic()
            try:
                response = post_notification(session, stack, key, body)
                answer: int | str = response.status_code
            except requests.RequestException as exc:
                response, answer = None, type(exc).__name__
            elapsed = time.monotonic() - started
            last.update(response=response, answer=answer)
            with lock:
                result.answers[answer] += 1
                if answer == 202:
                    result.ids.append(response.json()["id"])
                    result.latencies.append(elapsed)
            if answer == 202 and on_accepted is not None:
                on_accepted(key, response.json()["id"])
            return answer == 202 or (response is not None and response.status_code < 500)

        wait_until(answered, timeout=retry_seconds, interval=0.5)
        if last["answer"] != 202:  # refused for good, or still failing when the client gave up
            response = last["response"]
            with lock:
                result.refused.append(f"{key}: {last['answer']} {response.text[:200] if response is not None else ''}")

    def client() -> None:
        session = api_session(stack)
        while True:
            with lock:
                if not pending:
                    return
                key, body = pending.pop()
            send(session, key, body)

    workers = [threading.Thread(target=client, daemon=True) for _ in range(max(1, min(threads, len(requests_))))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return result


def start_burst(stack: ChaosStack, tag: str, count: int, **options: Any) -> tuple[Future, Submission]:
    """Submit a burst in the background; its Future and the Submission it fills as it goes."""
    live = Submission()
    return in_background(submit, stack, burst_bodies(tag, count), into=live, **options), live


def wait_accepted(live: Submission, count: int, timeout: float = 30.0) -> None:
    """Until `count` submissions of a running burst were accepted (a fault then lands mid-burst)."""
    wait_until(lambda: len(live.ids) >= count, timeout=timeout, interval=0.01)


def in_background(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """Run `function` in a thread now; its Future."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(function(*args, **kwargs))
        except BaseException as exc:  # handed to whoever reads the future
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


# --- reading the outcome --------------------------------------------------------------

ROWS_SQL = """
SELECT id::text, idempotency_key, priority, channel, status, attempts, provider, last_error,
       extract(epoch from created_at)::float8, extract(epoch from sent_at)::float8,
       extract(epoch from updated_at)::float8, extract(epoch from first_failed_at)::float8,
       extract(epoch from next_attempt_at)::float8
FROM notifications_notification WHERE id = ANY(%s::uuid[])
"""
ROW_FIELDS = (
    "id",
    "key",
    "priority",
    "channel",
    "status",
    "attempts",
    "provider",
    "last_error",
    "created_at",
    "sent_at",
    "updated_at",
    "first_failed_at",
    "next_attempt_at",
)


def fetch_rows(stack: ChaosStack, ids: list[str]) -> dict[str, dict[str, Any]]:
    return {row[0]: dict(zip(ROW_FIELDS, row, strict=True)) for row in stack.query(ROWS_SQL, (ids,))}


def wait_final(stack: ChaosStack, ids: list[str], timeout: float) -> bool:
    """Wait until every notification is sent or dead; False on timeout.  A database outage just waits."""

    def all_final() -> bool:
        done = stack.query(
            "SELECT count(*) FROM notifications_notification WHERE id = ANY(%s::uuid[]) AND status IN ('sent', 'dead')",
            (ids,),
        )[0][0]
        return done == len(set(ids))

    # Any error counts as "not yet": PostgreSQL may be down on purpose.
    return bool(wait_until(all_final, timeout=timeout, interval=0.25, ignoring=(Exception,)))


@dataclass
class Tally:
    """The outcome of some notifications, from the stack's database and the sandbox ledger."""

    submitted: int = 0
    sent: int = 0
    dead: int = 0
    #: Final without a send: consent withdrawn, address suppressed, campaign cancelled.
    skipped: int = 0
    duplicates: int = 0
    unfinished: Counter = field(default_factory=Counter)
    providers: Counter = field(default_factory=Counter)
    dead_without_reason: list[str] = field(default_factory=list)
    sent_without_ledger: list[str] = field(default_factory=list)
    accepted_but_dead: list[str] = field(default_factory=list)
    #: Client requests never answered 202, even after retrying with the same key.
    refused: list[str] = field(default_factory=list)
    dead_reasons: Counter = field(default_factory=Counter)
    dead_by_queue: Counter = field(default_factory=Counter)
    recoveries: list[float] = field(default_factory=list)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    ledger: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.submitted - self.sent - self.dead - self.skipped

    @property
    def recovery(self) -> float | None:
        return max(self.recoveries) if self.recoveries else None

    def add(self, other: Tally) -> None:
        for name in ("submitted", "sent", "dead", "skipped", "duplicates"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("unfinished", "providers", "dead_reasons", "dead_by_queue"):
            getattr(self, name).update(getattr(other, name))
        for name in ("dead_without_reason", "sent_without_ledger", "accepted_but_dead", "refused", "recoveries"):
            getattr(self, name).extend(getattr(other, name))
        self.rows.update(other.rows)
        self.ledger.update(other.ledger)


def tally(stack: ChaosStack, ids: list[str], *, fault_end: float | None = None, refused: Iterable[str] = ()) -> Tally:
    """Count sent, dead, lost and duplicated among `ids`; recovery measured from `fault_end` (epoch seconds).

    `refused` are the client requests that never got a 202, reported beside the rest.
    """
    ids = list(dict.fromkeys(ids))
    rows = fetch_rows(stack, ids) if ids else {}
    result = Tally(submitted=len(ids), rows=rows, refused=list(refused))
    keys = {row["key"]: row for row in rows.values()}
    for entry in stack.sandbox.entries(limit=1_000_000):
        if entry["idempotency_key"] in keys:
            result.ledger.setdefault(entry["idempotency_key"], []).append(entry)
    result.duplicates = sum(len(entries) - 1 for entries in result.ledger.values())
    letters = dict(
        stack.query(
            "SELECT subject_id, message FROM jobs_deadletter WHERE subject_id = ANY(%s) AND status = 'open'", (ids,)
        )
    )
    last_final = None
    for notification_id in ids:
        row = rows.get(notification_id)
        status = row["status"] if row else "missing"
        if status not in FINAL:
            result.unfinished[status] += 1
            continue
        final_at = row["sent_at"] if status == "sent" else row["updated_at"]
        last_final = max(last_final or final_at, final_at)
        if status == "sent":
            result.sent += 1
            result.providers[row["provider"]] += 1
            if row["key"] not in result.ledger:
                result.sent_without_ledger.append(notification_id)
        else:
            result.dead += 1
            reason = (letters.get(notification_id) or "").strip()
            if not reason:
                result.dead_without_reason.append(notification_id)
            result.dead_reasons[_reason_kind(reason or row["last_error"])] += 1
            result.dead_by_queue[f"{row['priority']}.{row['channel']}"] += 1
            if row["key"] in result.ledger:
                result.accepted_but_dead.append(notification_id)
    # Not recovered at all if something is still unfinished: no figure rather than a flattering one.
    if fault_end is not None and last_final is not None and not result.unfinished:
        result.recoveries.append(max(0.0, last_final - fault_end))
    return result


def _reason_kind(reason: str) -> str:
    """A short label of a dead-letter reason, for the notes."""
    for marker in ("gave up after", "retries exhausted", "circuit open", "HTTP 429", "HTTP 500", "HTTP 503"):
        if marker in reason:
            return marker
    return reason[:60] or "no reason"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)] if ordered else float("nan")


def result_row(
    number: int, name: str, outcome: Tally, *, checks: dict[str, bool], notes: list[str], recovery: float | None = None
) -> DrillRow:
    checks = {
        "every dead notification has a dead letter with a reason": not outcome.dead_without_reason,
        "every sent notification is in the sandbox ledger": not outcome.sent_without_ledger,
        "every client request was answered 202 (retrying 5xx with its key)": not outcome.refused,
        **checks,
    }
    failed = [check for check, passed in checks.items() if not passed]
    notes = list(notes)
    if outcome.unfinished:
        notes.append(f"not final: {dict(outcome.unfinished)}")
    if outcome.dead:
        notes.append(f"dead: {dict(outcome.dead_reasons)} in {dict(outcome.dead_by_queue)}")
    if outcome.skipped:
        notes.append(f"skipped: {outcome.skipped}")
    if outcome.refused:
        notes.append(f"{len(outcome.refused)} request(s) refused, e.g. {outcome.refused[0]}")
    if outcome.accepted_but_dead:
        notes.append(f"{len(outcome.accepted_but_dead)} dead notification(s) were accepted by a provider")
    if failed:
        notes.insert(0, "FAILED: " + "; ".join(failed))
    recovery = outcome.recovery if recovery is None else recovery
    return {
        "drill": f"{number}. {name}",
        "submitted": outcome.submitted,
        "sent": outcome.sent,
        "dead": outcome.dead,
        "lost": outcome.lost,
        "duplicates": outcome.duplicates,
        "recovery_seconds": round(recovery, 1) if recovery is not None else None,
        "notes": "; ".join(notes),
        "checks": checks,
        "ok": outcome.lost == 0 and outcome.duplicates == 0 and not failed,
    }


def _tag(number: int) -> str:
    return f"d{number}-{uuid.uuid4().hex[:8]}"


def _breaker(stack: ChaosStack, provider: str) -> CircuitBreaker:
    return CircuitBreaker(provider, client=stack.redis_client())


def _transitions(stack: ChaosStack, provider: str, since: float) -> list[tuple[str, str, float]]:
    return stack.query(
        "SELECT from_state, to_state, extract(epoch from at)::float8 FROM jobs_breakertransition "
        "WHERE breaker = %s AND at >= to_timestamp(%s) ORDER BY at, id",
        (provider, since),
    )


def _unfinished(stack: ChaosStack, tag: str) -> Counter:
    """Notifications of a burst not yet final, by priority."""
    return Counter(
        dict(
            stack.query(
                "SELECT priority, count(*) FROM notifications_notification "
                "WHERE idempotency_key LIKE %s AND status NOT IN ('sent', 'dead') GROUP BY priority",
                (f"%:{tag}-%",),
            )
        )
    )


def _victim(stack: ChaosStack, tag: str, rng: random.Random) -> tuple[str, int]:
    """A pool with work in flight (any pool if none has), and how many of the burst's notifications it has unfinished."""
    unfinished = _unfinished(stack, tag)
    busy = sorted(p for p in PRIORITIES if unfinished[p])
    priority = rng.choice(busy or list(PRIORITIES))
    return priority, unfinished[priority]


def _slow_providers(stack: ChaosStack) -> None:
    for providers in stack.settings["NOTIFICATIONS_PROVIDERS"].values():
        for provider in providers:
            stack.sandbox.set_fault(provider["name"], latency_ms=PROVIDER_LATENCY_MS)


# --- the drills -------------------------------------------------------------------------


def _burst_with_work_in_flight(stack: ChaosStack, tag: str, plan: Plan, rng: random.Random):
    """Start a burst, let part of it be accepted, and pick the pool to hit: (burst, priority, in flight)."""
    burst, live = start_burst(stack, tag, plan.burst)
    wait_accepted(live, int(plan.burst * rng.uniform(0.2, 0.9)))
    priority, in_flight = _victim(stack, tag, rng)
    return burst, priority, in_flight


def _settle(stack: ChaosStack, burst, plan: Plan, *, fault_end: float) -> Tally:
    """Wait for the burst's submissions to finish and count what arrived."""
    submission = burst.result()
    wait_final(stack, submission.ids, plan.final_timeout)
    return tally(stack, submission.ids, fault_end=fault_end, refused=submission.refused)


def drill_sigkill(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """SIGKILL a worker at a random moment of a burst: the whole pool (a lost machine, restarted as a
    supervisor would) on even runs, one pool child (an OOM kill; the pool replaces it) on odd runs."""
    outcome, notes = Tally(), []
    _slow_providers(stack)
    for run in range(plan.sigkill_runs):
        tag, whole = _tag(1), run % 2 == 0
        burst, priority, in_flight = _burst_with_work_in_flight(stack, tag, plan, rng)
        stack.kill_pool(priority, child_only=not whole, rng=rng)
        killed_at = time.time()
        if whole:
            stack.start_pool(priority)
        run_outcome = _settle(stack, burst, plan, fault_end=killed_at)
        outcome.add(run_outcome)
        notes.append(
            f"run {run + 1}: killed {priority} {'pool' if whole else 'child'} with {in_flight} unfinished, "
            f"recovered in {run_outcome.recovery or 0:.1f}s"
        )
    within = all(r <= SIGKILL_RECOVERY_LIMIT_SECONDS for r in outcome.recoveries)
    return result_row(
        1,
        "SIGKILL a worker mid-burst",
        outcome,
        checks={f"every run recovered within {SIGKILL_RECOVERY_LIMIT_SECONDS:.0f}s": within},
        notes=notes,
    )


def drill_sigterm(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """SIGTERM a pool's main process mid-burst (warm shutdown, as Kubernetes sends it), then start it again as a
    deploy would.

    Celery has a race of its own (celery/celery#7950): a message fetched in the instant the warm
    shutdown begins is handed to a pool that is closing, and the worker waits for it until the
    supervisor's SIGKILL.  Nothing is lost (late acks bring the message back), but the exit is
    not clean; such a run is reported, and only an unclean exit without that signature fails.
    """
    outcome, notes, unexplained = Tally(), [], []
    _slow_providers(stack)
    for run in range(plan.sigterm_runs):
        tag = _tag(2)
        burst, priority, in_flight = _burst_with_work_in_flight(stack, tag, plan, rng)
        termed_at = time.time()
        code, seconds = stack.term_pool(priority)
        log = stack.pools[priority].output()
        race = code != 0 and _fetched_after_warm_shutdown(log)
        if code != 0 and not race:
            unexplained.append(f"run {run + 1}: exit {code}")
        stack.start_pool(priority)
        run_outcome = _settle(stack, burst, plan, fault_end=termed_at)
        outcome.add(run_outcome)
        notes.append(
            f"run {run + 1}: {priority} pool ({in_flight} unfinished) exited {code} {seconds:.1f}s after SIGTERM"
            + (" (celery#7950: a message fetched as the warm shutdown began held it)" if race else "")
            + f", recovered in {run_outcome.recovery or 0:.1f}s"
        )
    return result_row(
        2,
        "SIGTERM a worker mid-burst",
        outcome,
        checks={"every pool exited 0 on SIGTERM (warm shutdown), celery#7950 aside": not unexplained},
        notes=notes,
    )


def _fetched_after_warm_shutdown(log: str) -> bool:
    """The worker's log shows a task received after its warm shutdown began (celery#7950)."""
    _, began, after = log.rpartition("worker: Warm shutdown")
    return bool(began) and " received" in after


#: Seconds after the broker comes back within which a worker hit by kombu's race has exited.
BROKER_CRASH_WINDOW_SECONDS = 3.0


def _restart_crashed_pools(stack: ChaosStack) -> dict[str, bool]:
    """Start again every pool whose main process exited by itself, as Kubernetes or compose would; for each,
    whether its log shows kombu's crash on a lost broker ("Unrecoverable error")."""
    crashed = {}
    for priority, pool in list(stack.pools.items()):
        if pool.process is not None and pool.process.poll() is not None:
            crashed[f"pool:{priority}"] = "Unrecoverable error" in pool.output()
            stack.start_pool(priority)
    return crashed


def drill_redis_restart(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """Restart Redis (no persistence: every queued message is gone) mid-burst; pools are not touched.

    kombu has a race of its own: an ack that fails as the broker goes away can end in "Unrecoverable
    error" and the worker exits (celery/kombu#582, still seen with kombu 5.7).  Nothing is lost, but only
    if something starts the worker again, as Kubernetes and compose (`restart: unless-stopped`) do; the
    drill plays that supervisor, reports the crash, and fails only a restart without that signature.
    """
    before = stack.pids()
    _slow_providers(stack)
    tag = _tag(3)
    burst, live = start_burst(stack, tag, plan.burst)
    wait_accepted(live, int(plan.burst * rng.uniform(0.2, 0.8)))
    in_flight = sum(_unfinished(stack, tag).values())
    stack.restart_redis(down_seconds=1.0)
    restarted_at = time.time()
    # A crashing worker exits within moments of losing the broker; then start it again as a supervisor would.
    wait_until(lambda: not all(stack.alive().values()), timeout=BROKER_CRASH_WINDOW_SECONDS)
    crashed = _restart_crashed_pools(stack)
    submission = burst.result()
    wait_final(stack, submission.ids, plan.final_timeout)
    outcome = tally(stack, submission.ids, fault_end=restarted_at, refused=submission.refused)
    # A second burst after recovery must be consumed straight from the new Redis, not via the relay.
    follow_tag = _tag(3)
    follow_started = time.time()
    follow = submit(stack, burst_bodies(follow_tag, 10))
    wait_final(stack, follow.ids, plan.final_timeout)
    follow_outcome = tally(stack, follow.ids, refused=follow.refused)
    follow_rows = follow_outcome.rows.values()
    follow_seconds = max(
        ((r["sent_at"] or r["updated_at"]) - follow_started for r in follow_rows if r["status"] in FINAL),
        default=float("inf"),
    )
    outcome.add(follow_outcome)
    queued_after = stack.settings["RELAY_QUEUED_AFTER_SECONDS"]
    return result_row(
        3,
        "Restart Redis mid-burst",
        outcome,
        checks={
            "no process was restarted (a worker that crashed on the broker loss aside, kombu#582)": all(
                stack.alive().values()
            )
            and all(pid == before[name] or name in crashed for name, pid in stack.pids().items())
            and all(crashed.values()),
            f"a burst after the restart is final within {queued_after}s (consumed, not relayed)": follow_seconds
            < queued_after,
        },
        notes=[
            f"{in_flight} unfinished when Redis went down for 1s",
            *(
                f"{name} exited by itself"
                + (" (kombu#582: Unrecoverable error on the broker loss)" if known else " (no known signature)")
                + " and was started again, as a supervisor would"
                for name, known in crashed.items()
            ),
            f"follow-up burst of 10 final in {follow_seconds:.1f}s",
        ],
        recovery=outcome.recoveries[0] if outcome.recoveries else None,
    )


def drill_postgres_stop(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """Stop PostgreSQL mid-burst; the API answers 503 JSON meanwhile; workers resume by themselves."""
    before = stack.pids()
    _slow_providers(stack)
    tag = _tag(4)
    burst, live = start_burst(stack, tag, plan.burst, retry_seconds=plan.postgres_down_seconds + 60)
    wait_accepted(live, int(plan.burst * rng.uniform(0.2, 0.8)))
    stack.stop_postgres()
    session, probes, probe_ids = api_session(stack), Counter(), []
    bad_bodies, slowest, rounds = [], 0.0, itertools.count()

    def probe() -> bool:
        """One POST and one GET while PostgreSQL is down, their answers counted; never done."""
        nonlocal slowest
        index = next(rounds)
        key, body = burst_bodies(f"{tag}-probe", index + 1)[index]
        for method, url, kwargs in (
            ("POST", "/api/v1/notifications", {"json": body, "headers": {"Idempotency-Key": key}}),
            ("GET", f"/api/v1/notifications/{uuid.uuid4()}", {}),
        ):
            started = time.monotonic()
            try:
                response = session.request(method, stack.api_url + url, timeout=REQUEST_TIMEOUT_SECONDS, **kwargs)
            except requests.RequestException as exc:
                probes[f"{method} {type(exc).__name__}"] += 1
                continue
            slowest = max(slowest, time.monotonic() - started)
            probes[f"{method} {response.status_code}"] += 1
            if method == "POST" and response.status_code == 202:
                probe_ids.append(response.json()["id"])
            is_json = response.headers.get("Content-Type", "").startswith("application/json")
            if not is_json or "Traceback" in response.text or "error" not in response.json():
                bad_bodies.append(f"{method} {response.status_code}: {response.text[:120]!r}")
        return False

    wait_until(probe, timeout=plan.postgres_down_seconds, interval=0.5)
    stack.start_postgres()
    up_at = time.time()
    submission = burst.result()
    ids = submission.ids + probe_ids
    wait_final(stack, ids, plan.final_timeout)
    outcome = tally(stack, ids, fault_end=up_at, refused=submission.refused)
    answered_503 = all(label.endswith(" 503") for label in probes) and bool(probes)
    return result_row(
        4,
        f"PostgreSQL stopped {plan.postgres_down_seconds:.0f}s mid-burst",
        outcome,
        checks={
            "the API answered 503 to every call while PostgreSQL was down": answered_503,
            "every answer was JSON with an error, no traceback": not bad_bodies,
            "no process was restarted": stack.pids() == before and all(stack.alive().values()),
        },
        notes=[
            f"API during the outage: {dict(probes)}, slowest {slowest:.2f}s",
            f"client answers during the burst: {dict(submission.answers)}",
            *bad_bodies[:3],
        ],
    )


def drill_provider_outage(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """Postmark down: its breaker opens, SMTP delivers; once healed, the breaker closes again."""
    breaker = _breaker(stack, "postmark")
    breaker.reset()
    cooldown = stack.settings["JOBS_CIRCUIT_BREAKER"]["cooldown_seconds"]
    stack.sandbox.set_fault("postmark", outage=True)
    fault_at = time.time()
    during = submit(stack, burst_bodies(_tag(5), plan.burst, EMAIL_MIX))
    wait_final(stack, during.ids, plan.final_timeout)
    state_during = breaker.state()["state"]
    outcome = tally(stack, during.ids, refused=during.refused)
    during_providers = Counter(outcome.rows[i]["provider"] for i in during.ids if outcome.rows[i]["status"] == "sent")
    stack.sandbox.clear_faults("postmark")
    healed_at = time.time()
    time.sleep(cooldown + 0.5)
    after = submit(stack, burst_bodies(_tag(5), plan.burst, EMAIL_MIX))
    reclosed = wait_until(lambda: breaker.state()["state"] == CLOSED, timeout=plan.final_timeout)
    closed = CLOSED if reclosed else breaker.state()["state"]
    closed_after = time.time() - healed_at
    wait_final(stack, after.ids, plan.final_timeout)
    after_outcome = tally(stack, after.ids, refused=after.refused)
    outcome.add(after_outcome)
    changes = _transitions(stack, "postmark", fault_at)
    opened = any(to == "open" and at < healed_at for _, to, at in changes)
    closed_later = any((frm, to) == ("half_open", "closed") and at >= healed_at for frm, to, at in changes)
    return result_row(
        5,
        "Primary e-mail provider outage",
        outcome,
        checks={
            "the postmark breaker opened during the outage": opened and state_during != CLOSED,
            "every e-mail sent during the outage went through smtp": set(during_providers) == {"smtp"},
            "the breaker closed after the sandbox healed": closed == CLOSED and closed_later,
            "e-mail goes through postmark again afterwards": after_outcome.providers["postmark"] > 0,
        },
        notes=[
            f"during: {dict(during_providers)}, breaker {state_during}",
            f"after healing: {dict(after_outcome.providers)}",
            "transitions: " + ", ".join(f"{frm}->{to} +{at - fault_at:.1f}s" for frm, to, at in changes),
            "recovery = heal -> breaker closed",
        ],
        recovery=closed_after,
    )


def drill_half_errors(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """Each channel's primary answers 500 to half the calls for a while, under steady traffic."""
    primaries = [providers[0]["name"] for providers in stack.settings["NOTIFICATIONS_PROVIDERS"].values()]
    for provider in primaries:
        stack.sandbox.set_fault(provider, error_rate=0.5, status=500)
    started, submission, chunk = time.monotonic(), Submission(), 0
    while time.monotonic() - started < plan.half_errors_seconds:
        submission.add(submit(stack, burst_bodies(f"{_tag(6)}-{chunk}", 6)))
        chunk += 1
        time.sleep(max(0.0, started + 2 * chunk - time.monotonic()))
    stats = stack.sandbox.stats()
    stack.sandbox.clear_faults()
    healed_at = time.time()
    wait_final(stack, submission.ids, plan.final_timeout)
    outcome = tally(stack, submission.ids, fault_end=healed_at, refused=submission.refused)
    refused = {p: stats.get(p, {}).get("rejected", 0) for p in primaries}
    accepted = {p: stats.get(p, {}).get("accepted", 0) for p in primaries}
    return result_row(
        6,
        f"Primaries: 500 on half the calls, {plan.half_errors_seconds:.0f}s",
        outcome,
        checks={
            "the fallbacks carried part of the traffic": outcome.providers["smtp"] + outcome.providers["vonage"] > 0
        },
        notes=[
            f"refused by the sandbox {refused}, accepted {accepted}",
            f"sent by {dict(outcome.providers)}",
        ],
    )


def drill_retry_after(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """FCM (push has no fallback) answers 429 with Retry-After; no call for a key comes sooner than that.

    The sandbox does not record refused calls by key, so a watcher polls the rows: after a
    429 a row stays `failed` for at least Retry-After, long enough to be seen.  The time
    it was seen failing with a 429 is when the worker got the answer, never earlier than
    the refused call; the ledger's accepted_at is when the next call arrived.
    """
    wait = plan.retry_after_seconds
    _breaker(stack, "fcm").reset()
    stack.sandbox.set_fault("fcm", retry_after=wait)
    tag = _tag(7)
    watcher = RowWatcher(stack)
    submission = submit(stack, burst_bodies(tag, plan.retry_after_burst, [(Priority.SECURITY, "push")]))
    watcher.watch(submission.ids)
    # Long enough for every row to meet the fault at least once and some to meet it twice.
    time.sleep(wait + 2)
    stack.sandbox.clear_faults("fcm")
    healed_at = time.time()
    # Read after the fault is gone, so no 429 can come after the count.
    rejected = stack.sandbox.stats().get("fcm", {}).get("rejected", 0)
    wait_final(stack, submission.ids, plan.final_timeout)
    watcher.stop()
    outcome = tally(stack, submission.ids, fault_end=healed_at, refused=submission.refused)
    too_soon, gaps, scheduled_short = [], [], []
    for notification_id, refusals in watcher.refusals().items():
        row = outcome.rows[notification_id]
        calls = [failed_at for failed_at, _ in refusals]
        if any(later - earlier < wait for earlier, later in zip(calls, calls[1:], strict=False)):
            too_soon.append(notification_id)
        for failed_at, next_at in refusals:
            if next_at is not None and next_at - failed_at < wait:
                scheduled_short.append(notification_id)
        entries = outcome.ledger.get(row["key"], [])
        if entries:
            gap = entries[0]["accepted_ts"] - calls[-1]
            gaps.append(gap)
            if gap < wait:
                too_soon.append(notification_id)
    seen = sum(len(r) for r in watcher.refusals().values())
    attempts = sum(r["attempts"] for r in outcome.rows.values())
    calls = rejected + sum(len(entries) for entries in outcome.ledger.values())
    return result_row(
        7,
        f"FCM 429 with Retry-After: {wait}",
        outcome,
        checks={
            f"no call for a key came sooner than {wait}s after its 429": not too_soon,
            "every 429 scheduled the next attempt at least Retry-After later": not scheduled_short,
            "every 429 the sandbox answered was seen on a row": seen == rejected,
        },
        notes=[
            f"{rejected} calls refused with 429, {seen} seen on rows",
            f"shortest 429 -> accepted gap {min(gaps):.2f}s" if gaps else "no row was accepted after a 429",
            f"{calls} calls to fcm for {outcome.submitted} notifications ({attempts} attempts counted): after a "
            "429 the others waited out fcm's pace instead of calling it",
        ],
    )


class RowWatcher:
    """Polls notification rows every 50 ms and remembers each time it sees one failed with a 429."""

    def __init__(self, stack: ChaosStack) -> None:
        self.stack = stack
        self.ids: list[str] = []
        #: (id, when the row was written failing) -> (that moment, next attempt): two 429s of one attempt (a
        #: refusal uses none) are two entries.
        self._seen: dict[tuple[str, float], tuple[float, float | None]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, ids: list[str]) -> None:
        self.ids = list(ids)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def refusals(self) -> dict[str, list[tuple[float, float | None]]]:
        """Per notification, (time the 429 was recorded, next attempt scheduled for), oldest first."""
        by_id: dict[str, list] = {}
        for (notification_id, _written), seen in sorted(self._seen.items()):
            by_id.setdefault(notification_id, []).append(seen)
        return by_id

    def _run(self) -> None:
        # Its own connection: the drill's thread queries the stack's at the same time.
        import psycopg

        with psycopg.connect(self.stack.database_url, autocommit=True) as conn:
            while not self._stop.is_set():
                for notification_id, status, error, updated, next_at in conn.execute(
                    "SELECT id::text, status, last_error, extract(epoch from updated_at)::float8, "
                    "extract(epoch from next_attempt_at)::float8 FROM notifications_notification "
                    "WHERE id = ANY(%s::uuid[])",
                    (self.ids,),
                ).fetchall():
                    if status == "failed" and "HTTP 429" in error:
                        self._seen.setdefault((notification_id, updated), (updated, next_at))
                time.sleep(0.05)


#: How often drill 8 looks for a held call of its poison: a small share of the provider timeout (3 s in the
#: stack's settings), so the kill always lands while the worker still waits for its answer.
POISON_WATCH_SECONDS = 0.05


class HeldCallKiller:
    """Watches the sandbox for calls held for one recipient and SIGKILLs the pool child that made each: every time,
    from outside, as an OOM kill or a segfault in a native library would end a worker mid-call."""

    def __init__(self, stack: ChaosStack, to: str) -> None:
        self.stack = stack
        self.to = to
        #: Per kill: the pool, the pid, the provider called, and seconds from the sandbox holding the call to the kill.
        self.kills: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._killed_calls: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> HeldCallKiller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(POISON_WATCH_SECONDS):
            try:
                self._kill_held()
            except requests.RequestException as exc:  # the next look may do better; say so if none does
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def _kill_held(self) -> None:
        sandbox = self.stack.sandbox
        for call in sandbox.held():
            if call["to"] != self.to or call["id"] in self._killed_calls:
                continue
            port = sandbox.smtp_port if call["where"] == "DATA" else sandbox.http_port
            victim = self.stack.kill_connection_owner(call["peer_port"], port)
            if victim is None:
                continue  # not found this time; the call is still held, so the next look tries again
            self._killed_calls.add(call["id"])
            pool, pid = victim
            self.kills.append(
                {"pool": pool, "pid": pid, "provider": call["provider"], "after": time.time() - call["held_ts"]}
            )


def drill_poison(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """One message whose every provider call kills its worker process among normal ones: dead after exactly max
    attempts.  The fault comes from outside: the sandbox holds the poison's calls unanswered and the drill SIGKILLs
    the pool child that owns the held connection; the poison is told by its address alone."""
    priority = Priority.TRANSACTIONAL
    max_attempts = stack.settings["JOBS_RETRY_POLICIES"][priority]["max_attempts"]
    tag = _tag(8)
    bodies = burst_bodies(tag, plan.poison_companions, [(priority, "email"), (priority, "sms"), (priority, "push")])
    poison_key = f"{tag}-poison"
    poison_body = message_body(tag, 999, priority, "email")
    bodies.insert(len(bodies) // 2, (poison_key, poison_body))
    # Transactional e-mail goes to postmark first; the fallback holds it too, should postmark be skipped.
    email_providers = [provider["name"] for provider in stack.settings["NOTIFICATIONS_PROVIDERS"]["email"]]
    for provider in email_providers:
        stack.sandbox.set_fault(provider, hold_to=poison_body["to"])
    killer = HeldCallKiller(stack, poison_body["to"]).start()
    submitted_at = time.time()
    try:
        submission = submit(stack, bodies)
        wait_final(stack, submission.ids, plan.final_timeout)
    finally:
        killer.stop()
    stack.sandbox.clear_faults()
    outcome = tally(stack, submission.ids, fault_end=submitted_at, refused=submission.refused)
    poison = next((r for r in outcome.rows.values() if r["key"].endswith(poison_key)), None)
    others = [r for r in outcome.rows.values() if r is not poison]
    letter = stack.query("SELECT message FROM jobs_deadletter WHERE subject_id = %s", (poison["id"],)) if poison else []
    kills = killer.kills
    slowest = max((kill["after"] for kill in kills), default=None)
    return result_row(
        8,
        "Poison message kills its worker",
        outcome,
        checks={
            f"the poison is dead after exactly {max_attempts} attempts": bool(poison)
            and poison["status"] == "dead"
            and poison["attempts"] == max_attempts,
            "the poison was never accepted by a provider": bool(poison) and poison["key"] not in outcome.ledger,
            "every attempt of the poison ended with its worker SIGKILLed mid-call": bool(poison)
            and len(kills) == poison["attempts"],
            "every other notification was sent": all(r["status"] == "sent" for r in others),
        },
        notes=[
            f"poison: {poison['status'] if poison else 'missing'} after {poison['attempts'] if poison else '?'} "
            f"attempts (max {max_attempts}), dead letter: {letter[0][0][:90] if letter else 'none'!r}",
            f"{len(kills)} worker(s) SIGKILLed holding its call to {dict(Counter(k['provider'] for k in kills))}"
            + (f", each at most {slowest:.2f}s after the sandbox held it" if kills else "")
            + f" (provider timeout {stack.settings['PROVIDER_TIMEOUT_SECONDS']}s)",
            *(f"watching the sandbox failed: {error}" for error in killer.errors[:3]),
            "recovery = submit -> last final",
        ],
    )


def drill_idempotency(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """The same Idempotency-Key and body from many clients at once: exactly one notification."""
    key, body = burst_bodies(_tag(9), 1, [(Priority.TRANSACTIONAL, "email")])[0]
    clients = plan.idempotency_clients
    barrier = threading.Barrier(clients)
    answers: list[tuple[int | str, str | None]] = [("none", None)] * clients

    def client(index: int) -> None:
        session = api_session(stack)
        barrier.wait()
        try:
            response = post_notification(session, stack, key, body)
            answers[index] = (
                response.status_code,
                response.json().get("id") if response.status_code == 202 else response.text[:200],
            )
        except requests.RequestException as exc:
            answers[index] = (type(exc).__name__, None)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = Counter(code for code, _ in answers)
    ids = sorted({value for code, value in answers if code == 202})
    rows = stack.query("SELECT id::text FROM notifications_notification WHERE idempotency_key LIKE %s", (f"%:{key}",))
    wait_final(stack, ids, plan.final_timeout)
    outcome = tally(stack, ids)
    return result_row(
        9,
        f"One Idempotency-Key, {clients} clients",
        outcome,
        checks={
            f"all {clients} answered 202": codes == Counter({202: clients}),
            "every answer named the same notification": len(ids) == 1,
            "exactly one row in the database": len(rows) == 1,
            "exactly one ledger entry": sum(len(e) for e in outcome.ledger.values()) == 1,
        },
        notes=[f"answers {dict(codes)}", f"{len(rows)} row(s)"],
    )


def drill_redis_down_at_submit(stack: ChaosStack, plan: Plan, rng: random.Random) -> DrillRow:
    """Redis down while clients submit: every call answers 202 fast; the relay publishes once Redis is back.

    A pool may exit on the broker's loss (kombu's race, see drill 3); the drill restarts it as a supervisor
    would, reports it, and fails only a restart without kombu's signature.
    """
    before = stack.pids()
    stack.stop_redis()
    try:
        submission = submit(stack, burst_bodies(_tag(10), plan.redis_down_submissions), retry_seconds=0)
    finally:
        stack.start_redis()
    back_at = time.time()
    wait_until(lambda: not all(stack.alive().values()), timeout=BROKER_CRASH_WINDOW_SECONDS)
    crashed = _restart_crashed_pools(stack)
    wait_final(stack, submission.ids, plan.final_timeout)
    outcome = tally(stack, submission.ids, fault_end=back_at, refused=submission.refused)
    p50, p99 = percentile(submission.latencies, 0.5), percentile(submission.latencies, 0.99)
    return result_row(
        10,
        "Redis down at submit",
        outcome,
        checks={
            f"all {plan.redis_down_submissions} answered 202": submission.answers
            == Counter({202: plan.redis_down_submissions}),
            f"p99 under {REDIS_DOWN_P99_LIMIT_SECONDS * 1000:.0f} ms": p99 < REDIS_DOWN_P99_LIMIT_SECONDS,
            "no process was restarted (a worker that crashed on the broker loss aside, kombu#582)": all(
                stack.alive().values()
            )
            and all(pid == before[name] or name in crashed for name, pid in stack.pids().items())
            and all(crashed.values()),
        },
        notes=[
            f"submit latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms",
            f"answers {dict(submission.answers)}",
            *([f"kombu crash on the broker loss, restarted: {', '.join(crashed)}"] if crashed else []),
        ],
    )
