"""The JSON HTTP API: submit a notification (202 + status URL) and read its status; create, start, pause,
resume and cancel campaigns and read their progress. Token auth; campaigns need the model permissions."""

import math
import re
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, ValidationError
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from notifications import campaigns
from notifications.inputs import MalformedJSON, parse_json_object
from notifications.models import ApiToken, Campaign, Notification, Priority
from notifications.services import IdempotencyConflict, notification_send, request_fingerprint
from notifications.throttles import api_quota_wait, api_request_wait

#: Fields a POST body may have, with the JSON type each must be.
FIELDS: dict[str, type | tuple[type, ...]] = {
    "priority": str,
    "channel": str,
    "template": str,
    "to": str,
    "recipient_id": int,
    "context": dict,
}
REQUIRED = ("priority", "channel", "template")
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
JSON_TYPE_NAMES = {str: "a string", int: "an integer", dict: "an object"}


def error(status: int, message: str, fields: dict[str, str] | None = None, **headers: str) -> JsonResponse:
    body: dict[str, Any] = {"error": message}
    if fields:
        body["errors"] = fields
    response = JsonResponse(body, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def too_many(wait: float, message: str) -> JsonResponse:
    """429 with Retry-After (whole seconds) and the wait in the body."""
    seconds = max(1, math.ceil(wait))
    return error(429, f"{message}; retry in {seconds}s", Retry_After=str(seconds))


def api_view(*methods: str) -> Callable:
    """CSRF-exempt, token-authenticated JSON view; a database outage answers 503, not a traceback."""

    def decorator(view: Callable) -> Callable:
        @csrf_exempt
        @require_http_methods(list(methods))
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            try:
                header = request.headers.get("Authorization", "")
                scheme, _, key = header.partition(" ")
                token = ApiToken.objects.for_key(key.strip()) if scheme == "Token" and key.strip() else None
                if token is None or not token.user.is_active:
                    return error(
                        401,
                        "authentication required: send 'Authorization: Token <key>' "
                        "(create one with: python manage.py create_api_token <username>)",
                        WWW_Authenticate="Token",
                    )
                wait = api_request_wait(token_id=token.pk)
                if wait > 0:
                    return too_many(wait, "too many requests for this token")
                request.user = token.user
                request.api_token = token
                return view(request, *args, **kwargs)
            except (OperationalError, InterfaceError):
                return error(503, "the database is unavailable; retry shortly", Retry_After="5")

        return wrapper

    return decorator


def _read_json(request: HttpRequest) -> tuple[dict[str, Any] | None, JsonResponse | None]:
    """The body as a JSON object, or the 400/413 answer that says what is wrong with it."""
    limit = settings.API_MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None, error(400, "invalid Content-Length header")
    if declared > limit:
        return None, error(413, f"request body is {declared} bytes; the limit is {limit}")
    try:
        raw = request.body
    except RequestDataTooBig:
        return None, error(413, f"request body is larger than the limit of {limit} bytes")
    if len(raw) > limit:
        return None, error(413, f"request body is {len(raw)} bytes; the limit is {limit}")
    try:
        payload = parse_json_object(raw)
    except ValidationError as exc:
        fields = {name: " ".join(messages) for name, messages in exc.message_dict.items()}
        return None, error(400, "malformed JSON" if isinstance(exc, MalformedJSON) else "invalid request", fields)
    return payload, None


def _parse_body(request: HttpRequest) -> tuple[dict[str, Any] | None, JsonResponse | None]:
    payload, problem = _read_json(request)
    if problem is not None:
        return None, problem
    fields: dict[str, str] = {}
    for name in payload:
        if name not in FIELDS:
            fields[name] = f"unknown field; allowed: {', '.join(FIELDS)}"
    for name, expected in FIELDS.items():
        value = payload.get(name)
        if value is None:
            if name in REQUIRED:
                fields[name] = "this field is required"
            continue
        # bool is an int in Python, never in JSON.
        if not isinstance(value, expected) or isinstance(value, bool):
            fields[name] = f"must be {JSON_TYPE_NAMES[expected]}"
    if "to" not in payload and "recipient_id" not in payload:
        fields.setdefault("to", "give 'to' (an address) or 'recipient_id'")
    if fields:
        return None, error(400, "invalid request", fields)
    return payload, None


def _may_send(request: HttpRequest, priority: str) -> JsonResponse | None:
    """403 unless the user may send `priority` (add_notification and send_<priority>) and the token may send
    security when that is asked; 429 when the token's daily quota for the priority is used up."""
    if priority not in Priority.values:
        return None  # the service names the field
    for permission in ("notifications.add_notification", f"notifications.send_{priority}"):
        if not request.user.has_perm(permission):
            return _forbidden(permission)
    token = request.api_token
    if priority == Priority.SECURITY and not token.may_send_security:
        return error(
            403, "this token may not send security notifications; an admin allows it on the token (API tokens)"
        )
    wait = api_quota_wait(token_id=token.pk, priority=priority, quota=token.daily_quota(priority))
    if wait > 0:
        return too_many(wait, f"this token's daily quota of {priority} notifications is used up")
    return None


def _summary(request: HttpRequest, notification: Notification) -> dict[str, Any]:
    return {
        "id": str(notification.pk),
        "status": notification.status,
        "status_url": request.build_absolute_uri(reverse("api-notification-detail", args=[notification.pk])),
    }


@api_view("POST")
def notifications_create(request: HttpRequest) -> JsonResponse:
    payload, problem = _parse_body(request)
    if problem is not None:
        return problem
    refused = _may_send(request, payload["priority"])
    if refused is not None:
        return refused
    header_key = request.headers.get("Idempotency-Key")
    key = None
    if header_key is not None:
        if not IDEMPOTENCY_KEY.match(header_key):
            return error(400, "invalid request", {"Idempotency-Key": "1 to 200 printable ASCII characters, no spaces"})
        # Scoped per user, so two clients choosing the same key never collide.
        key = f"u{request.user.pk}:{header_key}"
    try:
        notification, _ = notification_send(
            priority=payload["priority"],
            channel=payload["channel"],
            template=payload["template"],
            context=payload.get("context") or {},
            to=payload.get("to"),
            recipient_id=payload.get("recipient_id"),
            idempotency_key=key,
            created_by=request.user,
            fingerprint=request_fingerprint(payload),
        )
    except ValidationError as exc:
        fields = {name: " ".join(messages) for name, messages in exc.message_dict.items()}
        return error(400, "invalid request", fields)
    except IdempotencyConflict as exc:
        return error(422, str(exc), {"Idempotency-Key": "already used for a different request body"})
    response = JsonResponse(_summary(request, notification), status=202)
    response["Location"] = _summary(request, notification)["status_url"]
    return response


@api_view("GET")
def notifications_detail(request: HttpRequest, notification_id: str) -> JsonResponse:
    notifications = Notification.objects.all()
    if not request.user.is_staff:
        notifications = notifications.filter(created_by=request.user)
    try:
        notification = notifications.filter(pk=notification_id).first()
    except ValidationError:
        notification = None
    if notification is None:
        return error(404, f"no notification {notification_id}")
    return JsonResponse(
        {
            **_summary(request, notification),
            "priority": notification.priority,
            "channel": notification.channel,
            "template": notification.template,
            "to": notification.to,
            "provider": notification.provider or None,
            "provider_message_id": notification.provider_message_id or None,
            "attempts": notification.attempts,
            "created_at": notification.created_at.isoformat(),
            "queued_at": notification.queued_at.isoformat() if notification.queued_at else None,
            "sent_at": notification.sent_at.isoformat() if notification.sent_at else None,
            "last_error": notification.last_error or None,
        }
    )


# --- campaigns ----------------------------------------------------------------------

CAMPAIGN_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "template": str,
    "channel": str,
    "context": dict,
    "audience": dict,
}
AUDIENCE_FIELDS = ("locale", "tag")
CAMPAIGN_ACTIONS = {
    "start": campaigns.campaign_start,
    "pause": campaigns.campaign_pause,
    "resume": campaigns.campaign_resume,
    "cancel": campaigns.campaign_cancel,
}


