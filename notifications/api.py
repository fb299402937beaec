"""The JSON HTTP API on django-ninja: submit a notification (202 + status URL) and read its status; create, start,
pause, resume and cancel campaigns and read their progress.

Typed schemas validate every request and publish the OpenAPI 3.1 document at /api/v1/openapi.json (interactive
docs at /api/v1/docs for staff). The wire format is the one clients have always had: token auth
(`Authorization: Token <key>`), and every refusal is `{"error": reason, "errors": {field: reason}}` with a 4xx
status (a field is a dotted path such as `context.code` or `audience.tag`); nothing is stored on a refusal.
"""

import math
from typing import Annotated, Any, Literal

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import RequestDataTooBig, ValidationError
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from ninja import Field, Header, NinjaAPI, Schema, Status
from ninja.errors import AuthenticationError, HttpError, ValidationErrorContext
from ninja.errors import ValidationError as SchemaError
from ninja.openapi.views import openapi_view
from ninja.parser import Parser
from ninja.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict

from notifications import campaigns, selectors, webhooks
from notifications.inputs import CALLER_KEY_PATTERN, CALLER_KEY_RULE, MalformedJSON, parse_json_object
from notifications.models import ApiToken, Campaign, Channel, EventKind, Notification, Priority, WebhookEndpoint
from notifications.services import (
    IdempotencyConflict,
    NotCancellable,
    notification_cancel,
    notification_send,
    notifications_cancel_by_key,
    request_fingerprint,
)
from notifications.throttles import api_quota_wait, api_request_wait

CAMPAIGN_ACTIONS = {
    "start": campaigns.campaign_start,
    "pause": campaigns.campaign_pause,
    "resume": campaigns.campaign_resume,
    "cancel": campaigns.campaign_cancel,
}


class Refused(Exception):
    """A request answered with a 4xx/5xx in the API's error envelope."""

    def __init__(self, status: int, message: str, fields: dict[str, str] | None = None, **headers: str) -> None:
        super().__init__(message)
        self.status, self.message, self.fields = status, message, fields or {}
        self.headers = {name.replace("_", "-"): value for name, value in headers.items()}


def _too_many(wait: float, message: str) -> Refused:
    """429 with Retry-After (whole seconds) and the wait in the message."""
    seconds = max(1, math.ceil(wait))
    return Refused(429, f"{message}; retry in {seconds}s", Retry_After=str(seconds))


def _invalid(exc: ValidationError) -> Refused:
    return Refused(400, "invalid request", {name: " ".join(messages) for name, messages in exc.message_dict.items()})


# --- how requests are read, authenticated and refused -------------------------------


class StrictJSON(Parser):
    """Bodies through the project's one JSON rule (no NaN/Infinity, no NUL, C0 or lone surrogates, an object),
    within API_MAX_BODY_BYTES."""

    def parse_body(self, request: HttpRequest) -> dict[str, Any]:
        size, limit = len(request.body), settings.API_MAX_BODY_BYTES
        if size > limit:
            raise Refused(413, f"request body is {size} bytes; the limit is {limit}")
        try:
            return parse_json_object(request.body)
        except ValidationError as exc:
            refusal = _invalid(exc)
            if isinstance(exc, MalformedJSON):
                refusal.message = "malformed JSON"
            raise refusal from None


class TokenAuth(APIKeyHeader):
    """`Authorization: Token <key>` of an active user's API token, then the token's request rate, then the
    `permissions` the operation needs (before its body is read: a user who may not, learns only that)."""

    param_name = "Authorization"

    def __init__(self, *permissions: str) -> None:
        super().__init__()
        self.permissions = permissions

    def authenticate(self, request: HttpRequest, key: str | None) -> ApiToken | None:
        scheme, _, key = (key or "").partition(" ")
        token = ApiToken.objects.for_key(key.strip()) if scheme == "Token" and key.strip() else None
        if token is None or not token.user.is_active:
            return None
        wait = api_request_wait(token_id=token.pk)
        if wait > 0:
            raise _too_many(wait, "too many requests for this token")
        request.user = token.user
        for permission in self.permissions:
            if not token.user.has_perm(permission):
                raise _forbidden(permission)
        return token


