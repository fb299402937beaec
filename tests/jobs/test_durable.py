"""Durable jobs (jobs/durable.py) on a job that is not a notification: the chore job that calls a partner (the
sandbox's receiver), run by real worker processes, with retries held in PostgreSQL, the relay, dead letters and
replay, the breaker and the global rate limit."""

import json
import uuid

import pytest
from django.db import transaction

from harness.waiting import wait_until
from jobs.deadletters import deadletter_replay
from jobs.durable import Enqueue, job_cancel, jobs_relay
from jobs.metrics import JOB_RUNS
from jobs.models import DeadLetter, DeadLetterStatus, Job, JobStatus
from jobs.redis import redis_client
from tests.jobs.chores.models import Chore
from tests.jobs.chores.tasks import PARTNER, PARTNER_RECEIVER, chore_call_partner

pytestmark = pytest.mark.django_db(transaction=True)


def _chore() -> Chore:
    return Chore.objects.create(owner="ops@example.com")


def _enqueue(chore: Chore, **keys) -> Job:
    with transaction.atomic():
        return chore_call_partner.enqueue(chore_id=str(chore.pk), **keys)


def _finished(ids: list[int], timeout: float = 40.0) -> dict[int, Job]:
    """The jobs once none is unfinished, relaying (as beat would) while waiting."""

    def done():
        jobs_relay()
        rows = {row.pk: row for row in Job.objects.filter(pk__in=ids)}
        return rows if all(row.status in ("succeeded", "dead", "cancelled") for row in rows.values()) else None

    return wait_until(done, timeout=timeout, interval=0.3, what=f"jobs {ids} finished")


def _calls(ledger, job: Job) -> list[dict]:
    return ledger.entries(provider=PARTNER_RECEIVER, idempotency_key=f"chore-{job.pk}")


def _runs(outcome: str) -> float:
    raw = redis_client().hget(f"jobs:metrics:{JOB_RUNS.name}", json.dumps([chore_call_partner.name, outcome]))
    return float(raw or 0)


# --- enqueue ----------------------------------------------------------------------


def test_bad_arguments_are_refused_before_anything_is_written():
    chore = _chore()
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        chore_call_partner.enqueue(chore_id=str(chore.pk), colour="red")
    with pytest.raises(TypeError, match="missing a required argument: 'chore_id'"):
        chore_call_partner.enqueue()
    with pytest.raises(TypeError, match="must be JSON"):
        chore_call_partner.enqueue(chore_id=chore.pk)  # a UUID object
    assert not Job.objects.exists()


def test_an_idempotency_key_used_again_returns_the_first_job():
    chore = _chore()
    first = _enqueue(chore, idempotency_key="sync-1")
    again = _enqueue(chore, idempotency_key="sync-1")
    many = chore_call_partner.enqueue_many(
        [Enqueue({"chore_id": str(chore.pk)}, "sync-1"), Enqueue({"chore_id": str(chore.pk)}, "sync-2")]
    )
    assert again.pk == first.pk and many[0].pk == first.pk and many[1].pk != first.pk
    assert Job.objects.count() == 2


def test_a_job_rolled_back_with_its_caller_is_neither_written_nor_published(broker):
    chore = _chore()
    with pytest.raises(RuntimeError), transaction.atomic():
        chore_call_partner.enqueue(chore_id=str(chore.pk))
        raise RuntimeError("the caller's transaction fails")
    assert not Job.objects.exists()


def test_cancel_before_the_claim_means_it_never_runs():
    chore = _chore()
    job = Job.objects.create(
        name=chore_call_partner.name,
        queue="jobs.work",
        arguments={"chore_id": str(chore.pk)},
        max_attempts=3,
        retry_from="2026-01-01T00:00:00Z",
    )
    assert job_cancel(job_id=job.pk) == (True, "cancelled")
    assert job_cancel(job_id=job.pk) == (False, "cancelled")
    from jobs.durable import jobs_run

    jobs_run(job_ids=[job.pk])
    job.refresh_from_db()
    assert job.status == "cancelled" and job.attempts == 0


# --- through real workers ------------------------------------------------------------


def test_a_job_runs_once_on_a_worker(workers, ledger, closed_breakers):
    chore = _chore()
    before = _runs("succeeded")
    job = _enqueue(chore)

    job = _finished([job.pk])[job.pk]

    assert job.status == "succeeded" and job.attempts == 1 and job.finished_at
    assert len(_calls(ledger, job)) == 1
    assert json.loads(_calls(ledger, job)[0]["body"]) == {"chore": str(chore.pk), "note": ""}
    chore.refresh_from_db()
    assert chore.status == "done"
    assert _runs("succeeded") == before + 1


