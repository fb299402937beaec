"""Web pages that trigger notifications: the password-reset form is the example of sending from a view."""

import secrets

from django import forms
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from notifications.models import Channel, Priority
from notifications.services import notification_send


class PasswordResetForm(forms.Form):
    email = forms.EmailField(label="E-mail address", max_length=254)


def password_reset(request: HttpRequest) -> HttpResponse:
    """Send a one-time code to the address entered, as a security notification."""
    if request.method == "POST":
        form = PasswordResetForm(request.POST)
        if form.is_valid():
            code = f"{secrets.randbelow(10**6):06d}"
            notification, _ = notification_send(
                priority=Priority.SECURITY,
                channel=Channel.EMAIL,
                template="password_reset",
                context={"code": code},
                to=form.cleaned_data["email"],
                created_by=request.user if request.user.is_authenticated else None,
            )
            return render(
                request,
                "notifications/password_reset_done.html",
                {"email": form.cleaned_data["email"], "notification": notification},
                status=200,
            )
        return render(request, "notifications/password_reset.html", {"form": form}, status=400)
    return render(request, "notifications/password_reset.html", {"form": PasswordResetForm()})


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "notifications/index.html")
