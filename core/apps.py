from django.apps import AppConfig


class CoreConfig(AppConfig):
    """The platform core every feature app builds on: registries, clients, breakers, redaction."""

    name = "core"
    verbose_name = "Platform core"
