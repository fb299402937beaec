"""Root URLs: the admin, a health check, Prometheus metrics, the provider webhooks, and the notification domain."""

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path

from jobs.views import metrics
from notifications.operations import operations_data, operations_page


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


urlpatterns = [
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
