"""URLs of the notification domain: the API under /api/v1/ and the pages that trigger notifications."""

from django.urls import path

from notifications import api, views

urlpatterns = [
    path("api/v1/notifications", api.notifications_create, name="api-notifications"),
    path("api/v1/notifications/<str:notification_id>", api.notifications_detail, name="api-notification-detail"),
    path("api/v1/campaigns", api.campaigns_create, name="api-campaigns"),
    path("api/v1/campaigns/<int:campaign_id>", api.campaigns_detail, name="api-campaign-detail"),
    path("api/v1/campaigns/<int:campaign_id>/<str:action>", api.campaigns_action, name="api-campaign-action"),
    path("password-reset/", views.password_reset, name="password-reset"),
    path("unsubscribe/<str:token>", views.unsubscribe, name="unsubscribe"),
    path("", views.index, name="index"),
]
