"""Durable jobs for any Django app: declare a function as a job, enqueue it inside your transaction, and the
runtime runs it with the guarantees the notifications have.

    from jobs.durable import job
    from jobs.errors import PermanentError, TransientError

    @job("shop.sync_order", breaker="crm", limit="crm")
    def sync_order(*, order_id: int) -> None:
        ...  # raise TransientError for "try later", PermanentError for "never"

    sync_order.enqueue(order_id=order.pk, idempotency_key=f"order-{order.pk}")

    enqueue ........ one row in jobs_job (status queued) in the caller's transaction; its message is
                     published after the commit, on a background thread (a broker that is down never
                     holds the caller); a publish that fails leaves the row pending for the relay
    claim .......... one conditional UPDATE on PostgreSQL's clock: attempts + 1, a lease, a claim token;
                     a job whose attempts are used up (its message kept killing workers) is dead-lettered
                     there; a job whose earlier job of the same order key is unfinished waits for it
    run ............ the breaker (open: not called, no attempt used), the global rate limit (no token:
                     not called, no attempt used), then the function with its keyword arguments
    outcome ........ success; TransientError or any unexpected exception: retried with exponential backoff
                     and full jitter within the policy's attempts and time budget (held in PostgreSQL, no
                     broker countdown); PermanentError (or the policy used up): dead letter, replayable
                     from the admin.  Only TransientError counts against the breaker (a bug in the job is
                     not the dependency's fault); a TransientError with retry_after (a 429) also paces
                     the limiter
    relay .......... every RELAY_INTERVAL_SECONDS: due retries, jobs never published, jobs whose worker
                     died (lease expired), jobs whose message was lost (Redis restarted), waiting jobs whose
                     turn came

Redelivery is expected, so a job must be idempotent towards what it calls: `current_job()` gives its id,
attempt and idempotency key, to pass on to a remote that deduplicates.
"""

from __future__ import annotations

import contextvars
import inspect
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connection, transaction
from django.db.models import DateTimeField, Exists, ExpressionWrapper, F, OuterRef, Q
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.module_loading import autodiscover_modules

from jobs.breaker import breaker_config, breaker_named, register_breaker_names
from jobs.errors import PermanentError, TransientError
from jobs.metrics import JOB_RUNS, JOB_SECONDS, run_in_pipeline
from jobs.publishing import publish_after_commit
from jobs.ratelimit import RateLimiter, rate_limiter_for
from jobs.redis import queue_head, queue_lost_before
from jobs.retry import RetryPolicy, retry_policy

logger = logging.getLogger(__name__)

#: The Celery task that runs durable jobs (jobs/tasks.py), published by name.
RUN_TASK = "jobs.run"
#: The relay's task (beat).
RELAY_TASK = "jobs.relay"

#: The policy of a job that names none: ten attempts over up to an hour.
DEFAULT_RETRY = RetryPolicy(max_attempts=10, base_delay=2, max_delay=300, budget_seconds=3600)
#: Seconds a job may sleep in its worker for a rate-limit token before it gives its slot back and waits in
#: PostgreSQL instead.
LIMIT_WAIT_SECONDS = 0.5

Resolver = str | Callable[[Mapping[str, Any]], str] | None
LimitResolver = str | Callable[[Mapping[str, Any]], "RateLimiter | None"] | None


# --- declaring ----------------------------------------------------------------------


@dataclass(frozen=True)
class JobContext:
    """What a running job may want to know about itself (`current_job()`)."""

    id: int
    name: str
    attempt: int
    idempotency_key: str


_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("current_job", default=None)


def current_job() -> JobContext | None:
    """The job this code runs in, or None outside one."""
    return _current.get()


