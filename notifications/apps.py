"""App config of the notification domain."""

from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # System checks, the dead-letter replayer, the provider's bounce webhook receiver, and the tasks
        # (registered in every process: they are published by name).
        from jobs.breaker import register_breaker_names
        from jobs.metrics import register_gauges
        from notifications import bounces, checks, receipts, recovery, tasks  # noqa: F401
        from notifications.providers.registry import provider_names
        from notifications.selectors import campaign_metrics

        register_gauges(campaign_metrics)
        register_breaker_names(provider_names)
