"""URLs of the notification domain: the API under /api/v1/ and the pages that trigger notifications."""

from django.urls import path

from notifications import api, views

urlpatterns = [
    path("api/v1/notifications", api.notifications_create, name="api-notifications"),
    path("api/v1/notifications/<str:notification_id>", api.notifications_detail, name="api-notification-detail"),
    path("password-reset/", views.password_reset, name="password-reset"),
    path("unsubscribe/<str:token>", views.unsubscribe, name="unsubscribe"),
    path("", views.index, name="index"),
]
