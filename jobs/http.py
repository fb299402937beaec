"""HTTP calls from jobs: failures classified once, at the edge, into the errors the runtime's retry rules read
(jobs.errors), and sessions that read the environment once."""

import email.utils
import os
import time
import urllib.request

import requests
from urllib3.exceptions import NewConnectionError

from jobs.errors import ConfigurationError, PermanentError, TransientError

__all__ = ["classify_http_status", "classify_request_exception", "environment_once", "parse_retry_after"]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from now given a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def classify_http_status(status: int, *, text: str = "", retry_after: str | None = None, what: str = "") -> Exception:
    """The error for an unsuccessful HTTP status (the default rules; vendors refine them)."""
    detail = f"{what}: HTTP {status}" if what else f"HTTP {status}"
    if status == 429:
        return TransientError(
            f"{detail} rate limited", status=status, response_text=text, retry_after=parse_retry_after(retry_after)
        )
    if status in (401, 403):
        return ConfigurationError(f"{detail}: credentials refused; check the provider's settings. {text[:200]}")
    if status == 408 or status >= 500:
        return TransientError(detail, status=status, response_text=text, retry_after=parse_retry_after(retry_after))
    return PermanentError(detail, status=status, response_text=text)


def classify_request_exception(exc: requests.RequestException, *, what: str) -> TransientError:
    """A request that got no HTTP answer: always transient.

    A read timeout means the vendor may have accepted the message, so the outcome is
    unknown and the retry must reuse the same idempotency key.
    """
    if isinstance(exc, requests.ConnectTimeout):
        return TransientError(f"{what}: connect timeout")
    if isinstance(exc, requests.Timeout):
        return TransientError(f"{what}: read timeout, outcome unknown", unknown_outcome=True)
    if isinstance(exc, requests.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        if isinstance(reason, NewConnectionError):
            return TransientError(f"{what}: cannot connect: {reason}")
        # The connection dropped, possibly after the request went out.
        return TransientError(f"{what}: connection error: {exc}", unknown_outcome=True)
    return TransientError(f"{what}: {exc}")


def environment_once(session: requests.Session) -> requests.Session:
    """`session` with the proxies and CA bundle the environment gives read now, once, instead of at every
    request (requests reads the environment, netrc included, per call: half a millisecond each).  What the
    environment says is still honoured; a change to it needs a worker restart, like any setting."""
    session.proxies.update(urllib.request.getproxies())
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False
    return session
