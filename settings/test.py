"""Settings for the test suite: its own Redis database and sandbox ports so a running `make run` is untouched."""

import os

os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("SANDBOX_HTTP_URL", "http://127.0.0.1:18025")
os.environ.setdefault("SANDBOX_SMTP_PORT", "11025")
# Short timings so the drills that kill workers recover within a test's patience;
# their order (time limit < lease < visibility timeout) is the production one.
os.environ.setdefault("BROKER_VISIBILITY_TIMEOUT", "10")
os.environ.setdefault("CELERY_TASK_SOFT_TIME_LIMIT", "5")
os.environ.setdefault("CELERY_TASK_TIME_LIMIT", "6")
os.environ.setdefault("JOBS_CLAIM_LEASE_SECONDS", "8")
os.environ.setdefault("JOBS_BATCH_SECONDS", "2")
os.environ.setdefault("RELAY_INTERVAL_SECONDS", "1")
os.environ.setdefault("RELAY_PENDING_AFTER_SECONDS", "2")
os.environ.setdefault("RELAY_QUEUED_AFTER_SECONDS", "10")
os.environ.setdefault("BREAKER_COOLDOWN_SECONDS", "2")
os.environ.setdefault("BREAKER_FAILURE_THRESHOLD", "3")
# Off, so a test's outcome never depends on the hour CI runs; the quiet-hours tests set it.
os.environ.setdefault("MARKETING_QUIET_HOURS", "")
# Small, so a test campaign of a few thousand recipients has several segments and batches.
os.environ.setdefault("CAMPAIGN_SEGMENT_SIZE", "1000")
os.environ.setdefault("CAMPAIGN_BATCH_SIZE", "200")

from settings.base import *  # noqa: E402,F403
from settings.topology import Priority  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Short so the tests that kill workers see redelivery quickly.
PROVIDER_TIMEOUT_SECONDS = 3.0
#: Same shape as production, smaller numbers: a drill sees retries and dead letters in seconds.
JOBS_RETRY_POLICIES = {
    Priority.SECURITY: {"max_attempts": 6, "base_delay": 0.2, "max_delay": 2, "budget_seconds": 60},
    Priority.TRANSACTIONAL: {"max_attempts": 3, "base_delay": 0.2, "max_delay": 2, "budget_seconds": 60},
    Priority.MARKETING: {"max_attempts": 3, "base_delay": 0.5, "max_delay": 5, "budget_seconds": 120},
    "webhooks": {"max_attempts": 40, "base_delay": 0.2, "max_delay": 2, "budget_seconds": 600},
}
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Tests never collect static files; whitenoise need not look for them.
WHITENOISE_AUTOREFRESH = True
# The partner the chore job calls (tests/jobs/chores): a small limit, so the tests see it hold.
JOBS_RATE_LIMITS = {**JOBS_RATE_LIMITS, "chores-partner": {"rate_per_second": 20, "burst": 2}}  # noqa: F405
# A job that is not a notification (tests/jobs/chores): the job runtime's tests run on it.
INSTALLED_APPS = [*INSTALLED_APPS, "tests.jobs.chores"]  # noqa: F405
