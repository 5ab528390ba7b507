from django.apps import AppConfig


class CoreConfig(AppConfig):
    """The platform core every feature app builds on: registries, clients, breakers, redaction."""

    name = "core"
    verbose_name = "Platform core"

    def ready(self) -> None:
        # Registers the system checks of the credential keys and the retention tick step.
        from core import checks, retention  # noqa: F401
