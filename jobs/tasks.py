"""The runtime's own tasks: running durable jobs and their relay, a no-op probe (the benchmarks' baseline, a liveness
canary) and replaying dead letters."""

from celery import shared_task
from django.contrib.auth import get_user_model

from jobs.clock import database_now
from jobs.deadletters import DEADLETTERS_REPLAY, deadletters_replay_many
from jobs.durable import RELAY_TASK, RUN_TASK, jobs_relay, jobs_run
from jobs.redis import redis_client
from jobs.task import JobTask

#: The probe's name, for publishing it by name.
PROBE = "jobs.probe"


@shared_task(base=JobTask, name=PROBE)
def probe(counter_key: str) -> None:
    """Increment a Redis counter: the cheapest real task, the benchmarks' baseline and a liveness canary."""
    redis_client().incr(counter_key)


@shared_task(base=JobTask, name=DEADLETTERS_REPLAY)
def deadletters_replay_task(ids: list[int], user_id: int | None) -> None:
    """Replay one batch of dead letters for an operator; a redelivered batch skips what is no longer open."""
    user = get_user_model().objects.filter(pk=user_id).first() if user_id is not None else None
    deadletters_replay_many(ids=ids, user=user)


@shared_task(base=JobTask, name=RUN_TASK)
def jobs_run_task(*job_ids: int) -> None:
    """One or more durable jobs (jobs/durable.py), by id."""
    jobs_run(job_ids=list(job_ids))


@shared_task(base=JobTask, name=RELAY_TASK)
def jobs_relay_task() -> None:
    jobs_relay(now=database_now())
