from django.apps import AppConfig


class SyncConfig(AppConfig):
    """Fabric sync: desired state pulled from Git, one lease-guarded task per fabric."""

    name = "sync"
    verbose_name = "Fabric sync"

    def ready(self) -> None:
        from sync import dispatch  # noqa: F401  (registers the sync step of the tick)