def test_failures_are_retried_with_backoff_held_in_postgresql(workers, ledger, closed_breakers):
    ledger.set_fault(PARTNER_RECEIVER, error_rate=1.0, status=503)
    job = _enqueue(_chore())

    retrying = wait_until(
        lambda: Job.objects.filter(pk=job.pk, status="retrying", attempts__gte=1).first(),
        timeout=20,
        what="the first failed attempt",
    )
    assert retrying.next_attempt_at is not None and "503" in retrying.last_error
    assert not DeadLetter.objects.exists()
    ledger.clear_faults()

    job = _finished([job.pk])[job.pk]

    assert job.status == "succeeded" and 2 <= job.attempts <= 4
    assert len(_calls(ledger, job)) == 1


def test_a_refused_job_is_dead_lettered_and_replayed_from_its_dead_letter(workers, ledger, closed_breakers):
    ledger.set_fault(PARTNER_RECEIVER, error_rate=1.0, status=422)
    chore = _chore()
    job = _enqueue(chore)
    job = _finished([job.pk])[job.pk]

    assert job.status == "dead" and job.attempts == 1, "a permanent error is not retried"
    letter = DeadLetter.objects.get(subject_id=str(job.pk))
    assert letter.job_name == "chores.call_partner" and letter.dependency == PARTNER
    assert letter.arguments == {"kwargs": {"chore_id": str(chore.pk)}} and "422" in letter.message
    assert not _calls(ledger, job)

    ledger.clear_faults()
    assert deadletter_replay(dead_letter=letter)
    job = _finished([job.pk])[job.pk]

    assert job.status == "succeeded" and job.attempts == 1
    assert len(_calls(ledger, job)) == 1
    letter.refresh_from_db()
    assert letter.status == DeadLetterStatus.REPLAYED


def test_a_job_that_keeps_failing_is_dead_after_its_attempts(workers, ledger, closed_breakers):
    # 3 failures open the breaker (BREAKER_FAILURE_THRESHOLD in the test settings): the attempts it then waits
    # out are not counted, so the job still gets exactly its 4 attempts.
    ledger.set_fault(PARTNER_RECEIVER, error_rate=1.0, status=500)
    job = _enqueue(_chore())

    job = _finished([job.pk], timeout=60)[job.pk]

    assert job.status == "dead" and job.attempts == 4
    assert ledger.stats()[PARTNER_RECEIVER]["rejected"] == 4
    assert DeadLetter.objects.get(subject_id=str(job.pk)).attempts == 4


def test_an_open_breaker_stops_the_calls_without_using_attempts(workers, ledger, closed_breakers):
    ledger.set_fault(PARTNER_RECEIVER, outage=True)
    jobs = [_enqueue(_chore()) for _ in range(8)]
    wait_until(
        lambda: Job.objects.filter(pk__in=[j.pk for j in jobs], last_error__contains="breaker").exists(),
        timeout=20,
        what="a job deferred by the open breaker",
    )
    rejected = ledger.stats()[PARTNER_RECEIVER]["rejected"]
    assert rejected < 8, "once open, the breaker keeps the other jobs from calling"
    ledger.clear_faults()

    rows = _finished([j.pk for j in jobs], timeout=60)

    assert {row.status for row in rows.values()} == {"succeeded"}
    for row in rows.values():
        assert len(_calls(ledger, row)) == 1
        assert row.attempts <= 4


def test_the_global_rate_limit_holds_across_workers(workers, ledger, closed_breakers):
    # 20/s with a burst of 2 (settings.test): any one-second window holds at most 22 calls.
    chores = [_chore() for _ in range(60)]
    with transaction.atomic():
        jobs = chore_call_partner.enqueue_many(Enqueue({"chore_id": str(c.pk)}) for c in chores)

    rows = _finished([j.pk for j in jobs], timeout=60)

    assert {row.status for row in rows.values()} == {"succeeded"}
    stamps = sorted(entry["accepted_ts"] for entry in ledger.entries(provider=PARTNER_RECEIVER))
    assert len(stamps) == 60
    busiest = max(sum(1 for t in stamps if start <= t < start + 1.0) for start in stamps)
    assert busiest <= 22, f"{busiest} calls in one second"
    assert stamps[-1] - stamps[0] >= 2.5, "60 calls at 20/s take about three seconds"


