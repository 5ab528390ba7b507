from django.apps import AppConfig


class SyncConfig(AppConfig):
    """Fabric sync: desired state pulled from Git, one lease-guarded task per fabric."""

    name = "sync"
    verbose_name = "Fabric sync"

    def ready(self) -> None:
        # Registers the tick step, the health checks and the heal action of sync.
        from sync import backoff_probe, credential_rotation, dispatch, health, prometheus  # noqa: F401
