"""Tables of the job runtime: the dead-letter table (for any job) and the log of circuit-breaker transitions."""

from django.conf import settings
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models


class DeadLetterStatus(models.TextChoices):
    OPEN = "open"
    REPLAYED = "replayed"
    DISCARDED = "discarded"


class DeadLetter(models.Model):
    """A job that failed for good: what it was, why it failed, and what an operator did about it.

    `subject` links the domain row the job was about (a notification, say) when there is one.
    """

    job_name = models.CharField(max_length=200, db_index=True)
    #: The job's arguments as it was published (JSON); shown masked in the admin.
    arguments = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=100, blank=True, default="", db_index=True)
    subject_type = models.ForeignKey(ContentType, null=True, blank=True, on_delete=models.SET_NULL)
    subject_id = models.CharField(max_length=64, blank=True, default="", db_index=True)
    subject = GenericForeignKey("subject_type", "subject_id")
    #: The outside service whose call failed (a provider account, a partner API, a webhook endpoint), when
    #: the job names one: operators filter by it during an outage.
    dependency = models.CharField(max_length=64, blank=True, default="")
    error_class = models.CharField(max_length=200)
    message = models.TextField()
    traceback = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    first_failed_at = models.DateTimeField()
    last_failed_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=DeadLetterStatus.choices, default=DeadLetterStatus.OPEN)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution_note = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-last_failed_at"]
        permissions = [("replay_deadletter", "Can replay or discard dead letters")]
        indexes = [
            models.Index(fields=["status", "-last_failed_at"], name="deadletter_status_idx"),
            models.Index(fields=["subject_type", "subject_id"], name="deadletter_subject_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.job_name} {self.subject_id or self.pk}: {self.error_class}"


class BreakerTransition(models.Model):
    """One change of a circuit breaker's state, for the admin and for post-mortems."""

    breaker = models.CharField(max_length=64, db_index=True)
    from_state = models.CharField(max_length=16)
    to_state = models.CharField(max_length=16)
    reason = models.CharField(max_length=500, blank=True, default="")
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.breaker}: {self.from_state} -> {self.to_state}"


class JobStatus(models.TextChoices):
    #: Written; its message is not published yet (the broker refused it): the relay publishes it.
    PENDING = "pending"
    #: Published; waiting for a worker.
    QUEUED = "queued"
    #: An earlier job of its order key is not finished; that job's end wakes it.
    WAITING = "waiting"
    RUNNING = "running"
    #: An attempt failed; the next one is due at `next_attempt_at`.
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    #: Failed for good; its dead letter says why and can replay it.
    DEAD = "dead"
    CANCELLED = "cancelled"


#: Statuses a job leaves only by running (or by a cancel); the rest are final.
UNFINISHED_JOB_STATUSES = (
    JobStatus.PENDING,
    JobStatus.QUEUED,
    JobStatus.WAITING,
    JobStatus.RUNNING,
    JobStatus.RETRYING,
)


class Job(models.Model):
    """One durable job (jobs/durable.py): what to run, with which arguments, and how far it got.

    The row is the record and the broker's message only a wake-up: attempts are counted here
    at the claim, waits between attempts are held here, and the relay publishes again what a
    lost message or a dead worker left behind.
    """

    id = models.BigAutoField(primary_key=True)
    #: The job's declared name (`@job(name=...)`).
    name = models.CharField(max_length=200)
    queue = models.CharField(max_length=100)
    #: The keyword arguments the job is called with (JSON).
    arguments = models.JSONField(default=dict, blank=True)
    #: The caller's key: a second enqueue with the same name and key returns the first job.
    idempotency_key = models.CharField(max_length=200, blank=True, default="")
    #: Jobs of the same name and order key run one after another, in the order they were enqueued.
    order_key = models.CharField(max_length=200, blank=True, default="")
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField()
    #: The breaker (and dead-letter dependency) the job's calls go through, when it names one.
    breaker = models.CharField(max_length=100, blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    #: The worker's claim: only the holder records the attempt's outcome.
    claim_token = models.UUIDField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    #: Where the retry policy's time budget starts: the enqueue, or the last replay.
    retry_from = models.DateTimeField()
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        permissions = [("run_job", "Can run, retry now or cancel jobs")]
        constraints = [
            models.UniqueConstraint(
                fields=["name", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="job_idempotency_key_unique",
            ),
        ]
        indexes = [
            # The relay's and the admin's work lists: jobs not finished, by status.
            models.Index(
                fields=["status", "queue", "queued_at"],
                condition=models.Q(status__in=UNFINISHED_JOB_STATUSES),
                name="job_unfinished_idx",
            ),
            # "Is an earlier job of my order key unfinished?" and "which job is next?"
            models.Index(fields=["name", "order_key", "id"], condition=~models.Q(order_key=""), name="job_order_idx"),
            models.Index(fields=["name", "-id"], name="job_name_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk} ({self.status})"