def test_jobs_of_one_order_key_run_in_order_even_when_one_must_be_retried(workers, ledger, closed_breakers):
    ledger.set_fault(PARTNER_RECEIVER, error_rate=1.0, status=503)
    key = f"order-{uuid.uuid4()}"
    first = _enqueue(_chore(), order_key=key)
    wait_until(lambda: Job.objects.filter(pk=first.pk, status="retrying").exists(), timeout=20, what="a retry")
    later = [_enqueue(_chore(), order_key=key) for _ in range(5)]
    others = [_enqueue(_chore()) for _ in range(3)]
    wait_until(
        lambda: Job.objects.filter(pk__in=[j.pk for j in later], status="waiting").count() >= 1,
        timeout=20,
        what="a later job of the key waiting its turn",
    )
    ledger.clear_faults()

    rows = _finished([first.pk] + [j.pk for j in later + others], timeout=60)

    assert {row.status for row in rows.values()} == {"succeeded"}
    keyed = [first.pk] + [j.pk for j in later]
    calls = [e["idempotency_key"] for e in ledger.entries(provider=PARTNER_RECEIVER)]
    assert [c for c in calls if int(c.removeprefix("chore-")) in keyed] == [f"chore-{pk}" for pk in keyed]


def test_a_job_whose_message_was_lost_is_published_again_by_the_relay(workers, ledger, closed_breakers, broker):
    chore = _chore()
    # Written as if its publish never happened (the process died between commit and publish).
    job = Job.objects.create(
        name=chore_call_partner.name,
        queue="jobs.work",
        arguments={"chore_id": str(chore.pk)},
        max_attempts=4,
        status=JobStatus.PENDING,
        retry_from="2026-01-01T00:00:00Z",
        queued_at="2026-01-01T00:00:00Z",
    )

    job = _finished([job.pk])[job.pk]

    assert job.status == "succeeded" and len(_calls(ledger, job)) == 1


def test_the_enqueue_command_says_what_to_fix_and_writes_nothing_until_it_can(broker):
    from io import StringIO

    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="no job named 'nope'; the declared jobs are: .*chores.call_partner"):
        call_command("job_enqueue", "nope")
    with pytest.raises(CommandError, match="--arguments is not JSON"):
        call_command("job_enqueue", "chores.call_partner", "--arguments", "{")
    with pytest.raises(CommandError, match="unexpected keyword argument 'colour'"):
        call_command("job_enqueue", "chores.call_partner", "--arguments", '{"chore_id": "x", "colour": 1}')
    with pytest.raises(CommandError, match="exactly 1 with --idempotency-key"):
        call_command(
            "job_enqueue", "chores.call_partner", "--arguments", '{"chore_id": "x"}', "--count", "2",
            "--idempotency-key", "k",
        )  # fmt: skip
    assert not Job.objects.exists()

    out = StringIO()
    call_command("job_enqueue", "chores.call_partner", "--arguments", '{"chore_id": "x"}', "--count", "3", stdout=out)

    ids = json.loads(out.getvalue())
    # Queued, or already taken by the suite's workers when they run.
    assert len(ids) == 3 and Job.objects.filter(pk__in=ids, name="chores.call_partner").count() == 3


def test_a_message_of_many_runs_hands_back_what_it_cannot_finish_in_time(workers, ledger, closed_breakers):
    # 0.8 s per call, 6 runs per message, 2 s per message (JOBS_BATCH_SECONDS in the test settings): each
    # message runs about three and hands the rest back, queued again without using an attempt.
    ledger.set_fault(PARTNER_RECEIVER, latency_ms=800)
    with transaction.atomic():
        jobs = chore_call_partner.enqueue_many(
            (Enqueue({"chore_id": str(_chore().pk)}) for _ in range(6)), per_message=6
        )

    rows = _finished([j.pk for j in jobs], timeout=60)

    assert {row.status for row in rows.values()} == {"succeeded"}
    assert {row.attempts for row in rows.values()} == {1}, "a run handed back used no attempt"
    for row in rows.values():
        assert len(_calls(ledger, row)) == 1


def test_the_relay_holds_the_jobs_of_an_open_breaker_but_one(broker, closed_breakers):
    from datetime import timedelta

    from django.utils import timezone

    from jobs.breaker import CircuitBreaker

    past = timezone.now() - timedelta(seconds=1)
    jobs = [
        Job.objects.create(
            name=chore_call_partner.name, queue="jobs.work", arguments={"chore_id": str(_chore().pk)}, max_attempts=4,
            status=JobStatus.RETRYING, breaker=PARTNER, next_attempt_at=past, retry_from=past, queued_at=past,
        )
        for _ in range(5)
    ]  # fmt: skip
    breaker = CircuitBreaker(PARTNER)
    for _ in range(3):  # BREAKER_FAILURE_THRESHOLD in the test settings
        breaker.record_failure("partner down")
    assert breaker.state()["state"] == "open"

    assert jobs_relay() == 1, "one job goes, to be the probe"

    held = Job.objects.filter(pk__in=[j.pk for j in jobs], status=JobStatus.RETRYING)
    assert held.count() == 4
    assert all(job.next_attempt_at > timezone.now() for job in held), "the others wait a cool-down more"
    breaker.reset()
    held.update(next_attempt_at=past)

    assert jobs_relay() == 4, "a closed breaker lets them all go"
