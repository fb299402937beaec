from django.apps import AppConfig


class ChoresConfig(AppConfig):
    name = "tests.jobs.chores"
    label = "chores"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from jobs.breaker import register_breaker_names
        from tests.jobs.chores import tasks  # noqa: F401  (the task and its replayer, in every process)

        register_breaker_names(tasks.breaker_names)
