"""Web pages that trigger notifications: the password-reset form is the example of sending from a view."""

import json
import logging
import secrets
import time

from django import forms
from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from notifications import receipts
from notifications.models import Channel, Priority, Recipient
from notifications.services import notification_send
from notifications.throttles import client_ip, password_reset_wait
from notifications.unsubscribe import SALT as UNSUBSCRIBE_SALT
from notifications.unsubscribe import recipient_unsubscribe

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
            signing.loads(token, salt=UNSUBSCRIBE_SALT)
        except signing.BadSignature:
            return render(request, "notifications/unsubscribe.html", {"invalid": True}, status=400)
        return render(request, "notifications/unsubscribe.html", {"token": token})
    try:
        _, channel = recipient_unsubscribe(token=token)
    except (signing.BadSignature, Recipient.DoesNotExist):
        return render(request, "notifications/unsubscribe.html", {"invalid": True}, status=400)
    return render(request, "notifications/unsubscribe.html", {"done": True, "channel": channel})


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