@dataclass(frozen=True)
class JobDefinition:
    """A declared job: its function and how it is run.  Call it to run the function in place; `enqueue` it to
    run it durably."""

    name: str
    function: Callable[..., Any]
    queue: str
    retry: RetryPolicy
    #: Names the breaker of a run (a string, or a function of the job's arguments: one per endpoint, say).
    breaker: Resolver = None
    #: The global rate limit: a name in JOBS_RATE_LIMITS, or a function of the arguments giving a limiter.
    limit: LimitResolver = None
    #: How many consecutive failures open the breaker, and for how long (JOBS_CIRCUIT_BREAKER by default).
    breaker_failures: int | None = None
    signature: inspect.Signature = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "signature", inspect.signature(self.function))

    def __call__(self, **kwargs: Any) -> Any:
        return self.function(**kwargs)

    def breaker_name(self, arguments: Mapping[str, Any]) -> str:
        if self.breaker is None:
            return ""
        return self.breaker if isinstance(self.breaker, str) else self.breaker(arguments)

    def limiter(self, arguments: Mapping[str, Any]) -> RateLimiter | None:
        if self.limit is None:
            return None
        if isinstance(self.limit, str):
            limiter = rate_limiter_for(self.limit)
            if limiter is None:
                raise ImproperlyConfigured(f"job {self.name}: JOBS_RATE_LIMITS has no limit named {self.limit!r}")
            return limiter
        return self.limit(arguments)

    def enqueue(self, *, idempotency_key: str = "", order_key: str = "", **kwargs: Any):
        """Run the job durably once the caller's transaction commits; the job's row (the earlier one, for an
        idempotency key already used).  Raises TypeError for arguments the function does not take or
        that are not JSON, before anything is written."""
        return job_enqueue(self, [Enqueue(kwargs, idempotency_key, order_key)])[0]

    def enqueue_many(self, items: Iterable[Enqueue], *, per_message: int = 1) -> list:
        """Several runs in one INSERT (see enqueue).  `per_message` > 1 wakes a worker for up to that many runs at
        once (one message, one claim); a worker runs them one after another for at most JOBS_BATCH_SECONDS and
        hands the rest back.  Group runs that call the same place, so that one slow remote holds only its own."""
        return job_enqueue(self, list(items), per_message=per_message)


@dataclass(frozen=True)
class Enqueue:
    """One run to enqueue: its keyword arguments, and optionally its idempotency and order keys."""

    arguments: Mapping[str, Any]
    idempotency_key: str = ""
    order_key: str = ""


_definitions: dict[str, JobDefinition] = {}
_discovered = False


def job(
    name: str | None = None,
    *,
    queue: str | None = None,
    retry: RetryPolicy | str | None = None,
    breaker: Resolver = None,
    limit: LimitResolver = None,
    breaker_failures: int | None = None,
) -> Callable[[Callable[..., Any]], JobDefinition]:
    """Declare `function` as a durable job named `name` (its dotted path by default).

    `queue`: a queue the worker pools consume (JOBS_DEFAULT_QUEUE by default).  `retry`: a RetryPolicy or
    the name of one in JOBS_RETRY_POLICIES.  `breaker`, `limit`, `breaker_failures`: see JobDefinition.  Declare jobs in a
    module named `tasks` of an installed app, so every process (workers, web) knows them.
    """

    def declare(function: Callable[..., Any]) -> JobDefinition:
        job_name = name or f"{function.__module__}.{function.__qualname__}"
        policy = retry_policy(retry) if isinstance(retry, str) else (retry or DEFAULT_RETRY)
        definition = JobDefinition(
            name=job_name,
            function=function,
            queue=queue or settings.JOBS_DEFAULT_QUEUE,
            retry=policy,
            breaker=breaker,
            limit=limit,
            breaker_failures=breaker_failures,
        )
        known = _definitions.get(job_name)
        if known is not None and known.function.__qualname__ != function.__qualname__:
            raise ImproperlyConfigured(f"two jobs are named {job_name!r}: {known.function} and {function}")
        _definitions[job_name] = definition
        if isinstance(breaker, str):
            register_breaker_names(_static_breakers)
        # Imported here: deadletters imports models, which a module declaring jobs may load before.
        from jobs.deadletters import register_replayer

        register_replayer(job_name, job_replay, refusal=_replay_refusal)
        return definition

    return declare


def _static_breakers() -> list[str]:
    return [d.breaker for d in _definitions.values() if isinstance(d.breaker, str)]


def _discover() -> None:
    """Import the `tasks` modules of the installed apps once, where jobs are declared."""
    global _discovered
    if not _discovered:
        _discovered = True
        autodiscover_modules("tasks")


