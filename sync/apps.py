from django.apps import AppConfig


class SyncConfig(AppConfig):
    """Fabric sync: desired state pulled from Git, one lease-guarded task per fabric."""

    name = "sync"
    verbose_name = "Fabric sync"

    def ready(self) -> None:
        # Registers the tick step, the health checks, the heal action and the retention rules of sync.
        import sync.retention  # noqa: F401  (which runs may go: core.retention)
        from sync import backoff_probe, credential_rotation, dispatch, health, prometheus  # noqa: F401
