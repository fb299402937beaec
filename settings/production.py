"""Production settings: everything secret or host-specific must come from the environment."""

import os

os.environ.setdefault("LOG_FORMAT", "json")

from settings.base import *  # noqa: E402,F403
from settings.base import env_bool, env_int  # noqa: E402

DEBUG = False
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0)

if SECRET_KEY == "local-insecure-key-change-me":  # noqa: F405
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set in production (a long random string).")

CHAOS_DRILLS_ENABLED = False

if ANYMAIL["WEBHOOK_SECRET"] == "local-webhook:change-me":  # noqa: F405
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "ANYMAIL_WEBHOOK_SECRET must be set in production (user:password the provider's bounce webhook sends)."
    )

if METRICS_BASIC_AUTH == "prometheus:prometheus":  # noqa: F405
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("METRICS_BASIC_AUTH must be set in production (user:password Prometheus sends).")