def _forbidden(permission: str) -> JsonResponse:
    return error(403, f"this token's user lacks the permission {permission!r}")


def _campaign_body(request: HttpRequest) -> tuple[dict[str, Any] | None, JsonResponse | None]:
    payload, problem = _read_json(request)
    if problem is not None:
        return None, problem
    fields: dict[str, str] = {}
    for name in payload:
        if name not in CAMPAIGN_FIELDS:
            fields[name] = f"unknown field; allowed: {', '.join(CAMPAIGN_FIELDS)}"
    for name, expected in CAMPAIGN_FIELDS.items():
        value = payload.get(name)
        if value is None:
            if name in ("name", "template", "channel"):
                fields[name] = "this field is required"
            continue
        if not isinstance(value, expected) or isinstance(value, bool):
            fields[name] = f"must be {JSON_TYPE_NAMES[expected]}"
    audience = payload.get("audience") or {}
    if isinstance(audience, dict):
        for name, value in audience.items():
            if name not in AUDIENCE_FIELDS:
                fields[f"audience.{name}"] = f"unknown field; allowed: {', '.join(AUDIENCE_FIELDS)}"
            elif not isinstance(value, str):
                fields[f"audience.{name}"] = "must be a string"
    if fields:
        return None, error(400, "invalid request", fields)
    return payload, None


