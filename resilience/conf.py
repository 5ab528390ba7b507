"""Tuning defaults of health checks and auto-healing (loaded by ``project/settings.py``).

Where each default comes from (django-health-check, Kubernetes, systemd): docs/resilience.md.
"""

from core.conf import TICK_SECONDS
from core.env import env_float, env_int

# django-health-check's 5 s per check; 2 failures before UNHEALTHY and 2 successes
# before HEALTHY again (per check, in code), so one blip neither pages nor heals.
HEALTH_CHECK_TIMEOUT = env_float("HEALTH_CHECK_TIMEOUT", 5.0)
HEALTH_WORKER_PING_TIMEOUT = 1.0
HEALTH_BEAT_MAX_AGE = 3 * TICK_SECONDS  # three missed ticks
HEALTH_DISK_DEGRADED_PERCENT = env_float("HEALTH_DISK_DEGRADED_PERCENT", 10.0)
HEALTH_DISK_UNHEALTHY_PERCENT = env_float("HEALTH_DISK_UNHEALTHY_PERCENT", 5.0)
HEALTH_LEASE_GRACE_SECONDS = 3 * TICK_SECONDS
HEALTH_GIT_TIMEOUT = 10
HEALTH_MAX_GIT_SOURCES = 50
# A sweep's check tasks still queued when the next tick comes are stale: dropped.
HEALTH_SWEEP_EXPIRES_SECONDS = TICK_SECONDS - 5
HEALTH_TASK_SOFT_TIME_LIMIT = TICK_SECONDS * 3 // 4
# Components no check reported for a day (removed containers, deleted fabrics) are pruned.
HEALTH_PRUNE_AFTER_SECONDS = 24 * 3600

# Healing: after 3 failing sweeps; Kubernetes' backoff (10 s doubling to 5 min, reset
# after 10 healthy minutes); at most 5 attempts an hour, then "needs attention".
HEAL_AFTER_FAILURES = env_int("HEAL_AFTER_FAILURES", 3)
HEAL_BACKOFF_INITIAL_SECONDS = 10
HEAL_BACKOFF_MAX_SECONDS = 300
HEAL_RESET_AFTER_SECONDS = 600
HEAL_MAX_ATTEMPTS = env_int("HEAL_MAX_ATTEMPTS", 5)
HEAL_WINDOW_SECONDS = 3600
HEAL_LOCK_SECONDS = 120  # outlives one action; a dead healer's lock expires
HEAL_CONTAINER_STOP_TIMEOUT = 10
