import uuid

from django.db import models


class Chore(models.Model):
    """What a job of another app works on: a row with a status and the attempts spent on it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    #: Who the chore is for; a personal value, so the dead-letter views must mask it.
    owner = models.CharField(max_length=200)
    status = models.CharField(max_length=16, default="queued")
    attempts = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"chore {self.pk} ({self.status})"
