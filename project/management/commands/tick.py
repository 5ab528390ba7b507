"""``manage.py tick``: run one master tick in this process and print its summary."""

import json
from typing import Any

from django.core.management.base import BaseCommand

from core.tick import run_tick


class Command(BaseCommand):
    help = "Run one master tick now (select, claim and dispatch due work) and print its summary."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(json.dumps(run_tick(), indent=2))