def job_definition(name: str) -> JobDefinition | None:
    """The declared job named `name`; the `tasks` modules of the installed apps are imported first if needed."""
    if name not in _definitions:
        _discover()
    return _definitions.get(name)


def job_definitions() -> dict[str, JobDefinition]:
    _discover()
    return dict(_definitions)


# --- enqueueing ------------------------------------------------------------------


def job_enqueue(definition: JobDefinition, items: list[Enqueue], *, per_message: int = 1):
    """Write the runs of `definition` and publish them after the caller's commit (see JobDefinition.enqueue)."""
    from jobs.models import Job, JobStatus

    rows = []
    for item in items:
        arguments = dict(item.arguments)
        try:
            definition.signature.bind(**arguments)
        except TypeError as exc:
            raise TypeError(f"job {definition.name}: {exc}") from None
        try:
            arguments = json.loads(json.dumps(arguments))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"job {definition.name}: its arguments must be JSON: {exc}") from None
        for key, label in ((item.idempotency_key, "idempotency_key"), (item.order_key, "order_key")):
            if not isinstance(key, str) or len(key) > 200:
                raise TypeError(f"job {definition.name}: {label} must be a string of at most 200 characters")
        rows.append(
            Job(
                name=definition.name,
                queue=definition.queue,
                arguments=arguments,
                idempotency_key=item.idempotency_key,
                order_key=item.order_key,
                status=JobStatus.QUEUED,
                max_attempts=definition.retry.max_attempts,
                breaker=definition.breaker_name(arguments)[:100],
            )
        )
    if not rows:
        return []
    now = timezone.now()
    for row in rows:
        row.retry_from = row.queued_at = now
    with transaction.atomic():
        if not any(row.idempotency_key for row in rows):
            written = [(row, True) for row in Job.objects.bulk_create(rows)]
        else:
            try:
                with transaction.atomic():
                    written = [(row, True) for row in Job.objects.bulk_create(rows)]
            except IntegrityError:
                written = _enqueue_one_by_one(rows)
        new = [row for row, is_new in written if is_new]
        for start in range(0, len(new), max(1, per_message)):
            job_publish(*new[start : start + max(1, per_message)])
    return [row for row, _ in written]


def _enqueue_one_by_one(rows: list) -> list[tuple[Any, bool]]:
    """Rows one at a time: a key already used gives its earlier job, not published again; (row, new?) each."""
    from jobs.models import Job

    written = []
    for row in rows:
        try:
            with transaction.atomic():
                row.save(force_insert=True)
            written.append((row, True))
        except IntegrityError:
            written.append((Job.objects.get(name=row.name, idempotency_key=row.idempotency_key), False))
    return written


def job_publish(*rows) -> None:
    """Wake a worker for the jobs (one message; one queue) after the commit; a refused publish sets them back to
    pending for the relay."""
    from jobs.models import Job, JobStatus

    job_ids = [row.pk for row in rows]

    def back_to_pending() -> None:
        Job.objects.filter(pk__in=job_ids, status=JobStatus.QUEUED).update(status=JobStatus.PENDING)

    publish_after_commit(RUN_TASK, args=job_ids, queue=rows[0].queue, on_failed=back_to_pending, background=True)


# --- running -----------------------------------------------------------------------

#: Rows a worker may take now, on PostgreSQL's clock.
_CLAIMABLE = """(j.status IN ('pending', 'queued', 'waiting')
       OR (j.status = 'retrying' AND j.next_attempt_at <= statement_timestamp())
       OR (j.status = 'running' AND j.lease_expires_at < statement_timestamp()))"""
#: No earlier job of the same name and order key is unfinished.  `p.order_key <> ''` is implied, and says so to
#: the planner, which then uses the partial index job_order_idx instead of every earlier job of the name.
_IN_TURN = """(j.order_key = '' OR NOT EXISTS (
        SELECT 1 FROM jobs_job p WHERE p.order_key <> '' AND p.name = j.name AND p.order_key = j.order_key
            AND p.id < j.id
            AND p.status IN ('pending', 'queued', 'waiting', 'running', 'retrying')))"""
