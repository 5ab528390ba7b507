"""Tuning of history retention (``core/retention.py``), loaded by ``project/settings.py``.

What is history: sync runs, scaling events and recommendations, health transitions and
healing attempts. The rules each app applies are in its ``retention.py``; the policy is
described in docs/architecture.md ("History retention").
"""

from core.conf import TICK_SECONDS
from core.env import env_bool, env_float, env_int

RETENTION_ENABLED = env_bool("RETENTION_ENABLED", True)
# Failures, runs and events that changed something, health transitions and healing
# attempts are kept this long (the latest of each fabric, service or component longer).
RETENTION_DAYS = env_int("RETENTION_DAYS", 30)
# Routine records are kept by count instead: the newest K unchanged (or skipped) runs of
# each fabric, and the newest K "no change" decisions of each scaling service, whatever
# their age. 60 runs: the hour /metrics reads durations from for a 60 s fabric (the
# shortest interval; sync.W001 warns below it), five hours of a 300 s one. 1,440
# decisions: a day of ticks.
RETENTION_UNCHANGED_PER_FABRIC = env_int("RETENTION_UNCHANGED_PER_FABRIC", 60)
RETENTION_NO_CHANGE_PER_SERVICE = env_int("RETENTION_NO_CHANGE_PER_SERVICE", 1440)

# How often the tick prunes; it prunes again at the next tick while it has a backlog.
RETENTION_INTERVAL_SECONDS = env_int("RETENTION_INTERVAL_SECONDS", 3600)
# Rows per DELETE statement, rows per tick, and the time a tick may spend pruning (checked
# between statements): the tick's own soft time limit is TICK_SECONDS - 10.
RETENTION_BATCH_SIZE = env_int("RETENTION_BATCH_SIZE", 5000)
RETENTION_MAX_ROWS_PER_TICK = env_int("RETENTION_MAX_ROWS_PER_TICK", 100_000)
RETENTION_TIME_BUDGET_SECONDS = env_float("RETENTION_TIME_BUDGET_SECONDS", TICK_SECONDS / 4)
