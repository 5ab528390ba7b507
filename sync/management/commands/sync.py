"""``manage.py sync <name>... | --all``: sync fabrics now, in this process.

Each fabric goes through the same lease as a scheduled sync (``claim_one`` then
``begin``), so a manual sync never runs beside a worker's sync of the same fabric:
a fabric whose lease is held is reported as busy. Every attempt is recorded as a
``SyncRun`` with trigger "manual". The exit code is non-zero if any fabric failed
or was busy, so scripts and cron jobs can rely on it. The drift column shows a
fabric's drift against its cluster after the sync ("-" without a cluster); drift does
not change the exit code (``manage.py drift`` does that).
"""

from __future__ import annotations

import io
import os
import socket
import time
from dataclasses import dataclass
from typing import IO, Any, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.utils import timezone
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from core.redaction import redact
from sync import leases
from sync.errors import SyncError
from sync.live.describe import drift_summary
from sync.models import Fabric, SyncTrigger
from sync.runner import run_sync
from sync.sources.git import RemoteUnavailable

BUSY = "busy"
FAILED = "failed"
SKIPPED = "skipped"
STATUS_STYLES = {"success": "green", "unchanged": "green", FAILED: "bold red", BUSY: "yellow", SKIPPED: "yellow"}
DRIFT_STYLES = {"in_sync": "green", "out_of_sync": "bold yellow", "unknown": "yellow"}


@dataclass(frozen=True)
class Row:
    """One line of the final table."""

    fabric: str
    status: str
    commit: str = ""
    resources: int | None = None
    duration_ms: int | None = None
    detail: str = ""
    drift: str = ""  # a DriftStatus value; empty without a cluster (or without a result)
    drift_counts: dict[str, int] | None = None

    @property
    def ok(self) -> bool:
        # A skip (the remote's breaker is open) is not a success either: the exit
        # status tells scripts that the fabric was not synced.
        return self.status not in (FAILED, BUSY, SKIPPED)


def sync_one(fabric: Fabric, worker: str, trigger: SyncTrigger = SyncTrigger.MANUAL) -> Row:
    """Claim, begin and run one sync; never raises for a failure of the fabric itself.

    1. ``claim_one``: None means a sync is queued or running elsewhere (busy).
    2. ``begin`` moves the claim to SYNCING with the full sync lease.
    3. ``run_sync`` records the run and the outcome on the fabric; its failures are
       already recorded (and redacted) when it raises.
    """
    token = leases.claim_one(fabric.id, timezone.now())
    if token is None:
        return Row(fabric.name, BUSY, detail="a sync is already queued or running")
    started = time.monotonic()
    try:
        begun = leases.begin(fabric.id, token, timezone.now(), worker)
        if begun.outcome is not leases.BeginOutcome.STARTED:
            leases.release([fabric.id], token)
            return Row(fabric.name, BUSY, detail=f"lease {begun.outcome.value}")
        result = run_sync(fabric.id, token, trigger=trigger.value, worker=worker)
    except RemoteUnavailable as exc:  # the remote's breaker is open: not the fabric's failure
        return Row(fabric.name, SKIPPED, duration_ms=_ms_since(started), detail=str(exc))
    except SyncError as exc:
        return Row(fabric.name, FAILED, duration_ms=_ms_since(started), detail=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # e.g. the database went away: report it, go on with the rest
        leases.release([fabric.id], token)  # only frees a claim that never started
        return Row(fabric.name, FAILED, detail=redact(f"{type(exc).__name__}: {exc}"))
    detail = f"live state: {result.live_error}" if result.live_error else ""
    return Row(
        fabric.name,
        result.status,
        result.commit[:10],
        result.resources,
        result.duration_ms,
        detail,
        result.drift,
        result.drift_counts,
    )


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _unstyled(text: str) -> str:
    return text


class RawStream(io.TextIOBase):
    """A command's stdout/stderr for rich: Django would otherwise append a newline
    to every chunk (breaking the progress bar) and colour stderr red."""

    def __init__(self, wrapper: OutputWrapper) -> None:
        self._wrapper = wrapper

    def write(self, text: str) -> int:
        self._wrapper.write(text, style_func=_unstyled, ending="")
        return len(text)

    def flush(self) -> None:
        self._wrapper.flush()

    def isatty(self) -> bool:
        return self._wrapper.isatty()


def console_for(wrapper: OutputWrapper) -> Console:
    stream = RawStream(wrapper)
    # Wide enough for the table when writing to a file or a pipe (rich assumes 80).
    return Console(file=cast(IO[str], stream), width=None if stream.isatty() else 120)


class Command(BaseCommand):
    help = (
        "Sync the named fabrics now, in this process, with a progress bar and a summary table. "
        "--all syncs every fabric whose sync is enabled. Exits non-zero if any sync failed or was busy."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", metavar="name", help="Fabric names (a disabled fabric still syncs).")
        parser.add_argument("--all", action="store_true", help="Sync every fabric whose sync is enabled.")

    def handle(self, *args: Any, **options: Any) -> None:
        fabrics = self.select(options["names"], options["all"])
        # The progress bar goes to stderr, so piping stdout captures just the table.
        rows = self.run_all(fabrics, console_for(self.stderr))
        console_for(self.stdout).print(self.table(rows))
        failed = [row for row in rows if not row.ok]
        if failed:
            raise CommandError(f"{len(failed)} of {len(rows)} syncs failed: {', '.join(r.fabric for r in failed)}")

    def select(self, names: list[str], everything: bool) -> list[Fabric]:
        if everything == bool(names):
            raise CommandError("Name one or more fabrics, or pass --all (not both).")
        if everything:
            return list(Fabric.objects.filter(sync_enabled=True).order_by("name"))
        found = {fabric.name: fabric for fabric in Fabric.objects.filter(name__in=names)}
        unknown = sorted(set(names) - set(found))
        if unknown:
            raise CommandError(f"Unknown fabric{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
        return [found[name] for name in dict.fromkeys(names)]  # command-line order, once each

    def run_all(self, fabrics: list[Fabric], console: Console) -> list[Row]:
        worker = f"manage.py sync@{socket.gethostname()}:{os.getpid()}"
        rows = []
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as progress:
            task = progress.add_task("syncing", total=len(fabrics))
            for fabric in fabrics:
                progress.update(task, description=f"syncing [bold]{escape(fabric.name)}[/]")
                rows.append(sync_one(fabric, worker))
                progress.advance(task)
        return rows

    def table(self, rows: list[Row]) -> Table:
        table = Table(title=f"{len(rows)} fabric sync{'s' if len(rows) != 1 else ''}")
        table.add_column("fabric", style="bold")
        table.add_column("status")
        table.add_column("commit")
        table.add_column("resources", justify="right")
        table.add_column("duration", justify="right")
        table.add_column("drift")
        table.add_column("detail", overflow="fold")
        for row in rows:
            # Text(), not markup: names and error messages may contain "[...]".
            table.add_row(
                Text(row.fabric),
                Text(row.status, style=STATUS_STYLES.get(row.status, "")),
                row.commit or "-",
                "-" if row.resources is None else str(row.resources),
                "-" if row.duration_ms is None else f"{row.duration_ms / 1000:.2f} s",
                Text(drift_summary(row.drift, row.drift_counts), style=DRIFT_STYLES.get(row.drift, "")),
                Text(row.detail),
            )
        return table