class PlatformAPI(NinjaAPI):
    """Schema errors become `errors: {field: reason}` in the words the API has always used."""

    def validation_error_from_error_contexts(self, error_contexts: list[ValidationErrorContext]) -> SchemaError:
        fields: dict[str, str] = {}
        for context in error_contexts:
            source = context.model.__ninja_param_source__
            for problem in context.pydantic_validation_error.errors(include_url=False):
                loc = context.model.__ninja_flatten_map_reverse__.get(problem["loc"], problem["loc"])
                # A body's loc starts with the view's parameter name; a header's is the header's name.
                path = [str(part) for part in (loc[1:] if source == "body" else loc)]
                fields.setdefault(".".join(path) or source, _reason(problem, context.model, list(loc)))
        error = SchemaError([])
        error.fields = fields
        return error


def _reason(problem: dict[str, Any], model: type[BaseModel], loc: list) -> str:
    kind, value = problem["type"], problem.get("input")
    field = _field_at(model, loc)
    if kind == "missing":
        return "this field is required"
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        allowed = ", ".join(f.alias or name for name, f in parent.model_fields.items()) if parent else ""
        return f"unknown field; allowed: {allowed}"
    if kind == "literal_error":
        if not isinstance(value, str):
            return "must be a string"
        return f"unknown {loc[-1]} {value!r}; expected one of {problem['ctx']['expected']}"
    if kind == "string_pattern_mismatch" and field is not None and field.description:
        return field.description
    return {
        "string_type": "must be a string",
        "int_type": "must be an integer",
        "dict_type": "must be an object",
        "model_type": "must be an object",
        "model_attributes_type": "must be an object",
        "string_too_long": f"at most {problem.get('ctx', {}).get('max_length')} characters",
    }.get(kind, problem["msg"])


def _model_at(model: type[BaseModel], loc: list) -> type[BaseModel] | None:
    """The schema class reached by following `loc` from `model` (None if it leads to no schema)."""
    current: Any = model
    for part in loc:
        field = _field(current, part)
        if field is None:
            return None
        current = next(
            (t for t in (field.annotation, *getattr(field.annotation, "__args__", ())) if _is_schema(t)), None
        )
    return current if _is_schema(current) else None


def _field_at(model: type[BaseModel], loc: list) -> Any:
    parent = _model_at(model, loc[:-1])
    return _field(parent, loc[-1]) if parent is not None and loc else None


def _field(schema: Any, name: str) -> Any:
    """The field of `schema` called `name` in Python or on the wire (its alias); None if it has none."""
    fields = getattr(schema, "model_fields", {})
    return fields.get(name) or next((f for f in fields.values() if f.alias == name), None)