def _campaign_json(request: HttpRequest, campaign: Campaign) -> dict[str, Any]:
    return {
        **campaigns.campaign_progress(campaign),
        "url": request.build_absolute_uri(reverse("api-campaign-detail", args=[campaign.pk])),
    }


@api_view("POST")
def campaigns_create(request: HttpRequest) -> JsonResponse:
    if not request.user.has_perm("notifications.add_campaign"):
        return _forbidden("notifications.add_campaign")
    payload, problem = _campaign_body(request)
    if problem is not None:
        return problem
    audience = payload.get("audience") or {}
    try:
        campaign = campaigns.campaign_create(
            name=payload["name"],
            template=payload["template"],
            channel=payload["channel"],
            context=payload.get("context") or {},
            audience_locale=audience.get("locale", ""),
            audience_tag=audience.get("tag", ""),
            created_by=request.user,
        )
    except ValidationError as exc:
        return error(400, "invalid request", {name: " ".join(messages) for name, messages in exc.message_dict.items()})
    response = JsonResponse(_campaign_json(request, campaign), status=201)
    response["Location"] = reverse("api-campaign-detail", args=[campaign.pk])
    return response


@api_view("GET")
def campaigns_detail(request: HttpRequest, campaign_id: int) -> JsonResponse:
    if not request.user.has_perm("notifications.view_campaign"):
        return _forbidden("notifications.view_campaign")
    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is None:
        return error(404, f"no campaign {campaign_id}")
    return JsonResponse(_campaign_json(request, campaign))


@api_view("POST")
def campaigns_action(request: HttpRequest, campaign_id: int, action: str) -> JsonResponse:
    """start, pause, resume or cancel; 202 at once (the work happens in the workers), 409 if the state forbids it."""
    if action not in CAMPAIGN_ACTIONS:
        return error(404, f"unknown action {action!r}; use one of {', '.join(CAMPAIGN_ACTIONS)}")
    if not request.user.has_perm("notifications.change_campaign"):
        return _forbidden("notifications.change_campaign")
    try:
        campaign = CAMPAIGN_ACTIONS[action](campaign_id=campaign_id)
    except Campaign.DoesNotExist:
        return error(404, f"no campaign {campaign_id}")
    except campaigns.CampaignStateError as exc:
        return error(409, str(exc))
    return JsonResponse(_campaign_json(request, campaign), status=202)
