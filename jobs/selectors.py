"""Reads of the job runtime for operators: dead letters by filter, and the live state of the circuit breakers."""

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from jobs.breaker import CLOSED, CircuitBreaker
from jobs.models import BreakerTransition, DeadLetter, DeadLetterStatus


def deadletters_filter(
    queryset: QuerySet[DeadLetter],
    *,
    status: str | None = None,
    channel: str | None = None,
    priority: str | None = None,
    provider: str | None = None,
    error_class: str | None = None,
    job_name: str | None = None,
    since: dt.date | dt.datetime | None = None,
    until: dt.date | dt.datetime | None = None,
) -> QuerySet[DeadLetter]:
    """Narrow `queryset`; a filter left at None is not applied.

    Channel and priority come from the queue, named ``<priority>.<channel>`` for
    prioritised jobs.  `error_class` matches the full dotted name or just the class
    name (``PermanentError``).  A date for `since` or `until` means that whole day,
    in the current time zone.
    """
    if status is not None:
        if status not in DeadLetterStatus.values:
            raise ValueError(f"unknown status {status!r}; expected one of {', '.join(DeadLetterStatus.values)}")
        queryset = queryset.filter(status=status)
    if channel:
        queryset = queryset.filter(queue__endswith=f".{channel}")
    if priority:
        queryset = queryset.filter(queue__startswith=f"{priority}.")
    if provider:
        queryset = queryset.filter(provider=provider)
    if error_class:
        queryset = queryset.filter(Q(error_class=error_class) | Q(error_class__endswith=f".{error_class}"))
    if job_name:
        queryset = queryset.filter(job_name=job_name)
    if since is not None:
        queryset = queryset.filter(last_failed_at__gte=_moment(since))
    if until is not None:
        if isinstance(until, dt.datetime):
            queryset = queryset.filter(last_failed_at__lte=_moment(until))
        else:
            queryset = queryset.filter(last_failed_at__lt=_moment(until + dt.timedelta(days=1)))
    return queryset


def deadletters_matching(**filters: Any) -> QuerySet[DeadLetter]:
    """Dead letters matching every filter given (the keywords of `deadletters_filter`), most recent first."""
    return deadletters_filter(DeadLetter.objects.all(), **filters)


def queue_priority_channel(queue: str) -> tuple[str, str] | None:
    """(priority, channel) of a ``<priority>.<channel>`` queue; None for the housekeeping queue or any other name."""
    if queue == settings.CELERY_TASK_DEFAULT_QUEUE or queue.count(".") != 1:
        return None
    priority, channel = queue.split(".")
    return (priority, channel) if priority and channel else None


def deadletter_priorities_and_channels() -> tuple[list[str], list[str]]:
    """The priorities and channels that appear in the dead-letter table, for the admin's filters."""
    parts = [queue_priority_channel(q) for q in DeadLetter.objects.values_list("queue", flat=True).distinct()]
    parts = [p for p in parts if p is not None]
    return sorted({p for p, _ in parts}), sorted({c for _, c in parts})


@dataclass(frozen=True)
class BreakerState:
    name: str
    state: str
    failures: int
    #: When the breaker last opened; None while it is closed.
    open_since: dt.datetime | None


def breaker_names() -> list[str]:
    """Every breaker worth showing: those that ever changed state, and every configured provider.

    Provider names are read from the NOTIFICATIONS_PROVIDERS setting when a domain defines it,
    so a breaker that never tripped still shows as closed; this module imports no domain.
    """
    names = set(BreakerTransition.objects.values_list("breaker", flat=True).distinct())
    for entries in getattr(settings, "NOTIFICATIONS_PROVIDERS", {}).values():
        names.update(entry["name"] for entry in entries if entry.get("name"))
    return sorted(names)


def breaker_states() -> list[BreakerState]:
    """The live state of each breaker, from Redis; raises redis.RedisError when Redis is unreachable."""
    states = []
    for name in breaker_names():
        raw = CircuitBreaker(name).state()
        opened_ms = raw["opened_at_ms"]
        open_since = (
            dt.datetime.fromtimestamp(opened_ms / 1000, tz=dt.UTC) if raw["state"] != CLOSED and opened_ms else None
        )
        states.append(BreakerState(name=name, state=raw["state"], failures=raw["failures"], open_since=open_since))
    return states


def _moment(value: dt.date | dt.datetime) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        value = dt.datetime.combine(value, dt.time.min)
    return value if timezone.is_aware(value) else timezone.make_aware(value)
