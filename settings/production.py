"""Production settings: everything secret or host-specific comes from the environment, and a weak or example
value stops the process at start-up with what to set instead (all problems at once, not one per restart)."""

import os
import re

os.environ.setdefault("LOG_FORMAT", "json")

from django.core.exceptions import ImproperlyConfigured  # noqa: E402

from settings.base import *  # noqa: E402,F403
from settings.base import env_bool, env_int  # noqa: E402

#: The development key settings.base falls back to.
DEVELOPMENT_SECRET_KEY = "local-insecure-key-change-me"
#: Words that mark a value copied from an example rather than chosen.
PLACEHOLDER = re.compile(r"change[-_ ]?me|insecure|example|placeholder|secret[-_]?key|^x+$", re.IGNORECASE)
#: Passwords that anybody tries first.
COMMON_PASSWORDS = {"admin", "password", "prometheus", "flower", "secret", "changeme", "letmein", "12345678"}
#: Shortest password accepted for Flower, /metrics and the provider webhook (basic auth).
MIN_PASSWORD_LENGTH = 12
#: Django's own advice for SECRET_KEY (check --deploy's security.W009): 50 characters, 5 different.
MIN_SECRET_KEY_LENGTH = 50


def weak_secret_key(value: str) -> str | None:
    """Why `value` is no production SECRET_KEY, or None."""
    if value == DEVELOPMENT_SECRET_KEY:
        return "is the development key"
    if len(value) < MIN_SECRET_KEY_LENGTH or len(set(value)) < 5:
        return f"has fewer than {MIN_SECRET_KEY_LENGTH} characters (or fewer than 5 different ones)"
    if PLACEHOLDER.search(value):
        return "looks like a placeholder"
    return None


def weak_credentials(value: str) -> str | None:
    """Why `value` (user:password, basic auth) is too weak for production, or None."""
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        return "must be user:password"
    if password.lower() in COMMON_PASSWORDS or password == user or PLACEHOLDER.search(password):
        return "uses a default or placeholder password"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"has a password shorter than {MIN_PASSWORD_LENGTH} characters"
    return None


_problems: list[str] = []
if env_bool("DJANGO_DEBUG", False):
    _problems.append("DJANGO_DEBUG is on: its error pages show settings, queries and request data to anyone")
DEBUG = False
if why := weak_secret_key(SECRET_KEY):  # noqa: F405
    _problems.append(
        f"DJANGO_SECRET_KEY {why}; set a long random string (python -c 'import secrets; print(secrets.token_urlsafe(64))')"
    )
if not PUBLIC_BASE_URL.startswith("https://"):  # noqa: F405
    _problems.append(f"PUBLIC_BASE_URL is {PUBLIC_BASE_URL!r}; unsubscribe links need the platform's https:// address")  # noqa: F405
if not ALLOWED_HOSTS or set(ALLOWED_HOSTS) <= {"127.0.0.1", "localhost"}:  # noqa: F405
    _problems.append("DJANGO_ALLOWED_HOSTS names no public host; set the host names the platform answers on")
for _name, _value in (
    ("METRICS_BASIC_AUTH", METRICS_BASIC_AUTH),  # noqa: F405
    ("ANYMAIL_WEBHOOK_SECRET", ANYMAIL["WEBHOOK_SECRET"]),  # noqa: F405
    # Flower (celery -A settings flower) loads these settings too: its credentials can revoke tasks and stop workers.
    ("FLOWER_BASIC_AUTH", os.environ.get("FLOWER_BASIC_AUTH", "admin:admin")),
):
    if why := weak_credentials(_value):
        _problems.append(f"{_name} {why}")
if VONAGE_SIGNATURE_SECRET == "sandbox-signature-secret":  # noqa: F405
    _problems.append("VONAGE_SIGNATURE_SECRET is the sandbox's; set Vonage's signature secret (or empty: no receipts)")
if env_bool("WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", False):
    _problems.append("WEBHOOKS_ALLOW_PRIVATE_ADDRESSES is on: webhook endpoints could reach the platform's own network")
WEBHOOKS_ALLOW_PRIVATE_ADDRESSES = False
if _problems:
    raise ImproperlyConfigured("settings.production refuses to start:\n- " + "\n- ".join(_problems))

#: The proving harness (sandbox, drills, benchmarks) is never installed in production.
INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "harness"]  # noqa: F405

# HTTPS everywhere.  The platform runs behind a TLS-terminating proxy; X-Forwarded-Proto is believed
# only when one is declared (TRUSTED_PROXY_HOPS), since a client could send it itself.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if TRUSTED_PROXY_HOPS > 0 else None  # noqa: F405
SECURE_SSL_REDIRECT = env_bool("DJANGO_SSL_REDIRECT", True)
#: Probes and Prometheus speak plain HTTP inside the cluster.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", True)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
