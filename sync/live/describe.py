"""How drift reads to operators, one wording for the commands (and the admin)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sync.live.drift import DRIFTED, MISSING, UNMANAGED

STATUS_WORDS = {"in_sync": "in sync", "out_of_sync": "out of sync", "unknown": "unknown"}


def drift_summary(status: str, counts: Mapping[str, Any] | None) -> str:
    """``"in sync"``, ``"out of sync (1 drifted, 2 missing)"``, ``"unknown"``; ``"-"`` without a status."""
    if not status:
        return "-"
    words = STATUS_WORDS.get(status, status)
    if status != "out_of_sync":
        return words
    parts = [f"{int((counts or {}).get(state, 0))} {state}" for state in (DRIFTED, MISSING, UNMANAGED)]
    shown = [p for p in parts if not p.startswith("0 ")]
    return f"{words} ({', '.join(shown)})" if shown else words


def show_value(value: Any, absent: bool = False, limit: int = 200) -> str:
    """A diff value as one line of JSON text; ``(absent)`` when the field is not there."""
    if absent:
        return "(absent)"
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"
