"""settings.production refuses weak or example values at start-up, says what to set, and passes
`manage.py check --deploy` without a warning once they are real."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STRONG = {
    "DJANGO_SETTINGS_MODULE": "settings.production",
    "DJANGO_SECRET_KEY": "k3J9-vQ2m_xL8pR4tZ7wB1nC6yH0dF5gA2sE9uT3iO8lK4jM7qW1eR6tY0uI5oP2aS8dF3gH",
    "DJANGO_ALLOWED_HOSTS": "notify.example.org",
    "PUBLIC_BASE_URL": "https://notify.example.org",
    "METRICS_BASIC_AUTH": "prometheus:Vq8#kL2m9Zp4xW7t",
    "ANYMAIL_WEBHOOK_SECRET": "postmark:Rt5$nB8c2Mv6Qy1w",
    "FLOWER_BASIC_AUTH": "ops:Hj4@pN7s3Kd9Lf2x",
    "TRUSTED_PROXY_HOPS": "1",
    "VONAGE_SIGNATURE_SECRET": "v0nage-Sig-8rT2mQ",
}


def run(*args: str, **overrides: str | None) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "METRICS_", "ANYMAIL_", "FLOWER_", "VONAGE_", "WEBHOOKS_"))
    }
    env.update(STRONG)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def start(**overrides: str | None) -> subprocess.CompletedProcess:
    return run("-c", "import django; django.setup()", **overrides)


def test_real_values_start_and_pass_check_deploy_without_a_warning():
    assert start().returncode == 0
    result = run("manage.py", "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"DJANGO_SECRET_KEY": None}, "DJANGO_SECRET_KEY is the development key"),
        ({"DJANGO_SECRET_KEY": "short-but-random-9f8e7d"}, "DJANGO_SECRET_KEY has fewer than 50"),
        (
            {"DJANGO_SECRET_KEY": "CHANGE-ME-a-long-random-string-xxxxxxxxxxxxxxxxxxxxxxxxxxxx"},
            "looks like a placeholder",
        ),
        ({"DJANGO_DEBUG": "true"}, "DJANGO_DEBUG is on"),
        ({"PUBLIC_BASE_URL": "http://notify.example.org"}, "PUBLIC_BASE_URL is 'http://"),
        ({"DJANGO_ALLOWED_HOSTS": None}, "DJANGO_ALLOWED_HOSTS names no public host"),
        ({"METRICS_BASIC_AUTH": None}, "METRICS_BASIC_AUTH uses a default"),
        ({"ANYMAIL_WEBHOOK_SECRET": "postmark:CHANGE-ME"}, "ANYMAIL_WEBHOOK_SECRET uses a default or placeholder"),
        ({"FLOWER_BASIC_AUTH": None}, "FLOWER_BASIC_AUTH uses a default"),
        ({"FLOWER_BASIC_AUTH": "ops:short"}, "FLOWER_BASIC_AUTH has a password shorter than 12"),
        ({"VONAGE_SIGNATURE_SECRET": None}, "VONAGE_SIGNATURE_SECRET is the sandbox's"),
        ({"WEBHOOKS_ALLOW_PRIVATE_ADDRESSES": "true"}, "WEBHOOKS_ALLOW_PRIVATE_ADDRESSES is on"),
    ],
)
def test_a_weak_value_is_refused_at_start_up_with_what_to_set(overrides, says):
    result = start(**overrides)
    assert result.returncode != 0
    assert "settings.production refuses to start" in result.stderr
    assert says in result.stderr


def test_every_problem_is_listed_at_once():
    result = start(DJANGO_SECRET_KEY=None, PUBLIC_BASE_URL="http://x", FLOWER_BASIC_AUTH=None)
    assert all(name in result.stderr for name in ("DJANGO_SECRET_KEY", "PUBLIC_BASE_URL", "FLOWER_BASIC_AUTH"))


def test_https_is_believed_from_the_proxy_only_when_one_is_declared():
    code = "import django; django.setup(); from django.conf import settings; print(settings.SECURE_PROXY_SSL_HEADER)"
    assert run("-c", code, TRUSTED_PROXY_HOPS="0").stdout.strip() == "None"
    assert "HTTP_X_FORWARDED_PROTO" in run("-c", code).stdout
