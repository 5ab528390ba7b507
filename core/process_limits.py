"""Is this process at one of its own limits? Said in the log beside the error it causes.

A process out of file descriptors cannot open a database connection, and psycopg then
reports only "connection is bad: no error details available": the operator would look
at PostgreSQL, which is fine. The real cause is named next to such errors instead.
"""

from __future__ import annotations

import errno
import os
import resource

# Within this many of the limit counts as exhausted: the failed open itself released its slot.
MARGIN = 4


def descriptors_exhausted() -> str | None:
    """ "N of M file descriptors open" when this process is at its limit, else None."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        held = len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir used
    except OSError:
        return None  # no /proc: cannot tell, say nothing
    if soft == resource.RLIM_INFINITY or held < soft - MARGIN:
        return None
    return f"this process is out of file descriptors ({held} of {soft} open)"


def is_resource_exhaustion(exc: BaseException) -> bool:
    """An ``OSError`` that says the process (EMFILE) or the system (ENFILE) has no file slots left."""
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)