# Bandit B608 (SQL built from strings): the parts are the constants above; every value is a parameter.
_CLAIM_SQL = f"""
WITH claimed AS (
    UPDATE jobs_job j SET
        status = 'running', attempts = j.attempts + 1, claim_token = %(token)s,
        lease_expires_at = statement_timestamp() + make_interval(secs => %(lease)s),
        started_at = statement_timestamp(), updated_at = statement_timestamp()
    WHERE j.id = ANY(%(ids)s) AND {_CLAIMABLE} AND j.attempts < j.max_attempts AND {_IN_TURN}
    RETURNING j.*, 'claimed' AS verdict
)
SELECT * FROM claimed
UNION ALL
SELECT j.*, CASE WHEN j.attempts >= j.max_attempts THEN 'exhausted' ELSE 'blocked' END FROM jobs_job j
WHERE j.id = ANY(%(ids)s) AND {_CLAIMABLE} AND (j.attempts >= j.max_attempts OR NOT {_IN_TURN})
"""  # nosec B608


def job_claim(*, job_ids: list[int]) -> list:
    """Take the jobs that are due, in turn and have attempts left (see the module docstring); dead-letter those
    whose attempts are used up; mark waiting those whose order key has an earlier job unfinished."""
    from jobs.models import Job, JobStatus

    ids = []
    for job_id in job_ids:
        if isinstance(job_id, bool) or not isinstance(job_id, int):
            raise TypeError(f"{job_id!r} is not a job id")
        ids.append(job_id)
    params = {"ids": ids, "token": uuid.uuid4(), "lease": float(settings.JOBS_CLAIM_LEASE_SECONDS)}
    found = list(Job.objects.raw(_CLAIM_SQL, params))
    for row in found:
        if row.verdict == "exhausted":
            _dead(row, f"gave up after {row.attempts} attempts; the last did not finish (its worker died or timed out)")
    blocked = [row.pk for row in found if row.verdict == "blocked"]
    if blocked:
        Job.objects.filter(pk__in=blocked, status__in=[JobStatus.PENDING, JobStatus.QUEUED]).update(
            status=JobStatus.WAITING, updated_at=Now()
        )
    return [row for row in found if row.verdict == "claimed"]


def jobs_run(*, job_ids: list[int]) -> None:
    """Claim the jobs and run them one after another; past JOBS_BATCH_SECONDS the ones not started are handed back
    (queued again, no attempt used, published one per message), so a slow remote cannot push a message past the
    task's time limit."""
    rows = job_claim(job_ids=job_ids)
    if not rows:
        logger.info("jobs %s: not claimable (done, owned by another worker, waiting their turn, or not due)", job_ids)
    started = time.monotonic()
    for index, row in enumerate(rows):
        if index and time.monotonic() - started > settings.JOBS_BATCH_SECONDS:
            _hand_back(rows[index:])
            return
        job_run_claimed(row)


def _hand_back(rows: list) -> None:
    from jobs.models import JobStatus

    with transaction.atomic():
        for row in rows:
            if _still_claimed(row).update(
                status=JobStatus.QUEUED, attempts=F("attempts") - 1, lease_expires_at=None, queued_at=Now()
            ):
                job_publish(row)
    logger.info("jobs: %s claimed job(s) handed back after %ss", len(rows), settings.JOBS_BATCH_SECONDS)


