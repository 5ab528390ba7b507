"""A worker that has failed exits within a bound, so its restart policy can replace it.

Celery answers an "Unrecoverable error" in a worker's main loop with a *warm* shutdown:
it waits for the pool to finish what it holds. A broken pool may never finish, because
the children are blocked writing results to pipes that nobody reads any more. That
happened to the partitioned worker host of issue 10. The process stayed up, consuming
nothing. A restart policy (compose ``restart: unless-stopped``, systemd
``Restart=always``, ``scripts/supervise.py`` in ``make run``) only acts once the process
*exits*, so nothing replaced the worker.

This app's worker (``project.celery_app``) arms a deadline whenever it stops with a
failure exit code. If the shutdown has not finished ``WORKER_FAILURE_EXIT_SECONDS``
later, it kills its pool processes and everything they started (git, kubectl
sessions), then exits with that code. Work they held is not lost:

- messages are acknowledged late, so unacknowledged ones come back to the queue;
- claim markers and the sync lease bring their fabrics back at a later tick;
- a stale Git lock a killed git leaves behind is cleared by the next sync.

A plain SIGTERM (exit code 0) still drains: running syncs finish, bounded by the
process manager's grace period (``stop_grace_period`` in ``deploy/compose.yaml``).
Ctrl-C (SIGINT), which Celery turns into a warm shutdown with exit code 1, gets the
same bound as a failure: running syncs have that long to finish.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Any

import psutil
from celery.apps.worker import Worker as CeleryWorker
from django.conf import settings

logger = logging.getLogger(__name__)


def exit_now(exitcode: int, waited: float) -> None:
    """Kill every descendant of this process, then leave at once with ``exitcode``."""
    descendants = psutil.Process().children(recursive=True)
    logger.critical(
        "worker still not stopped %.0f s after a failure; killing its %d pool process(es) and "
        "what they started, and exiting %d so the restart policy starts a new worker",
        waited,
        len(descendants),
        exitcode,
    )
    for process in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    for handler in logging.getLogger().handlers:
        # Leaving regardless: a broken log handler must not keep a failed worker up.
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(exitcode)


class ExitDeadline:
    """Once armed, calls ``exit_now`` after ``seconds`` unless the process is gone by then."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def arm(self, exitcode: int) -> None:
        with self._lock:
            if self._timer is not None:
                return
            # A daemon thread: a shutdown that does finish in time is not held up by it.
            self._timer = threading.Timer(self.seconds, exit_now, args=(exitcode, self.seconds))
            self._timer.daemon = True
            self._timer.start()


class Worker(CeleryWorker):
    """``celery worker`` of this app: Celery's, plus a bounded exit after a failure."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exit_deadline = ExitDeadline(settings.WORKER_FAILURE_EXIT_SECONDS)

    def stop(self, in_sighandler: bool = False, exitcode: int | None = None) -> None:
        # Celery calls stop(exitcode=EX_FAILURE) after "Unrecoverable error", and with the
        # code of a SystemExit; EX_OK is the ordinary warm shutdown, which may take as
        # long as the syncs it lets finish.
        if exitcode:
            self.exit_deadline.arm(int(exitcode))
        super().stop(in_sighandler=in_sighandler, exitcode=exitcode)
