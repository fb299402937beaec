"""Web pages that trigger notifications: the password-reset form is the example of sending from a view."""

import logging
import secrets

from django import forms
from django.core import signing
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

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
