"""The notification domain's tables: recipients, their push devices, notifications (also the outbox) and API tokens."""

import hashlib
import secrets
import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.db.models import Q


class Priority(models.TextChoices):
    SECURITY = "security"
    TRANSACTIONAL = "transactional"
    MARKETING = "marketing"


class Channel(models.TextChoices):
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"


class Recipient(models.Model):
    email = models.EmailField(max_length=254, null=True, blank=True, unique=True)
    phone = models.CharField(max_length=16, null=True, blank=True, unique=True, help_text="E.164, e.g. +14155550100")
    locale = models.CharField(max_length=16, default="en")
    timezone = models.CharField(max_length=64, default="UTC")
    email_marketing_consent = models.BooleanField(default=False)
    sms_marketing_consent = models.BooleanField(default=False)
    push_marketing_consent = models.BooleanField(default=False)
    #: Free-form labels that campaign audiences select on (`tags__contains=["vip"]`).
    tags = ArrayField(models.CharField(max_length=50), default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            # Audience queries ask "has this tag" (@>, &&) across millions of rows;
            # only GIN answers containment on an array without a full scan.
            GinIndex(fields=["tags"], name="recipient_tags_gin_idx"),
        ]

    def __str__(self) -> str:
        return self.email or self.phone or f"recipient {self.pk}"

    def address_for(self, channel: str) -> str | None:
        if channel == Channel.EMAIL:
            return self.email
        if channel == Channel.SMS:
            return self.phone
        device = self.push_devices.order_by("-created_at").first()
        return device.token if device else None


class PushDevice(models.Model):
    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="push_devices")
    token = models.CharField(max_length=512, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.token[:16]}…"


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "pending (written, not yet published)"
    QUEUED = "queued", "queued (published to its queue)"
    SENDING = "sending", "sending (claimed by a worker)"
    SENT = "sent", "sent (accepted by a provider)"
    FAILED = "failed", "failed (waiting for its next attempt)"
    DEAD = "dead", "dead (in the dead-letter table)"


class Notification(models.Model):
    """One message to one recipient on one channel.

    The row is written before anything is published, so it is also the outbox: a
    row still pending or queued after a while was never picked up and is published again.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    idempotency_key = models.CharField(max_length=255, unique=True)
    #: Hash of the request that created the row, so a key reused for a different request is refused.
    request_fingerprint = models.CharField(max_length=64, blank=True, default="")
    priority = models.CharField(max_length=16, choices=Priority.choices)
    channel = models.CharField(max_length=8, choices=Channel.choices)
    recipient = models.ForeignKey(Recipient, on_delete=models.PROTECT, related_name="notifications")
    #: The address the message goes to, fixed at submit time.
    to = models.CharField(max_length=512)
    template = models.CharField(max_length=100)
    context = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=NotificationStatus.choices, default=NotificationStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    provider = models.CharField(max_length=64, blank=True, default="")
    provider_message_id = models.CharField(max_length=255, blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    #: While sending, the moment after which another worker may take the row over.
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    #: While failed: when the relay publishes it again.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    first_failed_at = models.DateTimeField(null=True, blank=True)
    #: The last provider may have accepted it (timeout after sending): the next attempt
    #: goes to that provider first, with the same idempotency key.
    outcome_unknown = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The admin's default list and its filters.
            models.Index(fields=["-created_at"], name="notif_created_idx"),
            models.Index(fields=["status", "priority", "channel"], name="notif_status_prio_chan_idx"),
            models.Index(fields=["recipient", "-created_at"], name="notif_recipient_idx"),
            # The relay scans only unfinished rows; a partial index keeps that scan
            # small when the table holds millions of sent notifications.
            models.Index(
                fields=["status", "updated_at"],
                name="notif_unfinished_idx",
                condition=Q(status__in=["pending", "queued", "sending"]),
            ),
            models.Index(
                fields=["next_attempt_at"],
                name="notif_retry_due_idx",
                condition=Q(status="failed"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.priority}/{self.channel} {self.template} to {self.to} ({self.status})"

    @property
    def queue(self) -> str:
        return f"{self.priority}.{self.channel}"


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def for_key(self, key: str) -> "ApiToken | None":
        return self.filter(key_hash=_hash_key(key), revoked_at__isnull=True).select_related("user").first()


class ApiToken(models.Model):
    """A bearer token for the HTTP API; only its hash is stored, the key is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=8, help_text="First characters of the key, to recognise it.")
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @classmethod
    def issue(cls, user) -> tuple["ApiToken", str]:
        key = secrets.token_hex(20)
        token = cls.objects.create(user=user, key_hash=_hash_key(key), prefix=key[:8])
        return token, key
