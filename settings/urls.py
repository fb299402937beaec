"""Root URLs: the admin, a health check, Prometheus metrics, the provider webhooks, and the notification domain."""

import math

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import include, path

from jobs.views import metrics
from notifications.operations import operations_data, operations_page
from notifications.throttles import admin_login_wait, client_ip


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def admin_login(request: HttpRequest, **kwargs) -> HttpResponse:
    """The admin's log-in, throttled per name and per client IP before the password is even checked."""
    if request.method == "POST":
        wait = admin_login_wait(username=request.POST.get("username", ""), ip=client_ip(request))
        if wait > 0:
            seconds = math.ceil(wait)
            response = render(request, "admin/login_throttled.html", {"seconds": seconds}, status=429)
            response["Retry-After"] = str(seconds)
            return response
    return admin.site.login(request, **kwargs)


urlpatterns = [
    path("admin/login/", admin_login, name="admin-login"),
    # Before the admin's own URLs, whose catch-all would answer these with a 404.
    path("admin/operations/", operations_page, name="admin-operations"),
    path("admin/operations/data", operations_data, name="admin-operations-data"),
    path("admin/", admin.site.urls),
    path("healthz", healthz),
    # Prometheus scrapes this with METRICS_BASIC_AUTH.
    path("metrics", metrics, name="metrics"),
    # The e-mail provider's tracking webhook (bounces, complaints): /anymail/postmark/tracking/,
    # protected by ANYMAIL["WEBHOOK_SECRET"] (basic auth in the webhook URL).
    path("anymail/", include("anymail.urls")),
    path("", include("notifications.urls")),
]
