"""Settings for the test suite: its own Redis database and sandbox ports so a running `make run` is untouched."""

import os

os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("SANDBOX_HTTP_URL", "http://127.0.0.1:18025")
os.environ.setdefault("SANDBOX_SMTP_PORT", "11025")

from settings.base import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Short so the tests that kill workers see redelivery quickly.
PROVIDER_TIMEOUT_SECONDS = 5.0
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Tests never collect static files; whitenoise need not look for them.
WHITENOISE_AUTOREFRESH = True
