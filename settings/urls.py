"""Root URLs: the admin, a health check, the provider webhooks, and the notification domain."""

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz),
    # The e-mail provider's tracking webhook (bounces, complaints): /anymail/postmark/tracking/,
    # protected by ANYMAIL["WEBHOOK_SECRET"] (basic auth in the webhook URL).
    path("anymail/", include("anymail.urls")),
    path("", include("notifications.urls")),
]
