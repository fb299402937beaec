from django.apps import AppConfig


class HarnessConfig(AppConfig):
    name = "harness"
    verbose_name = "Proving harness (sandbox, drills, benchmarks)"
