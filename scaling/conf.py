"""Tuning defaults of Docker service scaling (loaded into Django settings by ``project/settings.py``).

Decision defaults (tolerance, stabilisation, step limits) are per policy, in the
database; these are the process-wide limits around them.
"""

from core.conf import TICK_SECONDS
from core.env import env_int, env_list

# Stats calls take ~1 s each (the engine waits for a second CPU sample): run them in parallel.
SCALING_STATS_WORKERS = 32
# A metric older than two ticks is stale: it may vote to scale up, never down.
SCALING_METRIC_STALE_SECONDS = 2 * TICK_SECONDS
# Request durations: a rolling window of cache buckets in Redis, written by the middleware.
SCALING_RESPONSE_TIME_WINDOW = 60
SCALING_RESPONSE_TIME_BUCKET = 10
# Draining a Celery worker waits for its active tasks up to the workers' task soft time
# limit, and stopping it gives it at least that long before SIGKILL (docker-py
# overrides the container's StopTimeout). Default: this project's own workers' limit.
SCALING_WORKER_SOFT_TIME_LIMIT = env_int("SCALING_WORKER_SOFT_TIME_LIMIT", 240)
SCALING_DRAIN_POLL_SECONDS = 1.0
# One evaluation may drain and stop several workers: its limits cover that, and the
# per-service lock outlives the hard limit, so a lock only expires once its holder is dead.
# Order (checked by scaling.checks): drain < soft limit < hard limit < lock.
SCALING_TASK_SOFT_TIME_LIMIT = 2 * SCALING_WORKER_SOFT_TIME_LIMIT + TICK_SECONDS
SCALING_TASK_TIME_LIMIT = SCALING_TASK_SOFT_TIME_LIMIT + 30
SCALING_LOCK_SECONDS = SCALING_TASK_TIME_LIMIT + 30
# Stabilisation rows older than this are pruned (the window itself is per policy).
SCALING_RECOMMENDATION_RETENTION = 3600

# Deployment settings, not tuning: what the operator of this deployment allows a
# policy's container template to use, set from the environment per deployment and
# enforced by scaling.validators. The defaults allow nothing that is root on the host.
# Host paths (comma-separated, absolute) below which bind mounts are allowed; empty:
# no bind mounts at all, only named volumes.
SCALING_ALLOWED_BIND_ROOTS = env_list("SCALING_ALLOWED_BIND_ROOTS", "")
# Networks a template may join besides Docker's default bridge and "none" (e.g.
# "backend-net"; "host" or "container:<name>" only when listed here).
SCALING_ALLOWED_NETWORKS = env_list("SCALING_ALLOWED_NETWORKS", "")
