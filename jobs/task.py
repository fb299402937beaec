"""The base class of every job's task: late acks so a crashed worker's message comes back, no results kept, a
message that cannot succeed dead-lettered at once."""

from celery import Task
from celery.signals import task_postrun, task_prerun
from django.core.exceptions import ValidationError
from django.db import close_old_connections

from jobs.errors import PermanentError


@task_prerun.connect(dispatch_uid="jobs.recycle_connections_before")
@task_postrun.connect(dispatch_uid="jobs.recycle_connections_after")
def _recycle_database_connections(task: Task | None = None, **kwargs) -> None:
    """Django's per-request rule for tasks: keep the connection (CONN_MAX_AGE) unless it is broken or old.

    Celery's Django fixup would close every connection before and after each task instead
    (unless CELERY_DB_REUSE_MAX is set, see settings), a new PostgreSQL session per task.
    An eager task runs inside its caller's transaction, which must not be touched.
    """
    if task is not None and getattr(task.request, "is_eager", False):
        return
    close_old_connections()


class JobTask(Task):
    """A thin shell around one service function; the service owns state in PostgreSQL.

    Redelivery is expected (late acks, visibility timeout, relay), so every task
    must be idempotent: the service claims its row with a conditional update.
    """

    #: Ack after the task finished: a worker killed mid-task leaves the message for another.
    acks_late = True
    #: Requeue when the worker process dies; attempts are counted in PostgreSQL so a
    #: poison message that kills its process cannot loop forever.
    reject_on_worker_lost = True
    #: PostgreSQL is the record; a result backend would only duplicate it.
    ignore_result = True
    typing = True

    #: Failures that retrying cannot cure: the message itself is wrong.  They go to the
    #: dead-letter table at once; anything else (database, network) is left to the
    #: service's own retry and the relay.
    dead_letter_on = (PermanentError, ValidationError, ValueError, TypeError)

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        if not isinstance(exc, self.dead_letter_on):
            return
        # Imported here: a task module loads before Django's app registry (and so the models) is ready.
        from jobs.deadletters import deadletter_record

        delivery = getattr(self.request, "delivery_info", None) or {}
        deadletter_record(
            job_name=self.name,
            arguments={"args": list(args or []), "kwargs": dict(kwargs or {})},
            error=exc,
            attempts=1,
            queue=delivery.get("routing_key") or "",
        )
