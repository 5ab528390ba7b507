"""``manage.py health``: run the health checks now, print a table, exit 1 when UNHEALTHY."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from core.health import HealthStatus
from resilience.verdict import get_system_health

STYLE = {
    HealthStatus.HEALTHY: "SUCCESS",
    HealthStatus.DEGRADED: "WARNING",
    HealthStatus.UNHEALTHY: "ERROR",
    HealthStatus.UNKNOWN: "NOTICE",
}


class Command(BaseCommand):
    help = "Run the health checks now; print a table (or JSON); exit 1 when the system is UNHEALTHY."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the same JSON as /health/")
        parser.add_argument("--check", action="append", dest="checks", help="run only this check (repeatable)")

    def handle(self, *args: Any, **options: Any) -> None:
        health = get_system_health(options["checks"])
        if options["json"]:
            self.stdout.write(json.dumps(health.as_dict(), indent=2))
        else:
            rows = [
                (
                    c.component,
                    str(c.component_type),
                    str(c.status),
                    "yes" if c.critical else "",
                    f"{c.latency_ms:.0f}",
                    c.message,
                )
                for c in sorted(health.components, key=lambda c: c.component)
            ]
            header = ("COMPONENT", "TYPE", "STATUS", "CRITICAL", "MS", "MESSAGE")
            widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
            line = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
            self.stdout.write(line.format(*header))
            for row in rows:
                style = getattr(self.style, STYLE[HealthStatus(row[2])])
                self.stdout.write(style(line.format(*row)))
            overall = health.overall_status
            self.stdout.write(getattr(self.style, STYLE[overall])(f"\noverall: {overall}"))
        if health.overall_status == HealthStatus.UNHEALTHY:
            raise SystemExit(1)
