"""App config of the job runtime."""

from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Job runtime"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The system checks; the runtime's tasks, registered in every process (web too), since they are
        # published by name and a replay asks whether a task of that name exists.
        from jobs import checks, tasks  # noqa: F401
        from jobs.durable import job_definitions

        # Every app's `tasks` module, where durable jobs are declared: a web process replays their dead
        # letters and must know them as a worker does.
        job_definitions()