def job_run_claimed(row) -> str:
    """One attempt of a claimed job: breaker, limiter, the function, its outcome; the outcome's name."""
    started = time.monotonic()
    definition = job_definition(row.name)
    if definition is None:
        _dead(row, PermanentError(f"no job named {row.name!r} in this version of the code"), claimed=True)
        return _count(row, "dead", started)
    breaker = breaker_named(row.breaker, failure_threshold=definition.breaker_failures) if row.breaker else None
    permit = breaker.allow() if breaker is not None else None
    if permit is not None and not permit.call:
        # Spread over up to twice the cool-down: the jobs an open breaker turned away do not all come back at once.
        wait = permit.wait * random.uniform(1.0, 2.0)
        return _count(row, _not_called(row, definition, wait, f"breaker {row.breaker} is open"), started)
    try:
        limiter = definition.limiter(row.arguments)
        wait = limiter.acquire_within(1, max_wait=LIMIT_WAIT_SECONDS) if limiter is not None else 0.0
    except Exception as exc:  # the limit is misconfigured or its endpoint gone: an attempt that failed
        if permit is not None:
            breaker.release(permit)
        logger.exception("job %s #%s: its rate limit could not be read", row.name, row.pk)
        return _count(row, _retry(row, definition, exc), started)
    if wait > 0:
        if permit is not None:
            breaker.release(permit)
        return _count(row, _not_called(row, definition, wait, f"rate limit {limiter.name}: no token"), started)
    token = _current.set(JobContext(row.pk, row.name, row.attempts, row.idempotency_key))
    try:
        definition.function(**row.arguments)
    except PermanentError as exc:
        if breaker is not None:
            breaker.record_success(permit)  # the dependency answered; the input was wrong
        _dead(row, exc, claimed=True)
        return _count(row, "dead", started)
    except TransientError as exc:
        if breaker is not None:
            breaker.record_failure(str(exc)[:200], permit)
        if exc.retry_after and limiter is not None and exc.status == 429:
            limiter.penalize(exc.retry_after)
        return _count(row, _retry(row, definition, exc, retry_after=exc.retry_after), started)
    except Exception as exc:  # a bug or an unclassified failure: retried (a deploy may fix it), breaker untouched
        if permit is not None:
            breaker.release(permit)
        logger.exception("job %s #%s: attempt %s raised", row.name, row.pk, row.attempts)
        return _count(row, _retry(row, definition, exc), started)
    finally:
        _current.reset(token)
    if breaker is not None:
        breaker.record_success(permit)
    if _still_claimed(row).update(status="succeeded", finished_at=Now(), lease_expires_at=None, last_error=""):
        _next_in_order(row)
    return _count(row, "succeeded", started)


def _count(row, outcome: str, started: float) -> str:
    seconds = time.monotonic() - started

    def record(pipe) -> None:
        JOB_RUNS.inc(row.name, outcome, pipe=pipe)
        JOB_SECONDS.observe_many({(row.name,): [seconds]}, pipe=pipe)

    run_in_pipeline(record)
    # A success is counted, not logged, unless DEBUG is asked for (a line per job is noise at hundreds a second).
    level = _LEVELS.get(outcome, logging.INFO)
    logger.log(level, "job %s #%s attempt %s: %s in %.3fs", row.name, row.pk, row.attempts, outcome, seconds)
    return outcome


_LEVELS = {"succeeded": logging.DEBUG, "retried": logging.WARNING, "dead": logging.WARNING}


def _still_claimed(row):
    from jobs.models import Job, JobStatus

    return Job.objects.filter(pk=row.pk, claim_token=row.claim_token, status=JobStatus.RUNNING)


def _not_called(row, definition: JobDefinition, wait: float, reason: str) -> str:
    """Nothing was called (breaker open, no rate-limit token): wait without using an attempt, within the
    time budget."""
    from jobs.models import JobStatus

    now = timezone.now()
    if now + timedelta(seconds=wait) > row.retry_from + timedelta(seconds=definition.retry.budget_seconds):
        _dead(row, TransientError(f"time budget used up waiting: {reason}"), claimed=True)
        return "dead"
    _still_claimed(row).update(
        status=JobStatus.RETRYING,
        attempts=F("attempts") - 1,
        next_attempt_at=_in(max(wait, 0.05)),
        lease_expires_at=None,
        last_error=reason,
    )
    return "deferred"


def _retry(row, definition: JobDefinition, error: BaseException, *, retry_after: float | None = None) -> str:
    from jobs.models import JobStatus

    now = timezone.now()
    moment = definition.retry.next_attempt_at(
        attempt=row.attempts, created_at=row.retry_from, now=now, retry_after=retry_after
    )
    if moment is None:
        _dead(row, error, claimed=True)
        return "dead"
    _still_claimed(row).update(
        status=JobStatus.RETRYING,
        next_attempt_at=_in((moment - now).total_seconds()),
        lease_expires_at=None,
        last_error=f"{type(error).__name__}: {error}"[:4000],
    )
    return "retried"


