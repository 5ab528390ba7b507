from django.apps import AppConfig


class ResilienceConfig(AppConfig):
    """Circuit breakers, health checks, auto-healing and resilient calls."""

    name = "resilience"
    verbose_name = "Health and resilience"

    def ready(self) -> None:
        # Registers the tick step, the built-in health checks, heal actions and system checks.
        import resilience.retention  # noqa: F401  (which history may go: core.retention)
        from resilience import checks, dispatch, heal_actions, probes, prometheus  # noqa: F401
