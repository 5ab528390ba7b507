from django.apps import AppConfig


class ScalingConfig(AppConfig):
    """Docker service scaling: policies, decisions every tick, and an audit trail of events."""

    name = "scaling"
    verbose_name = "Scaling"

    def ready(self) -> None:
        # The tick step, the publish-time header for queue latency, and system checks.
        import scaling.retention  # noqa: F401  (which events may go: core.retention)
        from scaling import checks, dispatch, prometheus, signals  # noqa: F401
