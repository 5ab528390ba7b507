"""``manage.py drift <fabric> [--compare]``: the fabric's drift against its cluster, field by field.

Prints the drift the last sync stored (``--compare`` first runs a "Compare now" in
this process, under the fabric's lease): one line per differing field of a drifted
object (object, field, Git's value, the live value), and one per missing or
unmanaged object. Exit status, for scripts and monitors:

- 0: in sync;
- 1: out of sync;
- 2: unknown (never compared, the cluster unreachable or unreadable, no cluster).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from rich.table import Table
from rich.text import Text

from sync.live.describe import drift_summary, show_value
from sync.management.commands.sync import DRIFT_STYLES, console_for, sync_one
from sync.models import DriftedObject, DriftState, DriftStatus, Fabric, FabricCluster, SyncTrigger

EXIT_OUT_OF_SYNC = 1
EXIT_UNKNOWN = 2


class Command(BaseCommand):
    help = (
        "Print a fabric's drift against its Kubernetes cluster (object, field, Git, live). "
        "Exits 1 when out of sync, 2 when unknown."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("fabric", help="The fabric's name.")
        parser.add_argument(
            "--compare", action="store_true", help="Re-read the whole cluster and compare now (under the lease) first."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["fabric"]
        fabric = Fabric.objects.with_cluster().filter(name=name).first()
        if fabric is None:
            raise CommandError(f"Unknown fabric: {name}")
        out = console_for(self.stdout)
        if options["compare"]:
            worker = f"manage.py drift@{socket.gethostname()}:{os.getpid()}"
            row = sync_one(fabric, worker, trigger=SyncTrigger.COMPARE)
            if not row.ok:
                out.print(Text(f"compare {row.status}: {row.detail}", style="yellow"))
        cluster = FabricCluster.objects.defer("live_state").filter(fabric=fabric).first()
        if cluster is None:
            raise CommandError(f"fabric {name} has no cluster: nothing to compare", returncode=EXIT_UNKNOWN)

        summary = drift_summary(cluster.drift_status, cluster.drift_counts)
        compared = cluster.drift_compared_at.isoformat(timespec="seconds") if cluster.drift_compared_at else "never"
        heading = Text.assemble(
            (f"{fabric.name}: ", "bold"),
            (summary, DRIFT_STYLES.get(cluster.drift_status, "")),
            f"  (compared {compared}, {cluster.server_url}, {cluster.mode})",
        )
        out.print(heading)
        if cluster.last_error:
            out.print(Text(f"last error: {cluster.last_error}", style="yellow"))
        if cluster.prune_refused:
            out.print(Text(f"prune waiting: {cluster.prune_refused}", style="yellow"))
        rows = list(DriftedObject.objects.filter(fabric=fabric).order_by("kind", "namespace", "name"))
        if rows:
            out.print(self.table(rows))

        if cluster.drift_status == DriftStatus.OUT_OF_SYNC:
            raise CommandError(f"fabric {name} is out of sync with its cluster", returncode=EXIT_OUT_OF_SYNC)
        if cluster.drift_status != DriftStatus.IN_SYNC:
            raise CommandError(f"fabric {name}: drift unknown", returncode=EXIT_UNKNOWN)

    def table(self, rows: list[DriftedObject]) -> Table:
        table = Table(title=f"{len(rows)} object{'s' if len(rows) != 1 else ''} out of sync")
        table.add_column("object", style="bold", overflow="fold")
        table.add_column("state")
        table.add_column("field", overflow="fold")
        table.add_column("Git", overflow="fold")
        table.add_column("live", overflow="fold")
        for row in rows:
            where = f"{row.namespace}/" if row.namespace else ""
            label = f"{row.kind} {where}{row.name}"
            if row.state == DriftState.MISSING:
                table.add_row(Text(label), row.state, "-", "(the object)", "(absent)")
            elif row.state == DriftState.UNMANAGED:
                table.add_row(Text(label), row.state, "-", "(absent)", "(the object)")
            for index, diff in enumerate(row.diff):
                table.add_row(
                    Text(label if index == 0 else ""),
                    row.state if index == 0 else "",
                    Text(str(diff.get("path", ""))),
                    Text(show_value(diff.get("desired"))),
                    Text(show_value(diff.get("live"), bool(diff.get("live_absent")))),
                )
            if row.truncated:
                table.add_row("", "", Text(f"… {row.truncated} more field(s)"), "", "")
        return table
