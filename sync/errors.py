"""Failure classes that decide what happens next to a sync.

``TransientSyncError``: the network, the database or the broker hiccuped; retrying
soon may succeed, so the task retries with backoff (bounded).
``DatabaseUnavailable``: the database itself is unreachable; the delivery waits for
it and resumes, counting nothing against the fabric.
``PermanentSyncError``: the input is wrong (bad YAML, missing branch, rejected
credentials); retrying cannot help, so the sync fails at once with a message an
operator can act on.
"""


class DatabaseUnavailable(Exception):
    """The database went away mid-sync. Not a ``SyncError``: it is the system's failure,
    not the fabric's, so nothing is counted against the fabric and the task resumes its
    lease once the database is back (``sync.tasks``)."""


class WorkerResourcesExhausted(DatabaseUnavailable):
    """The worker process ran out of file descriptors (the machine's fault, not the
    fabric's): handled like a database outage, which it usually also is, since no
    connection can be opened. Nothing is counted; the delivery retries and resumes."""


class SyncError(Exception):
    """Base class; the message is already redacted and meant for operators."""


class TransientSyncError(SyncError):
    pass


class PermanentSyncError(SyncError):
    pass


class ManifestError(PermanentSyncError):
    """A manifest is invalid; the message names the file (and line, for YAML errors)."""
