"""URLs of the notification domain: the API under /api/v1/ and the pages that trigger notifications."""

from django.urls import path

from notifications import api, views

urlpatterns = [
    path("api/v1/docs", api.docs, name="api-docs"),
    path("api/v1/", api.api.urls),
    path("password-reset/", views.password_reset, name="password-reset"),
    # The providers' delivery receipts (e-mail's come through anymail: /anymail/postmark/tracking/).
    path("receipts/twilio", views.twilio_status, name="receipts-twilio"),
    path("receipts/vonage", views.vonage_receipt, name="receipts-vonage"),
    path("unsubscribe/<str:token>", views.unsubscribe, name="unsubscribe"),
    path("preferences/<str:token>", views.preferences, name="preferences"),
    path("", views.index, name="index"),
]
