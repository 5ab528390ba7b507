from django.apps import AppConfig


class ResilienceConfig(AppConfig):
    """Circuit breakers, health checks, auto-healing and resilient calls."""

    name = "resilience"
    verbose_name = "Health and resilience"

    def ready(self) -> None:
        # Registers the health step of the tick, the built-in checks and heal actions.
        from resilience import dispatch, heal_actions, probes  # noqa: F401
