"""System checks of the job runtime's settings: refuse to start with a broker setup that loses or duplicates work."""

from django.conf import settings
from django.core.checks import Error, register


@register()
def check_broker_settings(app_configs, **kwargs) -> list[Error]:
    errors: list[Error] = []
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {})
    visibility = options.get("visibility_timeout")
    hard_limit = getattr(settings, "CELERY_TASK_TIME_LIMIT", None)
    if visibility is None:
        errors.append(
            Error(
                "CELERY_BROKER_TRANSPORT_OPTIONS has no visibility_timeout.",
                hint="Set BROKER_VISIBILITY_TIMEOUT; kombu's default of one hour delays recovery from a killed worker.",
                id="jobs.E001",
            )
        )
    elif hard_limit is None or hard_limit >= visibility:
        errors.append(
            Error(
                f"CELERY_TASK_TIME_LIMIT ({hard_limit}) must be below the broker visibility timeout ({visibility}).",
                hint="A task running longer than the visibility timeout is handed to a second worker.",
                id="jobs.E002",
            )
        )
    lease = getattr(settings, "JOBS_CLAIM_LEASE_SECONDS", None)
    if visibility is not None and hard_limit is not None and not (lease and hard_limit < lease < visibility):
        errors.append(
            Error(
                f"JOBS_CLAIM_LEASE_SECONDS ({lease}) must lie between CELERY_TASK_TIME_LIMIT ({hard_limit}) "
                f"and the broker visibility timeout ({visibility}).",
                hint="Shorter lets a second worker claim a job that is still running; longer delays "
                "recovery of a redelivered message.",
                id="jobs.E004",
            )
        )
    batch = getattr(settings, "JOBS_BATCH_SECONDS", None)
    soft_limit = getattr(settings, "CELERY_TASK_SOFT_TIME_LIMIT", None)
    if batch is not None and soft_limit is not None and batch >= soft_limit:
        errors.append(
            Error(
                f"JOBS_BATCH_SECONDS ({batch}) must be below CELERY_TASK_SOFT_TIME_LIMIT ({soft_limit}).",
                hint="A worker stops starting the jobs of one message after JOBS_BATCH_SECONDS; the task's time "
                "limit must leave room for the last one to finish.",
                id="jobs.E005",
            )
        )
    if set(getattr(settings, "CELERY_ACCEPT_CONTENT", [])) != {"json"}:
        errors.append(
            Error(
                "CELERY_ACCEPT_CONTENT must be ['json'].",
                hint="Pickle lets whoever can write to the broker run code in the workers.",
                id="jobs.E003",
            )
        )
    return errors


@register()
def check_rate_limits(app_configs, **kwargs) -> list[Error]:
    from django.core.exceptions import ImproperlyConfigured

    from jobs.ratelimit import rate_limiter_for

    errors: list[Error] = []
    for name in getattr(settings, "JOBS_RATE_LIMITS", {}):
        try:
            rate_limiter_for(name)
        except (ImproperlyConfigured, TypeError, ValueError) as exc:
            errors.append(Error(f"JOBS_RATE_LIMITS[{name!r}]: {exc}", id="jobs.E005"))
    return errors


@register()
def check_retention_settings(app_configs, **kwargs) -> list[Error]:
    """Keeping times are whole days of at least one, and the runtime's own kinds are there; a typo is refused at
    start-up rather than deleting too much (or nothing) at the first prune.  A domain adds its own kinds."""
    errors: list[Error] = []
    days = getattr(settings, "RETENTION_DAYS", {})
    for kind in sorted({"dead_letters", "jobs", *days}):
        value = days.get(kind)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            errors.append(
                Error(
                    f"RETENTION_DAYS[{kind!r}] must be a whole number of days, at least 1, not {value!r}.",
                    hint="Each kind is read from its RETENTION_<KIND>_DAYS variable (settings/base.py).",
                    id="jobs.E006",
                )
            )
    if getattr(settings, "RETENTION_PAUSE_RATIO", 1.0) < 0 or getattr(settings, "RETENTION_BATCH_SIZE", 1) < 1:
        errors.append(
            Error("RETENTION_PAUSE_RATIO must be at least 0 and RETENTION_BATCH_SIZE at least 1.", id="jobs.E007")
        )
    if getattr(settings, "RETENTION_TASK_SECONDS", 0) >= getattr(settings, "CELERY_TASK_SOFT_TIME_LIMIT", 1e9):
        errors.append(Error("RETENTION_TASK_SECONDS must be below CELERY_TASK_SOFT_TIME_LIMIT.", id="jobs.E008"))
    ahead = getattr(settings, "PARTITIONS_AHEAD_WEEKS", 1)
    if not isinstance(ahead, int) or isinstance(ahead, bool) or not 0 <= ahead <= 52:
        errors.append(
            Error(
                f"PARTITIONS_AHEAD_WEEKS must be a whole number of weeks from 0 to 52, not {ahead!r}.",
                hint="Weeks of partitions made ahead of time; 1 is plenty, as the prune job makes them every run.",
                id="jobs.E009",
            )
        )
    if not getattr(settings, "PARTITION_LOCK_TIMEOUT", 1.0) > 0:
        errors.append(Error("PARTITION_LOCK_TIMEOUT must be a positive number of seconds.", id="jobs.E010"))
    return errors
