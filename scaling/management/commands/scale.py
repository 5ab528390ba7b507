"""``manage.py scale status`` (a table) and ``manage.py scale <service> --to N`` (manual scaling)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from scaling.models import ScalingPolicy
from scaling.service import AutoScalingService

COLUMNS = ["service", "enabled", "dry run", "instances", "min-max", "targets", "cooldown", "last decision"]


class Command(BaseCommand):
    help = (
        "Show scaling status, or scale a service by hand: `scale status`, `scale worker --to 3`. "
        "Manual scaling is recorded as an event and still respects min/max and container ownership."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("target", help="`status`, or the service to scale")
        parser.add_argument("--to", type=int, dest="count", help="instances to scale the service to")
        parser.add_argument("--dry-run", action="store_true", help="record the decision without acting")
        parser.add_argument("--json", action="store_true", help="status as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        service = AutoScalingService()
        if options["target"] == "status":
            self._status(service, as_json=options["json"])
            return
        if options["count"] is None:
            raise CommandError("say how many instances: scale <service> --to N")
        if options["count"] < 0:
            raise CommandError("--to must be 0 or more")
        try:
            event = service.scale_to(options["target"], options["count"], dry_run=options["dry_run"])
        except ScalingPolicy.DoesNotExist:
            names = ", ".join(ScalingPolicy.objects.values_list("service", flat=True)) or "none"
            raise CommandError(f"no scaling policy for {options['target']!r} (policies: {names})") from None
        if event is None:
            raise CommandError(f"{options['target']} is being scaled right now (its lock is held); try again")
        line = f"{event.service}: {event.action} {event.from_instances} → {event.to_instances} ({event.rule})"
        if event.dry_run:
            line += " [dry run]"
        if not event.success:
            raise CommandError(f"{line} failed: {event.error}")
        self.stdout.write(line)

    def _status(self, service: AutoScalingService, as_json: bool) -> None:
        status = service.get_current_status()
        if as_json:
            self.stdout.write(json.dumps(status, indent=2, default=str))
            return
        if not status["engine"]["reachable"]:
            self.stdout.write(self.style.WARNING(f"Docker engine unreachable: {status['engine']['error']}"))
        rows = [COLUMNS]
        for entry in status["services"]:
            last = entry["last_event"]
            rows.append(
                [
                    entry["service"],
                    "yes" if entry["enabled"] else "no",
                    "yes" if entry["dry_run"] else "no",
                    "?" if entry["instances"] is None else str(entry["instances"]),
                    f"{entry['min_instances']}-{entry['max_instances']}",
                    ", ".join(f"{k} {v:g}" for k, v in entry["thresholds"].items()) or "none",
                    f"{entry['cooldown_remaining']:.0f} s" if entry["cooldown_remaining"] else "-",
                    f"{last['action']} {last['from']}→{last['to']} by {last['rule']}" if last else "never",
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
        for number, row in enumerate(rows):
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
            if number == 0:
                self.stdout.write("  ".join("-" * width for width in widths))
