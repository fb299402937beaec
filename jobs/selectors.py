"""Reads of the job runtime for operators: dead letters by filter, and the live state of the circuit breakers."""

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from jobs.breaker import CLOSED, CircuitBreaker, registered_breaker_names
from jobs.models import BreakerTransition, DeadLetter, DeadLetterStatus


def deadletters_filter(
    queryset: QuerySet[DeadLetter],
    *,
    status: str | None = None,
    dependency: str | None = None,
    error_class: str | None = None,
    job_name: str | None = None,
    since: dt.date | dt.datetime | None = None,
    until: dt.date | dt.datetime | None = None,
    **facets: str | None,
) -> QuerySet[DeadLetter]:
    """Narrow `queryset`; a filter left at None is not applied.

    `facets` are the parts of the queue's name that JOBS_QUEUE_FACETS names (the platform's
    ``<priority>.<channel>``: priority="security", channel="sms").  `error_class` matches the full dotted name or just the class
    name (``PermanentError``).  A date for `since` or `until` means that whole day,
    in the current time zone.
    """
    if status is not None:
        if status not in DeadLetterStatus.values:
            raise ValueError(f"unknown status {status!r}; expected one of {', '.join(DeadLetterStatus.values)}")
        queryset = queryset.filter(status=status)
    names = queue_facet_names()
    for name, value in facets.items():
        if name not in names:
            raise TypeError(f"unknown filter {name!r}; the queue facets are {', '.join(names) or 'none'}")
        if value:
            index = names.index(name)
            before, after = r"[^.]+\." * index, r"\.[^.]+" * (len(names) - index - 1)
            queryset = queryset.filter(queue__regex=f"^{before}{re.escape(value)}{after}$")
    if dependency:
        queryset = queryset.filter(dependency=dependency)
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


def queue_facet_names() -> tuple[str, ...]:
    """What the dot-separated parts of a queue's name mean, as the project declares it (JOBS_QUEUE_FACETS)."""
    return tuple(getattr(settings, "JOBS_QUEUE_FACETS", ()))


def queue_facets(queue: str) -> dict[str, str]:
    """The named parts of `queue` (e.g. {"priority": "security", "channel": "sms"}); empty for the housekeeping
    queue or a name of another shape."""
    names = queue_facet_names()
    parts = queue.split(".")
    if not names or queue == settings.CELERY_TASK_DEFAULT_QUEUE or len(parts) != len(names) or not all(parts):
        return {}
    return dict(zip(names, parts, strict=True))


def deadletter_facet_values(name: str) -> list[str]:
    """The values of one queue facet that appear in the dead-letter table, for the admin's filters."""
    queues = DeadLetter.objects.values_list("queue", flat=True).distinct()
    return sorted({facets[name] for facets in map(queue_facets, queues) if name in facets})


@dataclass(frozen=True)
class BreakerState:
    name: str
    state: str
    failures: int
    #: When the breaker last opened; None while it is closed.
    open_since: dt.datetime | None


def breaker_names() -> list[str]:
    """Every breaker worth showing: those that ever changed state, and those the domain registered (so a breaker
    that never tripped still shows as closed)."""
    names = set(BreakerTransition.objects.values_list("breaker", flat=True).distinct())
    return sorted(names | registered_breaker_names())


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
