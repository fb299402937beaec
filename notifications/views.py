"""Web pages: the password-reset form (the example of sending from a view), the recipients' own pages reached by
signed links (one-click unsubscribe, the preference centre) and the providers' delivery receipts."""

import json
import logging
import secrets
import time
import zoneinfo
from functools import cache

from django import forms
from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.clickjacking import xframe_options_deny
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods

from jobs.masking import mask_text
from notifications import receipts
from notifications.consent import own_quiet_hours
from notifications.models import MARKETING_CONSENT_FIELDS, Channel, Priority, Recipient
from notifications.services import notification_send
from notifications.throttles import client_ip, password_reset_wait
from notifications.unsubscribe import (
    preferences_recipient,
    recipient_preferences_update,
    recipient_topics,
    recipient_unsubscribe,
    unsubscribe_read,
)

logger = logging.getLogger(__name__)


class PasswordResetForm(forms.Form):
    email = forms.EmailField(label="E-mail address", max_length=254)


def password_reset(request: HttpRequest) -> HttpResponse:
    """Send a one-time code to the address entered, as a security notification.

    The answer is the same page whether a code went out or the request was throttled (per address
    and per client IP, notifications/throttles.py), so it tells nobody whether an account exists,
    and a flood of it costs one Redis call per request, no row and no message.
    """
    if request.method == "POST":
        form = PasswordResetForm(request.POST)
        if form.is_valid():
            email = form.cleaned_data["email"]
            wait = password_reset_wait(address=email, ip=client_ip(request))
            if wait > 0:
                logger.info("password reset throttled for %.0fs", wait)
            else:
                try:
                    notification_send(
                        priority=Priority.SECURITY,
                        channel=Channel.EMAIL,
                        template="password_reset",
                        context={"code": f"{secrets.randbelow(10**6):06d}"},
                        to=email,
                        created_by=request.user if request.user.is_authenticated else None,
                    )
                except ValidationError as exc:
                    form.add_error("email", " ".join(exc.message_dict.get("to", exc.messages)))
            if form.is_valid():
                return render(request, "notifications/password_reset_done.html", {"email": email}, status=200)
        return render(request, "notifications/password_reset.html", {"form": form}, status=400)
    return render(request, "notifications/password_reset.html", {"form": PasswordResetForm()})


@csrf_exempt  # RFC 8058: mail clients POST "List-Unsubscribe=One-Click" with no page and no cookie
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    """GET asks (link scanners prefetch GETs, so GET changes nothing); POST unsubscribes."""
    if request.method == "GET":
        try:
            unsubscribe_read(token=token)
        except signing.BadSignature:
            return render(request, "notifications/unsubscribe.html", {"invalid": True}, status=400)
        return render(request, "notifications/unsubscribe.html", {"token": token})
    try:
        _, channel = recipient_unsubscribe(token=token)
    except (signing.BadSignature, Recipient.DoesNotExist):
        return render(request, "notifications/unsubscribe.html", {"invalid": True}, status=400)
    return render(request, "notifications/unsubscribe.html", {"done": True, "channel": channel})


@cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


