from django.apps import AppConfig


class ProjectConfig(AppConfig):
    """Project-level app: the master tick, its management command and system checks."""

    name = "project"
    verbose_name = "Control plane"

    def ready(self) -> None:
        from project import checks, prometheus, schedule  # noqa: F401  (registers checks, signals, metrics)