def _in(seconds: float) -> ExpressionWrapper:
    """`seconds` from now on PostgreSQL's clock, which the claim and the relay compare with."""
    return ExpressionWrapper(Now() + timedelta(seconds=seconds), output_field=DateTimeField())


def _dead(row, error: BaseException | str, *, claimed: bool = False) -> None:
    """Dead-letter the job (the claimed run's outcome, or a job found exhausted at the claim)."""
    from jobs.deadletters import deadletter_record
    from jobs.models import Job, JobStatus

    with transaction.atomic():
        rows = _still_claimed(row) if claimed else Job.objects.filter(pk=row.pk, status=row.status)
        if not rows.update(
            status=JobStatus.DEAD, finished_at=Now(), lease_expires_at=None, last_error=str(error)[:4000]
        ):
            return
        deadletter_record(
            job_name=row.name,
            arguments={"kwargs": row.arguments},
            error=error,
            attempts=row.attempts,
            queue=row.queue,
            subject=row,
            dependency=row.breaker,
        )
    _next_in_order(row)


# The next unfinished job of an order key, made queued if it was waiting, in one round trip (the partial index
# job_order_idx: see _IN_TURN).
_NEXT_IN_ORDER_SQL = """
WITH following AS (
    SELECT id FROM jobs_job
    WHERE order_key <> '' AND name = %(name)s AND order_key = %(key)s AND id > %(id)s
        AND status IN ('pending', 'queued', 'waiting')
    ORDER BY id LIMIT 1
)
UPDATE jobs_job j SET
    status = CASE WHEN j.status = 'waiting' THEN 'queued' ELSE j.status END,
    queued_at = CASE WHEN j.status = 'waiting' THEN statement_timestamp() ELSE j.queued_at END
FROM following WHERE j.id = following.id
RETURNING j.id, j.queue
"""


def _next_in_order(row) -> None:
    """A job finished: publish the next unfinished job of its order key (a waiting one becomes queued)."""
    from jobs.models import Job

    if not row.order_key:
        return
    with connection.cursor() as cursor:
        cursor.execute(_NEXT_IN_ORDER_SQL, {"name": row.name, "key": row.order_key, "id": row.pk})
        found = cursor.fetchone()
    if found is not None:
        job_publish(Job(pk=found[0], queue=found[1]))


# --- operating -------------------------------------------------------------------


def job_cancel(*, job_id: int) -> tuple[bool, str]:
    """Cancel a job that has not started (or waits for a retry); (cancelled?, its status now)."""
    from jobs.models import Job, JobStatus

    with transaction.atomic():
        cancelled = Job.objects.filter(
            pk=job_id,
            status__in=[JobStatus.PENDING, JobStatus.QUEUED, JobStatus.WAITING, JobStatus.RETRYING],
        ).update(status=JobStatus.CANCELLED, finished_at=Now(), lease_expires_at=None)
        row = Job.objects.only("pk", "name", "order_key", "status").get(pk=job_id)
        if cancelled:
            _next_in_order(row)
    return bool(cancelled), row.status


def job_retry_now(*, job_id: int) -> bool:
    """A job waiting for its next attempt tries now; False if it was not waiting."""
    from jobs.models import Job, JobStatus

    with transaction.atomic():
        updated = Job.objects.filter(pk=job_id, status=JobStatus.RETRYING).update(
            status=JobStatus.QUEUED, next_attempt_at=None, queued_at=Now()
        )
        if updated:
            job_publish(Job.objects.only("pk", "queue").get(pk=job_id))
    return bool(updated)


def job_replay(dead_letter) -> None:
    """The dead letter's job back to work with its attempts and time budget fresh (jobs.deadletters calls it
    inside its transaction)."""
    from jobs.models import Job, JobStatus

    updated = Job.objects.filter(pk=dead_letter.subject_id, status=JobStatus.DEAD).update(
        status=JobStatus.QUEUED,
        attempts=0,
        retry_from=Now(),
        queued_at=Now(),
        next_attempt_at=None,
        finished_at=None,
        last_error="",
    )
    if updated:
        job_publish(Job.objects.only("pk", "queue").get(pk=dead_letter.subject_id))


