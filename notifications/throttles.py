"""Who may trigger how much: the public password-reset form per address and per client IP, admin log-in
attempts per name and per IP, and API tokens' requests and daily sends per priority.

Every check is one Redis round trip (jobs.ratelimit.throttle_take: GCRA, all buckets or none), made
before anything is written: a throttled request costs no row and no message.  Addresses and names
are hashed before they become keys, so Redis holds no personal data.
"""

import hashlib
import ipaddress

from django.conf import settings
from django.http import HttpRequest

from jobs.ratelimit import Bucket, throttle_take


def client_ip(request: HttpRequest) -> str:
    """The client's address: the socket's peer, or with TRUSTED_PROXY_HOPS proxies in front, the address the
    outermost trusted proxy saw (X-Forwarded-For, counted from the right, so a client cannot forge it)."""
    peer = request.META.get("REMOTE_ADDR", "")
    hops = settings.TRUSTED_PROXY_HOPS
    if hops <= 0:
        return peer
    forwarded = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",") if part.strip()]
    if len(forwarded) < hops:
        return peer
    candidate = forwarded[-hops]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return peer


def _digest(value: str) -> str:
    return hashlib.sha256(value.strip().lower().encode()).hexdigest()[:32]


def _bucket(kind: str, value: str, limit: tuple[int, float]) -> Bucket:
    count, seconds = limit
    return Bucket(key=f"{kind}:{_digest(value)}", count=count, seconds=seconds)


def password_reset_wait(*, address: str, ip: str) -> float:
    """0 if a reset mail to `address` asked from `ip` may go now, else the seconds until it may."""
    limits = settings.PASSWORD_RESET_THROTTLE
    return throttle_take(
        [
            _bucket("reset:address", address, limits["per_address"]),
            _bucket("reset:ip", ip, limits["per_ip"]),
        ]
    )


def admin_login_wait(*, username: str, ip: str) -> float:
    """0 if another log-in attempt for `username` from `ip` may be checked now, else the seconds until it may."""
    limits = settings.ADMIN_LOGIN_THROTTLE
    return throttle_take(
        [
            _bucket("login:name", username, limits["per_username"]),
            _bucket("login:ip", ip, limits["per_ip"]),
        ]
    )


#: A rolling day, the window of a token's quota per priority.
DAY_SECONDS = 86_400.0


def api_request_wait(*, token_id: int) -> float:
    """0 if the token may make another API request now, else the seconds until it may."""
    return throttle_take(
        [
            Bucket(
                key=f"api:token:{token_id}",
                count=settings.API_TOKEN_THROTTLE[0],
                seconds=settings.API_TOKEN_THROTTLE[1],
            )
        ]
    )


def api_quota_wait(*, token_id: int, priority: str, quota: int | None) -> float:
    """0 if the token may send one more `priority` notification within its daily quota, else the wait."""
    if quota is None:
        return 0.0
    if quota == 0:
        return DAY_SECONDS
    return throttle_take([Bucket(key=f"api:quota:{token_id}:{priority}", count=quota, seconds=DAY_SECONDS)])
