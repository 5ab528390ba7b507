"""Tuning defaults of fabric sync (loaded into Django settings by ``project/settings.py``).

Ordering that must hold (checked at start-up by ``project.checks``):
soft time limit < hard time limit < lease < Redis visibility timeout. The soft limit
lets a sync record its own timeout; the hard limit kills a stuck process; the lease
outlives the hard limit, so a lease only expires once its holder is certainly dead;
the visibility timeout outlives the lease, so Redis never redelivers a message whose
sync may still be running.
"""

from core.env import env_bool, env_int, env_str

SYNC_SOFT_TIME_LIMIT = env_int("SYNC_SOFT_TIME_LIMIT", 240)
SYNC_HARD_TIME_LIMIT = env_int("SYNC_HARD_TIME_LIMIT", 300)
SYNC_LEASE_SECONDS = env_int("SYNC_LEASE_SECONDS", 360)
# How long a claimed fabric waits for a worker to pick its message up before the claim
# is released and a later tick may dispatch it again (the stale message is then dropped).
SYNC_QUEUE_LEASE_SECONDS = env_int("SYNC_QUEUE_LEASE_SECONDS", 900)
# A claim QUEUED this long whose message the broker no longer holds (lost to a cut-off
# worker host, or reserved by a worker that lost it) is released by the next tick
# (sync.broker_inventory) instead of waiting out the queue lease. Longer than a
# worker takes from receiving a message to beginning it.
SYNC_STRANDED_AFTER_SECONDS = env_int("SYNC_STRANDED_AFTER_SECONDS", 60)
# How often fabrics in failure backoff have their remote asked for a new commit, which
# cuts the backoff short (sync.backoff_probe); 0 turns it off.
SYNC_BACKOFF_PROBE_SECONDS = env_int("SYNC_BACKOFF_PROBE_SECONDS", 60)
# The Celery queue every sync task is routed to.
SYNC_QUEUE = "sync"

SYNC_MAX_RETRIES = env_int("SYNC_MAX_RETRIES", 3)  # transient failures, within one due sync
SYNC_RETRY_BACKOFF_MAX = env_int("SYNC_RETRY_BACKOFF_MAX", 600)
SYNC_MAX_DELIVERIES = 3  # poison-message guard: deliveries whose worker died mid-sync
SYNC_FAILURE_BACKOFF_MAX = env_int("SYNC_FAILURE_BACKOFF_MAX", 3600)
SYNC_SUSPEND_AFTER_FAILURES = env_int("SYNC_SUSPEND_AFTER_FAILURES", 10)
SYNC_MAX_MANIFEST_BYTES = env_int("SYNC_MAX_MANIFEST_BYTES", 1024 * 1024)
SYNC_MAX_MANIFESTS = env_int("SYNC_MAX_MANIFESTS", 20000)
SYNC_GIT_TIMEOUT = env_int("SYNC_GIT_TIMEOUT", 120)
# How long one `git ls-remote` answer serves the other fabrics of the same claim (a tick)
# on the same repository, branch and credential (sync/remote_check.py); 0: every fabric asks.
SYNC_REMOTE_CHECK_SECONDS = env_int("SYNC_REMOTE_CHECK_SECONDS", 5)
# PostgreSQL: a sync's progress markers (begin, the RUNNING run) commit without waiting
# for the WAL flush; its outcome always waits (sync/progress_commit.py says what a server
# crash can then lose).
SYNC_ASYNC_PROGRESS_COMMIT = env_bool("SYNC_ASYNC_PROGRESS_COMMIT", True)
# Fabrics per fan-out message: the tick publishes one message per chunk and a worker
# expands it into one task per fabric, so the tick stays fast at 10,000 fabrics.
SYNC_DISPATCH_CHUNK = 250
# A scheduled chunk's fabrics whose remote commit and source are unchanged (Git-only,
# last outcome in sync) are recorded in bulk by the fan-out, a few statements for the
# chunk, instead of one task each (sync/bulk_unchanged.py); the rest get their task.
SYNC_BULK_UNCHANGED = env_bool("SYNC_BULK_UNCHANGED", True)

# Git push webhooks (docs/webhooks.md). The secret GitHub, GitLab and Gitea sign with;
# empty: every webhook is refused. Pushes of one branch within the debounce window
# dispatch once; the later ones only make the fabrics due, for the tick.
SYNC_WEBHOOK_SECRET = env_str("SYNC_WEBHOOK_SECRET", "")
SYNC_WEBHOOK_DEBOUNCE_SECONDS = env_int("SYNC_WEBHOOK_DEBOUNCE_SECONDS", 5)