class PreferencesForm(forms.Form):
    """A recipient's marketing preferences; a ticked topic is one they hear about, an unticked one is muted."""

    email = forms.BooleanField(label="E-mail", required=False)
    sms = forms.BooleanField(label="SMS", required=False)
    push = forms.BooleanField(label="Push notifications", required=False)
    topics = forms.MultipleChoiceField(label="Topics", required=False, widget=forms.CheckboxSelectMultiple)
    quiet_hours = forms.CharField(label="Quiet hours", required=False, max_length=20)
    timezone = forms.CharField(label="Time zone", max_length=64, help_text="Like Europe/Berlin or America/New_York.")

    def __init__(self, *args, topics: list[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["topics"].choices = [(topic, topic) for topic in topics]
        self.fields["quiet_hours"].help_text = (
            "No marketing between these hours of your day, like 21-8 (21:00 to 08:00); “none” for no quiet hours; "
            f"empty for ours ({settings.MARKETING_QUIET_HOURS or 'none'})."
        )

    def channel_fields(self) -> list[forms.BoundField]:
        return [self[channel] for channel in MARKETING_CONSENT_FIELDS]

    def clean_quiet_hours(self) -> str:
        try:
            return own_quiet_hours(self.cleaned_data["quiet_hours"])
        except ValueError as exc:
            raise ValidationError(str(exc)) from None

    def clean_timezone(self) -> str:
        name = self.cleaned_data["timezone"].strip()
        if name not in _time_zones():
            raise ValidationError(f"Unknown time zone {name!r}: use a name like Europe/Berlin or America/New_York.")
        return name


def _preferences_initial(recipient: Recipient) -> dict:
    initial = {channel: getattr(recipient, field) for channel, field in MARKETING_CONSENT_FIELDS.items()}
    initial.update(
        topics=[topic for topic in recipient_topics(recipient) if topic not in recipient.muted_topics],
        quiet_hours=recipient.quiet_hours,
        timezone=recipient.timezone,
    )
    return initial


def _preferences_page(request: HttpRequest, context: dict, status: int = 200) -> HttpResponse:
    response = render(request, "notifications/preferences.html", context, status=status)
    # The link is the key to the page: no referrer carries it to another site, no frame shows the page
    # (X-Frame-Options too), and the page neither loads nor posts anywhere else.  Not "no-referrer": browsers
    # then post the form with "Origin: null", which the CSRF check refuses.
    response["Referrer-Policy"] = "same-origin"
    response["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    return response


@never_cache
@xframe_options_deny
@csrf_protect
@require_http_methods(["GET", "POST"])
def preferences(request: HttpRequest, token: str) -> HttpResponse:
    """A recipient's own preference centre, reached by the signed link at the foot of their marketing e-mail.

    GET shows their choices and changes nothing (link scanners prefetch GETs); POST (with a CSRF token)
    stores them, or shows the page again with each field's error and stores nothing.
    """
    try:
        recipient = preferences_recipient(token=token)
    except signing.BadSignature:
        return _preferences_page(request, {"invalid": True}, status=400)
    except Recipient.DoesNotExist:
        return _preferences_page(request, {"invalid": True}, status=404)
    topics = recipient_topics(recipient)
    shown = {"address": mask_text(str(recipient)), "saved": request.GET.get("saved") == "1"}
    if request.method == "GET":
        form = PreferencesForm(initial=_preferences_initial(recipient), topics=topics)
        return _preferences_page(request, {"form": form, **shown})
    form = PreferencesForm(request.POST, topics=topics)
    if not form.is_valid():
        return _preferences_page(request, {"form": form, **shown, "saved": False}, status=400)
    data = form.cleaned_data
    recipient_preferences_update(
        recipient_id=recipient.pk,
        consent={channel: data[channel] for channel in MARKETING_CONSENT_FIELDS},
        muted_topics=[topic for topic in topics if topic not in data["topics"]],
        quiet_hours=data["quiet_hours"],
        timezone=data["timezone"],
    )
    logger.info("recipient %s changed their preferences", recipient.pk)
    # Post/redirect/get: a reload shows the page, it does not post again.
    return redirect(f"{request.path}?saved=1", permanent=False)


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "notifications/index.html")


# --- providers' delivery receipts (notifications/receipts.py) --------------------------------------


def _provider_option(name: str, option: str) -> str:
    """An option of the provider configured under `name` (its credentials verify its callbacks)."""
    for providers in settings.NOTIFICATIONS_PROVIDERS.values():
        for provider in providers:
            if provider["name"] == name:
                return str(provider.get("options", {}).get(option, ""))
    return ""


@csrf_exempt
@require_http_methods(["POST"])
def twilio_status(request: HttpRequest, provider: str = "twilio") -> HttpResponse:
    """Twilio's status callback: form parameters signed with the account's auth token (X-Twilio-Signature).
    A bad signature is a 403 and changes nothing; a repeated callback is stored once."""
    params = {name: request.POST[name] for name in request.POST}
    token = _provider_option(provider, "auth_token")
    expected = receipts.twilio_signature(token, request.build_absolute_uri(), params) if token else ""
    if not expected or not receipts.signature_matches(expected, request.headers.get("X-Twilio-Signature", "")):
        logger.warning("twilio status callback refused: bad or missing X-Twilio-Signature")
        return HttpResponse("bad signature", status=403, content_type="text/plain")
    receipt = receipts.receipt_from_twilio(params, provider)
    if receipt is not None:
        receipts.receipts_record([receipt])
        receipts.sms_suppress_if_unreachable(receipt, to=params.get("To", ""))
    return HttpResponse(status=204)


@csrf_exempt
@require_http_methods(["GET", "POST"])
def vonage_receipt(request: HttpRequest, provider: str = "vonage") -> HttpResponse:
    """Vonage's delivery receipt (GET or POST, form or JSON), signed with the signature secret (`sig`,
    HMAC-SHA256) and its `timestamp` within five minutes."""
    if request.method == "GET":
        params = {name: request.GET[name] for name in request.GET}
    elif request.content_type == "application/json":
        try:
            body = json.loads(request.body)
        except ValueError:
            return HttpResponse("body: not JSON", status=400, content_type="text/plain")
        if not isinstance(body, dict):
            return HttpResponse("body: not a JSON object", status=400, content_type="text/plain")
        params = {str(k): str(v) for k, v in body.items()}
    else:
        params = {name: request.POST[name] for name in request.POST}
    secret = settings.VONAGE_SIGNATURE_SECRET
    expected = receipts.vonage_signature(secret, params) if secret else ""
    if not expected or not receipts.signature_matches(expected, params.get("sig", "").upper()):
        logger.warning("vonage delivery receipt refused: bad or missing sig")
        return HttpResponse("bad signature", status=403, content_type="text/plain")
    try:
        skew = abs(time.time() - int(params.get("timestamp", "")))
    except ValueError:
        skew = None
    if skew is None or skew > 300:
        return HttpResponse("timestamp: missing or more than 5 minutes off", status=403, content_type="text/plain")
    receipt = receipts.receipt_from_vonage(params, provider)
    if receipt is not None:
        receipts.receipts_record([receipt])
    return HttpResponse(status=204)
