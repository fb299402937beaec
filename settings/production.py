"""Production settings: everything secret or host-specific must come from the environment."""

from settings.base import *  # noqa: F403
from settings.base import env_bool, env_int

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