def _is_schema(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


api = PlatformAPI(
    title="Notification platform API",
    version="1",
    description=(
        "Submit notifications and run campaigns. Authenticate with `Authorization: Token <key>` "
        '(an admin mints keys under API tokens). Every refusal is `{"error": reason, "errors": {field: reason}}`.'
    ),
    urls_namespace="api-v1",
    auth=TokenAuth(),
    parser=StrictJSON(),
    docs_url=None,  # served below, behind the admin login; the document itself is public
)


def _answer(request: HttpRequest, refusal: Refused) -> HttpResponse:
    body: dict[str, Any] = {"error": refusal.message}
    if refusal.fields:
        body["errors"] = refusal.fields
    response = api.create_response(request, body, status=refusal.status)
    for name, value in refusal.headers.items():
        response[name] = value
    return response


@api.exception_handler(Refused)
def _refused(request: HttpRequest, exc: Refused) -> HttpResponse:
    return _answer(request, exc)


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    # The parser's refusals reach here wrapped ("Cannot parse request body"): answer the refusal itself.
    cause = exc.__cause__
    return _answer(request, cause if isinstance(cause, Refused) else Refused(exc.status_code, str(exc)))


@api.exception_handler(SchemaError)
def _schema_error(request: HttpRequest, exc: SchemaError) -> HttpResponse:
    return _answer(request, Refused(400, "invalid request", getattr(exc, "fields", None) or {"body": str(exc)}))


@api.exception_handler(ValidationError)
def _service_refused(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    return _answer(request, _invalid(exc))


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return _answer(
        request,
        Refused(
            401,
            "authentication required: send 'Authorization: Token <key>' "
            "(create one with: python manage.py create_api_token <username>)",
            WWW_Authenticate="Token",
        ),
    )


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return _answer(
        request, Refused(413, f"request body is larger than the limit of {settings.API_MAX_BODY_BYTES} bytes")
    )


@api.exception_handler(OperationalError)
@api.exception_handler(InterfaceError)
def _database_down(request: HttpRequest, exc: Exception) -> HttpResponse:
    return _answer(request, Refused(503, "the database is unavailable; retry shortly", Retry_After="5"))


# --- schemas ------------------------------------------------------------------------


class Body(Schema):
    """A request body: exactly these fields, each of exactly its JSON type (no coercion of "1" to 1)."""

    model_config = ConfigDict(extra="forbid", strict=True)


PriorityName = Literal[tuple(Priority.values)]  # type: ignore[valid-type]
ChannelName = Literal[tuple(Channel.values)]  # type: ignore[valid-type]


class NotificationIn(Body):
    priority: PriorityName
    channel: ChannelName
    template: str = Field(description="a template under message_templates/")
    to: str | None = Field(None, description="an e-mail address, an E.164 number or a device token")
    recipient_id: int | None = Field(None, description="instead of `to`: a known recipient")
    context: dict[str, Any] = Field(default_factory=dict, description="exactly the variables the template declares")
    send_at: str | None = Field(
        None, description="not before this moment (ISO 8601 with a time zone); held in PostgreSQL until then"
    )
    cancellation_key: str | None = Field(
        None, description="a label to cancel it by (POST /notifications/cancel), shared by as many as you like"
    )


class NotificationAccepted(Schema):
    id: str
    status: str
    status_url: str


class NotificationOut(NotificationAccepted):
    priority: str
    channel: str
    template: str
    to: str
    provider: str | None
    provider_message_id: str | None
    attempts: int
    created_at: str
    queued_at: str | None
    sent_at: str | None
    send_at: str | None
    cancellation_key: str | None
    last_error: str | None


class CancelByKeyIn(Body):
    cancellation_key: str


class CancelledOut(Schema):
    cancelled: list[str]
    too_late: dict[str, str] = Field(description="notification id -> its status, for those a worker took already")


class NotCancelledOut(Schema):
    error: str
    status: str


class CampaignStartIn(Body):
    send_at: str | None = Field(None, description="start then (ISO 8601 with a time zone) instead of now")


class Audience(Body):
    locale: str = Field("", description="only recipients of this locale, e.g. 'de'")
    tag: str = Field("", description="only recipients with this tag")


class CampaignIn(Body):
    name: str
    template: str
    channel: ChannelName
    context: dict[str, Any] = Field(default_factory=dict)
    audience: Audience | None = None


class Segments(Schema):
    done: int
    total: int


class CampaignOut(Schema):
    id: int
    name: str
    status: str
    fanout_complete: bool
    segments: Segments
    recipients: int
    sent: int
    failed: int
    skipped: int
    remaining: int
    percent_done: float
    rate_per_second: float
    eta_seconds: int | None
    last_error: str | None
    #: Why it is not sending and until when (scheduled, paused, quiet hours, a busy or open provider), else null.
    waiting: str | None
    send_at: str | None
    started_at: str | None
    finished_at: str | None
    url: str


class ErrorOut(Schema):
    error: str
    errors: dict[str, str] | None = None


#: What every operation may answer besides its success.
REFUSALS = {code: ErrorOut for code in (400, 401, 403, 404, 413, 429, 503)}


# --- notifications ------------------------------------------------------------------


def _may_send(request: HttpRequest, priority: str) -> None:
    """Refused (403) unless the user may send `priority` (add_notification and send_<priority>) and the token
    may send security when that is asked; 429 when the token's daily quota for the priority is used up."""
    for permission in ("notifications.add_notification", f"notifications.send_{priority}"):
        if not request.user.has_perm(permission):
            raise _forbidden(permission)
    token = request.auth
    if priority == Priority.SECURITY and not token.may_send_security:
        raise Refused(
            403, "this token may not send security notifications; an admin allows it on the token (API tokens)"
        )
    wait = api_quota_wait(token_id=token.pk, priority=priority, quota=token.daily_quota(priority))
    if wait > 0:
        raise _too_many(wait, f"this token's daily quota of {priority} notifications is used up")


def _forbidden(permission: str) -> Refused:
    return Refused(403, f"this token's user lacks the permission {permission!r}")


def _summary(request: HttpRequest, notification: Notification) -> dict[str, Any]:
    return {
        "id": str(notification.pk),
        # As every reader gives it, when the row was read so (selectors.notification_visible_to).
        "status": getattr(notification, "shown_status", notification.status),
        "status_url": request.build_absolute_uri(reverse("api-v1:notification-detail", args=[notification.pk])),
    }


@api.post(
    "/notifications",
    response={202: NotificationAccepted, 422: ErrorOut, **REFUSALS},
    url_name="notifications",
    summary="Submit a notification",
)
def notifications_create(
    request: HttpRequest,
    response: HttpResponse,
    payload: NotificationIn,
    idempotency_key: Annotated[
        str | None,
        Header(
            None,
            alias="Idempotency-Key",
            pattern=CALLER_KEY_PATTERN,
            description=CALLER_KEY_RULE,
        ),
    ] = None,
):
    """Validated and written at once, sent by the workers: 202 with the status URL. The same Idempotency-Key
    with the same body answers the same notification; with another body, 422."""
    given = payload.model_dump(exclude_unset=True)
    if payload.to is None and payload.recipient_id is None:
        raise Refused(400, "invalid request", {"to": "give 'to' (an address) or 'recipient_id'"})
    _may_send(request, payload.priority)
    try:
        notification, _ = notification_send(
            send_at=_moment(payload.send_at, "send_at"),
            cancellation_key=payload.cancellation_key or "",
            priority=payload.priority,
            channel=payload.channel,
            template=payload.template,
            context=payload.context,
            to=payload.to,
            recipient_id=payload.recipient_id,
            # Scoped per user, so two clients choosing the same key never collide.
            idempotency_key=f"u{request.user.pk}:{idempotency_key}" if idempotency_key is not None else None,
            created_by=request.user,
            fingerprint=request_fingerprint(given),
        )
    except IdempotencyConflict as exc:
        raise Refused(422, str(exc), {"Idempotency-Key": "already used for a different request body"}) from None
    summary = _summary(request, notification)
    response["Location"] = summary["status_url"]
    return Status(202, summary)


def _moment(value: str | None, field: str):
    """An ISO 8601 date and time from a request (the service says what is wrong with one that parses)."""
    if value is None:
        return None
    try:
        moment = parse_datetime(value)
    except ValueError:
        moment = None
    if moment is None:
        raise Refused(400, "invalid request", {field: "not an ISO 8601 date and time, e.g. 2027-01-31T09:00:00Z"})
    return moment


@api.post(
    "/notifications/cancel",  # before /notifications/{notification_id}, which would take "cancel"
    response={200: CancelledOut, **REFUSALS},
    url_name="notifications-cancel",
    summary="Cancel notifications by their cancellation key",
)
def notifications_cancel_key(request: HttpRequest, payload: CancelByKeyIn):
    """Every notification with this cancellation key that no worker took yet is cancelled (nothing of it is
    sent); those already taken are listed with their status. Staff cancel anyone's; other users their own."""
    return notifications_cancel_by_key(
        cancellation_key=payload.cancellation_key,
        created_by=None if request.user.is_staff else request.user,
        reason=f"cancelled by {request.user} (key {payload.cancellation_key})",
    )


def _visible(request: HttpRequest, notification_id: str) -> Notification:
    """The notification if this token's user may read it (staff: any; others: their own), else a 404."""
    notification = selectors.notification_visible_to(request.user, notification_id)
    if notification is None:
        raise Refused(404, f"no notification {notification_id}")
    return notification


@api.get(
    "/notifications/{notification_id}",
    response={200: NotificationOut, **REFUSALS},
    url_name="notification-detail",
    summary="A notification's status",
)
def notifications_detail(request: HttpRequest, notification_id: str):
    """Staff see every notification; other users the ones they submitted."""
    notification = _visible(request, notification_id)
    return {
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
        "send_at": notification.send_at.isoformat() if notification.send_at else None,
        "cancellation_key": notification.cancellation_key or None,
        "last_error": notification.last_error or None,
    }


@api.post(
    "/notifications/{notification_id}/cancel",
    response={200: NotificationAccepted, 409: NotCancelledOut, **REFUSALS},
    url_name="notification-cancel",
    summary="Cancel a notification",
)
def notifications_cancel(request: HttpRequest, notification_id: str):
    """200 when it was cancelled before a worker took it (nothing of it is sent); 409 with its status when a
    worker took it already or it is final."""
    notification = _visible(request, notification_id)
    try:
        notification = notification_cancel(notification_id=notification.pk, reason=f"cancelled by {request.user}")
    except NotCancellable as exc:
        return Status(409, {"error": str(exc), "status": exc.status})
    return _summary(request, notification)


class EventOut(Schema):
    id: int
    kind: str
    at: str
    provider: str
    details: dict[str, Any]


class EventsOut(Schema):
    notification_id: str
    status: str
    events: list[EventOut]


@api.get(
    "/notifications/{notification_id}/events",
    response={200: EventsOut, **REFUSALS},
    url_name="notification-events",
    summary="A notification's timeline",
)
def notifications_events(request: HttpRequest, notification_id: str):
    """What happened to it, oldest first: sent, failed, skipped (our own record) and the provider's reports."""
    notification = _visible(request, notification_id)
    return {
        "notification_id": str(notification.pk),
        "status": notification.shown_status,
        "events": [
            {"id": e.pk, "kind": e.kind, "at": e.at.isoformat(), "provider": e.provider, "details": e.data}
            for e in selectors.notification_timeline(notification)
        ],
    }


# --- webhook endpoints ------------------------------------------------------------------

EventKindName = Literal[tuple(EventKind.values)]  # type: ignore[valid-type]


class WebhookEndpointIn(Body):
    url: str = Field(description="where events are POSTed (https; no private addresses in production)")
    event_kinds: list[EventKindName] = Field(default_factory=list, description="the kinds to send; empty: all")
    description: str = ""
    rate_per_second: int = Field(50, description="deliveries per second at most")


class WebhookEndpointOut(Schema):
    id: int
    url: str
    event_kinds: list[str]
    description: str
    active: bool
    rate_per_second: int
    secret: str = Field(description="verify each delivery's webhook-signature with it (Standard Webhooks)")


class WebhookTestOut(Schema):
    delivered: bool
    detail: str


def _endpoint_json(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {
        "id": endpoint.pk,
        "url": endpoint.url,
        "event_kinds": endpoint.event_kinds,
        "description": endpoint.description,
        "active": endpoint.active,
        "rate_per_second": endpoint.rate_per_second,
        "secret": endpoint.secret,
    }


@api.post(
    "/webhooks",
    response={201: WebhookEndpointOut, **REFUSALS},
    auth=TokenAuth("notifications.add_webhookendpoint"),
    url_name="webhook-create",
    summary="Register a webhook endpoint",
)
def webhooks_create(request: HttpRequest, payload: WebhookEndpointIn):
    endpoint = webhooks.webhook_endpoint_create(
        url=payload.url,
        event_kinds=list(payload.event_kinds),
        description=payload.description,
        rate_per_second=payload.rate_per_second,
        user=request.user,
    )
    return Status(201, _endpoint_json(endpoint))


@api.get(
    "/webhooks",
    response={200: list[WebhookEndpointOut], **REFUSALS},
    auth=TokenAuth("notifications.view_webhookendpoint"),
    url_name="webhook-list",
    summary="The webhook endpoints",
)
def webhooks_list(request: HttpRequest):
    return [_endpoint_json(e) for e in WebhookEndpoint.objects.order_by("pk")]


@api.delete(
    "/webhooks/{int:endpoint_id}",
    response={204: None, **REFUSALS},
    auth=TokenAuth("notifications.delete_webhookendpoint"),
    url_name="webhook-delete",
    summary="Remove a webhook endpoint (deliveries still waiting for it are dropped)",
)
def webhooks_delete(request: HttpRequest, endpoint_id: int):
    deleted, _ = WebhookEndpoint.objects.filter(pk=endpoint_id).delete()
    if not deleted:
        raise Refused(404, f"no webhook endpoint {endpoint_id}")
    return Status(204, None)


@api.post(
    "/webhooks/{int:endpoint_id}/test",
    response={200: WebhookTestOut, **REFUSALS},
    auth=TokenAuth("notifications.send_test_webhook"),
    url_name="webhook-test",
    summary="Send a test event to a webhook endpoint now",
)
def webhooks_test(request: HttpRequest, endpoint_id: int):
    endpoint = WebhookEndpoint.objects.filter(pk=endpoint_id).first()
    if endpoint is None:
        raise Refused(404, f"no webhook endpoint {endpoint_id}")
    delivered, detail = webhooks.webhook_send_test(endpoint=endpoint)
    return {"delivered": delivered, "detail": detail}


# --- campaigns ----------------------------------------------------------------------


def _campaign_json(request: HttpRequest, campaign: Campaign) -> dict[str, Any]:
    return {
        **selectors.campaign_progress(campaign),
        "url": request.build_absolute_uri(reverse("api-v1:campaign-detail", args=[campaign.pk])),
    }


@api.post(
    "/campaigns",
    response={201: CampaignOut, **REFUSALS},
    auth=TokenAuth("notifications.add_campaign"),
    url_name="campaigns",
    summary="Create a campaign",
)
def campaigns_create(request: HttpRequest, response: HttpResponse, payload: CampaignIn):
    """A draft; start it with POST /campaigns/{id}/start. Needs notifications.add_campaign."""
    audience = payload.audience or Audience()
    campaign = campaigns.campaign_create(
        name=payload.name,
        template=payload.template,
        channel=payload.channel,
        context=payload.context,
        audience_locale=audience.locale,
        audience_tag=audience.tag,
        created_by=request.user,
    )
    response["Location"] = reverse("api-v1:campaign-detail", args=[campaign.pk])
    return Status(201, _campaign_json(request, campaign))


@api.get(
    "/campaigns/{int:campaign_id}",
    response={200: CampaignOut, **REFUSALS},
    auth=TokenAuth("notifications.view_campaign"),
    url_name="campaign-detail",
    summary="A campaign's progress",
)
def campaigns_detail(request: HttpRequest, campaign_id: int):
    """Counts, percent done, current rate and time to finish. Needs notifications.view_campaign."""
    campaign = selectors.campaign_find(campaign_id)
    if campaign is None:
        raise Refused(404, f"no campaign {campaign_id}")
    return _campaign_json(request, campaign)


@api.post(
    "/campaigns/{int:campaign_id}/{action}",
    response={202: CampaignOut, 409: ErrorOut, **REFUSALS},
    url_name="campaign-action",
    summary="Start, pause, resume or cancel a campaign",
)
def campaigns_action(request: HttpRequest, campaign_id: int, action: str, payload: CampaignStartIn | None = None):
    """`action` is start, pause, resume or cancel; 202 at once (the work happens in the workers), 409 if the
    campaign's state forbids it. `start` may say `{"send_at": ...}` to start later. Needs
    notifications.change_campaign."""
    if action not in CAMPAIGN_ACTIONS:
        raise Refused(404, f"unknown action {action!r}; use one of {', '.join(CAMPAIGN_ACTIONS)}")
    if not request.user.has_perm("notifications.change_campaign"):
        raise _forbidden("notifications.change_campaign")
    options = {}
    if payload is not None and payload.send_at is not None:
        if action != "start":
            raise Refused(400, "invalid request", {"send_at": "only `start` takes a send_at"})
        options["send_at"] = _moment(payload.send_at, "send_at")
    try:
        campaign = CAMPAIGN_ACTIONS[action](campaign_id=campaign_id, **options)
    except Campaign.DoesNotExist:
        raise Refused(404, f"no campaign {campaign_id}") from None
    except campaigns.CampaignStateError as exc:
        raise Refused(409, str(exc)) from None
    return Status(202, _campaign_json(request, campaign))


#: The interactive docs (Swagger UI from the package's own static files), for staff only.
docs = staff_member_required(lambda request: openapi_view(request, api=api))