def _replay_refusal(dead_letter) -> str | None:
    from jobs.models import Job

    if dead_letter.subject_type is None or dead_letter.subject_type.model_class() is not Job:
        return None
    if job_definition(dead_letter.job_name) is None:
        return f"no job named {dead_letter.job_name!r} exists in this version of the code; discard it"
    return None


def jobs_relay(*, now: datetime | None = None, queue_heads=queue_head) -> int:
    """Publish again what no worker will otherwise pick up (see the module docstring); how many jobs.

    Up to RELAY_BATCH_SIZE jobs per run, locked with SKIP LOCKED so concurrent relays share the work.
    `now`: PostgreSQL's time of this run; `queue_heads(name)` reads a queue.
    """
    from jobs.clock import database_now
    from jobs.models import UNFINISHED_JOB_STATUSES, Job, JobStatus

    now = now or database_now()
    pending_before = now - timedelta(seconds=settings.RELAY_PENDING_AFTER_SECONDS)
    unfinished_before = Job.objects.exclude(order_key="").filter(
        name=OuterRef("name"),
        order_key=OuterRef("order_key"),
        id__lt=OuterRef("id"),
        status__in=UNFINISHED_JOB_STATUSES,
    )
    due = (
        Q(status=JobStatus.RETRYING, next_attempt_at__lte=now)
        | Q(status=JobStatus.PENDING, queued_at__lt=pending_before)
        | Q(status=JobStatus.RUNNING, lease_expires_at__lt=now)
        | (Q(status=JobStatus.WAITING) & ~Exists(unfinished_before))
    )
    queues = Job.objects.filter(status=JobStatus.QUEUED).values_list("queue", flat=True).distinct()
    for name in queues:
        lost_before = queue_lost_before(
            queue_heads(name), now=now.timestamp(), grace=settings.RELAY_QUEUED_AFTER_SECONDS
        )
        due |= Q(status=JobStatus.QUEUED, queue=name, queued_at__lt=lost_before)
    with transaction.atomic():
        rows = list(
            Job.objects.select_for_update(skip_locked=True)
            .filter(due)
            .only("pk", "queue", "status", "breaker")
            .order_by("id")[: settings.RELAY_BATCH_SIZE]
        )
        if not rows:
            return 0
        rows, held = _breaker_gate(rows)
        if held:
            # Their breaker is open: one job per breaker goes (to be its probe once the cool-down is over), the
            # others wait one to two cool-downs more in PostgreSQL instead of being claimed only to be turned
            # away (thousands of webhooks to a receiver that is down would otherwise churn the workers).
            with connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE jobs_job SET next_attempt_at = statement_timestamp() "
                    "+ make_interval(secs => %s * (1 + random())) WHERE id = ANY(%s)",
                    [breaker_config().cooldown_seconds, [r.pk for r in held]],
                )
        # A running row's worker died (lease expired): the attempt it used was counted at its claim.
        Job.objects.filter(pk__in=[r.pk for r in rows]).update(
            status=JobStatus.QUEUED, queued_at=now, next_attempt_at=None, lease_expires_at=None
        )
        for row in rows:
            job_publish(row)
    logger.info("relay: published %s job(s) again; %s held by an open breaker", len(rows), len(held))
    return len(rows)


def _breaker_gate(rows: list) -> tuple[list, list]:
    """(the rows to publish, the rows held): of the rows whose breaker is open or half-open, only the first."""
    from jobs.models import JobStatus

    states: dict[str, bool] = {}
    go, held = [], []
    for row in rows:
        if not row.breaker or row.status != JobStatus.RETRYING:
            go.append(row)
            continue
        if row.breaker not in states:
            try:
                states[row.breaker] = breaker_named(row.breaker).state()["state"] != "closed"
            except Exception:  # Redis unreachable: the breaker lets calls through, and so does the relay
                states[row.breaker] = False
            if states[row.breaker]:
                go.append(row)  # the one that may become the probe
                continue
        (held if states[row.breaker] else go).append(row)
    return go, held
