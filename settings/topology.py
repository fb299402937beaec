"""The platform's vocabulary and queue topology, defined here once: the priorities and channels, one Redis queue
per priority and channel, one worker pool per priority.

Priority is never Celery's emulated Redis priority (prefetch defeats it): it is a
separate queue consumed by a separate pool, so marketing can never starve security.
"""

from django.db.models import TextChoices
from kombu import Queue


class Priority(TextChoices):
    """How urgent a notification is; each has its own queues and worker pool, in this order of urgency."""

    SECURITY = "security"
    TRANSACTIONAL = "transactional"
    MARKETING = "marketing"


class Channel(TextChoices):
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"


#: The values, most urgent first.
PRIORITIES = tuple(Priority.values)
CHANNELS = tuple(Channel.values)

#: Queue for job-runtime housekeeping (outbox relay, periodic sweeps); consumed
#: by the transactional pool so it never competes with security sends.
DEFAULT_QUEUE = "jobs.default"
#: Durable jobs of any app (jobs/durable.py) that name no queue of their own; consumed by the transactional pool.
JOBS_QUEUE = "jobs.work"
#: Status webhooks to applications (notifications/webhooks.py); consumed by the marketing pool, so a slow
#: receiver never holds a worker that security or transactional sends need.
WEBHOOKS_QUEUE = "jobs.webhooks"
#: Campaign fan-out tasks (write a segment of a campaign's notifications); consumed by
#: the marketing pool beside its send queues, so a fan-out never waits behind batches.
FANOUT_QUEUE = "marketing.fanout"


#: What the parts of a queue's name are (the runtime's dead-letter filters and columns use them).
QUEUE_FACETS = ("priority", "channel")


def queue_name(priority: str, channel: str) -> str:
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}; expected one of {', '.join(PRIORITIES)}")
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")
    return f"{priority}.{channel}"


def all_queue_names() -> list[str]:
    return [queue_name(p, c) for p in PRIORITIES for c in CHANNELS] + [
        DEFAULT_QUEUE,
        JOBS_QUEUE,
        FANOUT_QUEUE,
        WEBHOOKS_QUEUE,
    ]


def pool_queues(priority: str) -> list[str]:
    """Queues the worker pool of one priority consumes."""
    queues = [queue_name(priority, c) for c in CHANNELS]
    if priority == Priority.TRANSACTIONAL:
        queues += [DEFAULT_QUEUE, JOBS_QUEUE]
    if priority == Priority.MARKETING:
        queues += [FANOUT_QUEUE, WEBHOOKS_QUEUE]
    return queues


def celery_queues() -> tuple[Queue, ...]:
    return tuple(Queue(name, routing_key=name) for name in all_queue_names())
