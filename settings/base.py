"""Settings shared by every environment; each value comes from the environment with a safe local default."""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url

from notifications import task_names
from settings import topology

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    return _env_number(name, default, int, "an integer")


def env_float(name: str, default: float) -> float:
    return _env_number(name, default, float, "a number")


def _env_number(name: str, default, kind, what: str):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be {what}, got {raw!r}") from exc


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"environment variable {name} must be true or false, got {raw!r}")


def env_throttle(name: str, default: tuple[int, float]) -> tuple[int, float]:
    """A throttle written "count/seconds" (e.g. "3/900": three in any fifteen minutes)."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    count, sep, seconds = raw.partition("/")
    try:
        value = (int(count), float(seconds))
    except ValueError:
        value = None
    if not sep or value is None or value[0] < 1 or value[1] <= 0:
        raise ValueError(f"environment variable {name} must look like '3/900' (count per seconds), got {raw!r}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


SECRET_KEY = env_str("DJANGO_SECRET_KEY", "local-insecure-key-change-me")
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "anymail",
    # The API's interactive docs from the package's own static files (no CDN).
    "ninja",
    "jobs",
    "notifications",
    # The sandbox, drills and benchmarks (their manage.py commands); production settings leave it out.
    "harness",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin's static files from gunicorn, so one image runs everywhere.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "settings.urls"
WSGI_APPLICATION = "settings.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/notify")
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        # Workers hold a connection for their whole life; re-check it so a
        # PostgreSQL restart costs one failed query, not a dead worker.
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
DATABASES["default"].setdefault("OPTIONS", {})
# A query that hangs blocks a worker slot; fail it and let the retry path handle it.
DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", 5)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# Requests above this size are answered 413 by the API before they are parsed.
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 64 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = max(API_MAX_BODY_BYTES, 2_621_440)
#: Fields of one form or query string (the admin's largest form, a changelist action on a page of 100 rows,
#: sends about 110); more is answered 400 before a view runs. gunicorn bounds the request line and the
#: headers (settings/gunicorn_conf.py).
DATA_UPLOAD_MAX_NUMBER_FIELDS = env_int("DATA_UPLOAD_MAX_NUMBER_FIELDS", 400)
#: No page of the platform takes a file.
DATA_UPLOAD_MAX_NUMBER_FILES = 1

#: Reverse proxies in front of the web process that append the client's address to
#: X-Forwarded-For; 0 trusts only the socket's peer (a client could forge the header).
TRUSTED_PROXY_HOPS = env_int("TRUSTED_PROXY_HOPS", 0)
#: The public password-reset page, as (count, seconds): at most 3 mails to one address in any
#: 15 minutes and 20 requests from one client IP in any hour; beyond, the same page is answered
#: and nothing is sent (no account enumeration, nothing for an inbox bomb).
PASSWORD_RESET_THROTTLE = {
    "per_address": env_throttle("PASSWORD_RESET_PER_ADDRESS", (3, 900)),
    "per_ip": env_throttle("PASSWORD_RESET_PER_IP", (20, 3600)),
}
#: API requests per token, as (count, seconds); above it the API answers 429 with Retry-After.
#: Daily quotas per priority are set on each token in the admin.
API_TOKEN_THROTTLE = env_throttle("API_TOKEN_THROTTLE", (1000, 1))
#: Admin log-in attempts (right or wrong), as (count, seconds): password guessing gets 429.
ADMIN_LOGIN_THROTTLE = {
    "per_username": env_throttle("ADMIN_LOGIN_PER_USERNAME", (5, 60)),
    "per_ip": env_throttle("ADMIN_LOGIN_PER_IP", (20, 60)),
}

# --- Redis and Celery -------------------------------------------------------

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
# PostgreSQL is the record of every notification; task results are never read.
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
# JSON only: a pickled payload from a compromised broker would run code in workers.
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_QUEUES = topology.celery_queues()
CELERY_TASK_DEFAULT_QUEUE = topology.DEFAULT_QUEUE
CELERY_TASK_CREATE_MISSING_QUEUES = False
# Late acks: a message is removed from Redis only after its task finished, so a
# crashed worker's message goes back to the queue (the claim in PostgreSQL makes
# the second delivery harmless).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One reserved message per process: prefetch would let a deep queue hold messages
# in a busy worker's memory past the visibility timeout, and it defeats priority.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A send is a few HTTP calls with their own timeouts; a task running this long is
# stuck.  The hard limit stays below the visibility timeout so Redis never hands
# a still-running task to a second worker.
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 25)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 30)
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's Django fixup closes every database connection around every task unless this
# is set; jobs/tasks.py applies Django's CONN_MAX_AGE and health checks instead, so a
# worker keeps its PostgreSQL session and still replaces a broken one.
CELERY_DB_REUSE_MAX = 1_000_000_000

#: Seconds a reserved but unacknowledged message stays invisible before Redis
#: redelivers it.  Short, so a SIGKILLed worker's messages come back within a
#: minute; safe, because no task runs longer (time limit above) and no task is
#: published with a countdown or ETA (long waits live in PostgreSQL).
BROKER_VISIBILITY_TIMEOUT = env_int("BROKER_VISIBILITY_TIMEOUT", 45)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": BROKER_VISIBILITY_TIMEOUT,
    # Sweep for abandoned messages every 5 s instead of kombu's ~100 s so the
    # short visibility timeout is what bounds recovery.
    "unacked_restore_interval": 5,
    "unacked_restore_throttle": 1,
    # redis-py 8 defaults to a 5 s socket timeout; state ours.  BRPOP returns
    # within brpop_timeout (1 s), so 10 s only fires on a dead connection.
    "socket_timeout": 10,
    # A down Redis must fail a publish quickly, not hang a web request.
    "socket_connect_timeout": 2,
    "socket_keepalive": True,
    # redis-py pings an idle connection before using it again; kombu also drops
    # a BRPOP connection whose reply is overdue, so a half-open socket (NAT,
    # failover) is replaced within about 20 s instead of never.
    "health_check_interval": 10,
    "retry_on_timeout": False,
    "client_name": "notify",
}
CELERY_BROKER_CONNECTION_TIMEOUT = 2

#: How often the relay looks for notifications to publish again (due retries, rows
#: never published, rows whose worker died); seconds.
RELAY_INTERVAL_SECONDS = float(env_str("RELAY_INTERVAL_SECONDS", "2"))
RELAY_EXPIRES_SECONDS = 120.0
#: How often scheduled notifications and campaigns whose send_at has come are published; seconds.  Half a
#: second keeps a scheduled notification within a second or two of its send_at (publish and claim included).
SCHEDULED_RELEASE_SECONDS = env_float("SCHEDULED_RELEASE_SECONDS", 0.5)
#: How many due scheduled notifications one release run publishes (the next run takes the rest).
NOTIFICATIONS_RELEASE_BATCH = 2000
#: How far ahead a notification or a campaign may be scheduled.
NOTIFICATIONS_MAX_SCHEDULE_AHEAD = timedelta(days=env_int("NOTIFICATIONS_MAX_SCHEDULE_DAYS", 365))
#: How often the dispatcher turns new events into webhook deliveries; seconds.
WEBHOOKS_DISPATCH_SECONDS = env_float("WEBHOOKS_DISPATCH_SECONDS", 1.0)
CELERY_BEAT_SCHEDULE: dict = {
    "notifications-relay": {
        "task": task_names.RELAY,
        "schedule": RELAY_INTERVAL_SECONDS,
        # A relay run that waited long is superseded by a later one; but a worker compares `expires`
        # with its own clock, and one running ahead would discard every run (the clock-skew drill
        # saw it), so the margin is far above any skew NTP lets through.
        "options": {"queue": "jobs.default", "expires": RELAY_EXPIRES_SECONDS},
    },
    # New notification events to webhook deliveries (notifications/webhooks.py).
    "notifications-webhooks-dispatch": {
        "task": task_names.WEBHOOKS_DISPATCH,
        "schedule": WEBHOOKS_DISPATCH_SECONDS,
        "options": {"queue": "jobs.default", "expires": RELAY_EXPIRES_SECONDS},
    },
    # Scheduled notifications and campaigns whose send_at has come (notifications.services, campaigns).
    "notifications-release-scheduled": {
        "task": task_names.RELEASE_SCHEDULED,
        "schedule": SCHEDULED_RELEASE_SECONDS,
        "options": {"queue": "jobs.default", "expires": RELAY_EXPIRES_SECONDS},
    },
    # Rows past their keeping time (RETENTION_DAYS); a run that could not finish hands the rest to the next.
    "retention-prune": {
        "task": task_names.PRUNE,
        "schedule": env_float("RETENTION_INTERVAL_SECONDS", 600.0),
        "options": {"queue": "jobs.default", "expires": RELAY_EXPIRES_SECONDS},
    },
    # The same for durable jobs (jobs/durable.py).
    "jobs-relay": {
        "task": "jobs.relay",
        "schedule": RELAY_INTERVAL_SECONDS,
        "options": {"queue": "jobs.default", "expires": RELAY_EXPIRES_SECONDS},
    },
}

# --- Job runtime --------------------------------------------------------------

#: Days each kind of row is kept (jobs/retention.py, notifications/retention.py): finished notifications and
#: their events, marketing ones (campaign rows: millions a week) sooner, dead letters (and their dead
#: notifications) a year, finished durable jobs (webhook deliveries among them) a month.
RETENTION_DAYS = {
    "notifications": env_int("RETENTION_NOTIFICATIONS_DAYS", 90),
    "marketing_notifications": env_int("RETENTION_MARKETING_DAYS", 30),
    "events": env_int("RETENTION_EVENTS_DAYS", 90),
    "dead_letters": env_int("RETENTION_DEAD_LETTERS_DAYS", 365),
    "jobs": env_int("RETENTION_JOBS_DAYS", 30),
}
#: Rows one delete takes: a short transaction (a fraction of a second) that never holds many locks.
RETENTION_BATCH_SIZE = env_int("RETENTION_BATCH_SIZE", 5000)
#: After each batch the pruner rests this many times as long as the batch took, leaving the database to live
#: sends (measured in `make bench --scenarios retention`).
RETENTION_PAUSE_RATIO = env_float("RETENTION_PAUSE_RATIO", 1.0)
#: Weeks of the notifications' partitions made ahead of time (notifications/partitions.py): the prune job makes them
#: every RETENTION_INTERVAL_SECONDS, so one is plenty; each more is one more leaf every lookup without an id plans.
PARTITIONS_AHEAD_WEEKS = env_int("PARTITIONS_AHEAD_WEEKS", 1)
#: Longest wait for the locks that add or drop a partition (it queues the table's other statements while it waits);
#: past it the change is left to the next run.
PARTITION_LOCK_TIMEOUT = env_float("PARTITION_LOCK_TIMEOUT", 2.0)
#: Seconds one beat-started prune runs before it hands the rest to a new task (well below the soft time limit).
RETENTION_TASK_SECONDS = CELERY_TASK_SOFT_TIME_LIMIT * 0.6

#: Retry budget per priority class and for webhooks (jobs/retry.py): attempts in all, exponential
#: backoff with full jitter between base and cap, and the time after creation past
#: which a job is dead-lettered instead of retried.
JOBS_RETRY_POLICIES = {
    # Fast retries for about two minutes, every provider in the chain tried each time.
    topology.Priority.SECURITY: {"max_attempts": 12, "base_delay": 0.5, "max_delay": 15, "budget_seconds": 120},
    topology.Priority.TRANSACTIONAL: {"max_attempts": 15, "base_delay": 2, "max_delay": 300, "budget_seconds": 1800},
    topology.Priority.MARKETING: {"max_attempts": 20, "base_delay": 30, "max_delay": 3600, "budget_seconds": 6 * 3600},
    # Status webhooks (notifications/webhooks.py): 5 s doubling up to an hour between attempts, for a day.
    "webhooks": {"max_attempts": 40, "base_delay": 5, "max_delay": 3600, "budget_seconds": 24 * 3600},
}
#: Circuit breaker per provider (jobs/breaker.py), shared by all workers through Redis.
#: The parts of a queue's name (<priority>.<channel>), for the dead-letter admin's and command's filters.
JOBS_QUEUE_FACETS = topology.QUEUE_FACETS
#: The queue of a durable job that names none (jobs/durable.py); the transactional pool consumes it.
JOBS_DEFAULT_QUEUE = topology.JOBS_QUEUE
#: Seconds a worker runs the durable jobs of one message before it hands the rest back (below the task's
#: soft time limit, so a message of many runs to a slow remote never reaches it).
JOBS_BATCH_SECONDS = env_float("JOBS_BATCH_SECONDS", 10.0)
#: The queue of status webhooks (notifications/webhooks.py) and the seconds one delivery may take.
WEBHOOKS_QUEUE = topology.WEBHOOKS_QUEUE
WEBHOOK_TIMEOUT_SECONDS = float(env_str("WEBHOOK_TIMEOUT_SECONDS", "5"))
#: Consecutive failed deliveries that open an endpoint's breaker (its cool-down is JOBS_CIRCUIT_BREAKER's).
WEBHOOKS_BREAKER_FAILURES = env_int("WEBHOOKS_BREAKER_FAILURES", 10)
#: Webhook URLs on private or loopback addresses, and plain http: for local runs and tests only
#: (production refuses them: a webhook must not reach into the platform's own network).
WEBHOOKS_ALLOW_PRIVATE_ADDRESSES = env_bool("WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", True)
#: The Prometheus namespace of every metric (notify_queue_depth, notify_sends_total, ...).
JOBS_METRICS_NAMESPACE = "notify"
JOBS_CIRCUIT_BREAKER = {
    "failure_threshold": env_int("BREAKER_FAILURE_THRESHOLD", 5),
    "cooldown_seconds": float(env_str("BREAKER_COOLDOWN_SECONDS", "10")),
    "probe_timeout_seconds": 15.0,
}
#: Global send rate per provider (jobs/ratelimit.py, GCRA on the Redis server's clock),
#: shared by every worker.  Marketing may use at most its `shares` of the rate (in
#: bursts and in the long run), so security and transactional sends always find headroom.
#: `burst` is both the largest batch one call may take and how far any 1-s window can
#: exceed the rate: 10 at 1,000/s keeps every window within 1 %.
JOBS_RATE_LIMITS = {
    "postmark": {
        "rate_per_second": env_int("POSTMARK_RATE_PER_SECOND", 1000),
        "burst": env_int("POSTMARK_BURST", 10),
        "shares": {topology.Priority.MARKETING: float(env_str("POSTMARK_MARKETING_SHARE", "0.8"))},
    },
}
#: A row still pending this long after it was written was never published (crash
#: between commit and publish, broker down); the relay publishes it.
RELAY_PENDING_AFTER_SECONDS = env_int("RELAY_PENDING_AFTER_SECONDS", 10)
#: A row queued this long without a worker claiming it may have lost its message
#: (Redis restarted without persistence); the relay publishes it again.  The claim
#: makes a second message harmless, so erring short costs only work.
RELAY_QUEUED_AFTER_SECONDS = env_int("RELAY_QUEUED_AFTER_SECONDS", 30)
#: Rows the relay handles per priority per run (security first), so one run stays short and no
#: marketing backlog can crowd out a due security row.
RELAY_BATCH_SIZE = 1000

# --- Notifications ------------------------------------------------------------

SANDBOX_HTTP_URL = env_str("SANDBOX_HTTP_URL", "http://127.0.0.1:8025")
SANDBOX_SMTP_HOST = env_str("SANDBOX_SMTP_HOST", "127.0.0.1")
SANDBOX_SMTP_PORT = env_int("SANDBOX_SMTP_PORT", 1025)

#: Where recipients reach this platform (unsubscribe links); https in production (RFC 8058).
PUBLIC_BASE_URL = env_str("PUBLIC_BASE_URL", "http://127.0.0.1:8000")
#: Recipient ids per campaign fan-out task: one to three seconds of INSERT ... SELECT, far inside a task's
#: time limit; segments are written in parallel by the marketing pool.  Measured on 2 cores (make bench, 5 M
#: recipients): 200,000 wrote them in 23 s, 100,000 in 32 s, 50,000 in 62 s: between segments the pool sends.
CAMPAIGN_SEGMENT_SIZE = env_int("CAMPAIGN_SEGMENT_SIZE", 200_000)
#: Notifications per campaign batch message: 5 M recipients make 10,000 small messages.
CAMPAIGN_BATCH_SIZE = env_int("CAMPAIGN_BATCH_SIZE", 500)
#: Single notifications a worker sends in one provider call: the one its message names and the oldest others
#: waiting as queued in the same queue (1: one at a time).  Bounded by what one call of the primary takes.
NOTIFICATIONS_SINGLE_BATCH = env_int("NOTIFICATIONS_SINGLE_BATCH", 50)
#: Seconds a burst of transactional or marketing submits waits to share a message to the workers (each
#: message names several notifications): the first of a burst leaves at once, the next message of the same
#: queue no sooner than this after it.  Security alerts never wait.  0: only what is waiting anyway.
NOTIFICATIONS_COALESCE_SECONDS = env_float("NOTIFICATIONS_COALESCE_SECONDS", 0.005)
#: Runs in a row a campaign batch may die (its worker killed, its task failing) before it is
#: dead-lettered with its unsent rows instead of running for ever; a run that ends resets the count.
CAMPAIGN_BATCH_MAX_RUNS = env_int("CAMPAIGN_BATCH_MAX_RUNS", 5)
#: A cancelled campaign's unsent rows count as skipped from the cancel on; the sweep then writes them skipped this
#: many batches per transaction (50,000 rows, about a second), for this many seconds per task (inside the soft time
#: limit; the task then hands the rest to its next run), resting CAMPAIGN_SWEEP_PAUSE_RATIO times as long as each
#: transaction took, so live sends keep most of the database (measured in the README, Benchmarks: cancel).
CAMPAIGN_SWEEP_BATCHES = env_int("CAMPAIGN_SWEEP_BATCHES", 100)
CAMPAIGN_SWEEP_SECONDS = CELERY_TASK_SOFT_TIME_LIMIT * 0.5
CAMPAIGN_SWEEP_PAUSE_RATIO = env_float("CAMPAIGN_SWEEP_PAUSE_RATIO", 1.0)
#: "user:password" Prometheus must send to /metrics (basic auth); production refuses the default.
METRICS_BASIC_AUTH = env_str("METRICS_BASIC_AUTH", "prometheus:prometheus")
#: django-anymail: the tracking webhook (hard bounces -> suppression) requires basic auth
#: with this "user:password"; give the same in the webhook URL at the provider.
ANYMAIL = {"WEBHOOK_SECRET": env_str("ANYMAIL_WEBHOOK_SECRET", "local-webhook:change-me")}
#: Vonage's signature secret: its delivery receipts (/receipts/vonage) are refused unless signed with it.
VONAGE_SIGNATURE_SECRET = env_str("VONAGE_SIGNATURE_SECRET", "sandbox-signature-secret")
#: Local hours (recipient's time zone) in which marketing waits: "21-8" holds it from
#: 21:00 to 08:00.  Empty turns quiet hours off.  Security and transactional never wait.
MARKETING_QUIET_HOURS = env_str("MARKETING_QUIET_HOURS", "21-8")
NOTIFICATIONS_FROM_EMAIL = env_str("NOTIFICATIONS_FROM_EMAIL", "Notify <no-reply@notify.example>")
NOTIFICATIONS_SMS_FROM = env_str("NOTIFICATIONS_SMS_FROM", "+15005550006")

#: Providers per channel, tried in order (the first is the primary).  Each entry
#: names the provider (that name appears in the ledger, the admin and metrics),
#: the dotted path of its module's ``Provider`` class and its options.
NOTIFICATIONS_PROVIDERS = {
    "email": [
        {
            "name": "postmark",
            "backend": "notifications.providers.postmark.Provider",
            "options": {
                "api_url": env_str("POSTMARK_API_URL", f"{SANDBOX_HTTP_URL}/postmark/"),
                "server_token": env_str("POSTMARK_SERVER_TOKEN", "sandbox-token"),
            },
        },
        {
            "name": "smtp",
            "backend": "notifications.providers.smtp.Provider",
            "options": {
                "host": env_str("SMTP_HOST", SANDBOX_SMTP_HOST),
                "port": env_int("SMTP_PORT", SANDBOX_SMTP_PORT),
                "username": env_str("SMTP_USERNAME", ""),
                "password": env_str("SMTP_PASSWORD", ""),
                "use_tls": env_bool("SMTP_USE_TLS", False),
            },
        },
    ],
    "sms": [
        {
            "name": "twilio",
            "backend": "notifications.providers.twilio.Provider",
            "options": {
                "api_url": env_str("TWILIO_API_URL", f"{SANDBOX_HTTP_URL}/twilio/"),
                "account_sid": env_str("TWILIO_ACCOUNT_SID", "ACsandbox"),
                "auth_token": env_str("TWILIO_AUTH_TOKEN", "sandbox-token"),
                "from_number": NOTIFICATIONS_SMS_FROM,
            },
        },
        {
            "name": "vonage",
            "backend": "notifications.providers.vonage.Provider",
            "options": {
                "api_url": env_str("VONAGE_API_URL", f"{SANDBOX_HTTP_URL}/vonage/"),
                "api_key": env_str("VONAGE_API_KEY", "sandbox-key"),
                "api_secret": env_str("VONAGE_API_SECRET", "sandbox-secret"),
                "from_number": NOTIFICATIONS_SMS_FROM,
            },
        },
    ],
    "push": [
        {
            "name": "fcm",
            "backend": "notifications.providers.fcm.Provider",
            "options": {
                "api_url": env_str("FCM_API_URL", f"{SANDBOX_HTTP_URL}/fcm/"),
                "project_id": env_str("FCM_PROJECT_ID", "notify-sandbox"),
                "access_token": env_str("FCM_ACCESS_TOKEN", "sandbox-token"),
            },
        },
    ],
}
#: Seconds a provider call may take before it counts as a transient failure.
PROVIDER_TIMEOUT_SECONDS = float(env_str("PROVIDER_TIMEOUT_SECONDS", "10"))

#: "plain" for people at a terminal, "json" (production's default) for log pipelines: one
#: object per line; a notification's state changes carry id, priority, channel, provider,
#: attempt and outcome as fields.
LOG_FORMAT = env_str("LOG_FORMAT", "plain")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "jobs.logging.JsonFormatter"},
    },
    # No log line carries an e-mail address or a phone number (jobs/logging.py).
    "filters": {"personal_data": {"()": "jobs.logging.MaskPersonalData"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["personal_data"]}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # DEBUG adds a line for each message sent ("sending", "sent"); INFO keeps the rest of its life.
        "notifications.events": {"level": env_str("EVENTS_LOG_LEVEL", "INFO")},
    },
}

#: Seconds a worker owns a claimed notification: above CELERY_TASK_TIME_LIMIT (a live
#: task never loses its claim), below the visibility timeout (a redelivered message
#: finds it expired).  A system check enforces the order.
JOBS_CLAIM_LEASE_SECONDS = env_int("JOBS_CLAIM_LEASE_SECONDS", 40)
