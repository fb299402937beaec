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
