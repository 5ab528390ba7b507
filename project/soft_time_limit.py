"""Soft time limits that only ever interrupt a task, never the pool's result pipe.

How billiard's prefork pool enforces ``task_soft_time_limit``: the worker's main
process arms a timer on its event loop when it hands a job to a child, and cancels it
when it reads the job's result back from that child's result pipe. When the timer
fires first it sends the child SIGUSR1, whose handler raises ``SoftTimeLimitExceeded``
wherever the child happens to be.

That goes wrong when the main loop stalls. Celery reconnects to a lost broker inside
the loop, and a worker host cut off from Redis and PostgreSQL sat there for tens of
seconds (issue 10, the partitioned host). During the stall the children finished their
syncs, but nobody read the results. The pipe filled, and a child sending a long
failure (a traceback) blocked half-way through its message. When the loop ran again it
fired every overdue timer before it read any pipe. The stale SIGUSR1 raised inside the
child's half-done write, and the child went on to write its next message. The main
process then read a frame with a foreign frame inside it and died: "Unrecoverable
error: UnicodeDecodeError" (``tests/test_worker_failure.py`` shows that sequence with
a real worker).

So, in every prefork child, billiard's SIGUSR1 handler is replaced by one that raises
only while a task body is running in this process (between ``task_prerun`` and
``task_postrun``). A late signal for a job that has already returned is ignored, and
the job's result reaches the main process intact. A sync that really overruns is
stopped as before. The hard time limit still ends a sync that ignores the soft one,
and that timer is only armed once the soft one has fired, so the main loop reads the
pipes for ``hard - soft`` seconds first.

The flag below is this process's own execution state, not shared decision state: each
pool child has its own copy and only its own task sets it.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

from billiard import pool as billiard_pool
from celery import signals
from celery.exceptions import SoftTimeLimitExceeded

logger = logging.getLogger(__name__)

_SOFT_LIMIT_SIGNAL = getattr(signal, "SIGUSR1", None)


class _ChildState:
    in_task = False
    ignored = 0  # stale signals since the last task began (reported then, not in the handler)


def _soft_time_limit(signum: int, frame: FrameType | None) -> None:
    if _ChildState.in_task:
        raise SoftTimeLimitExceeded()
    # No logging here: a signal handler may run inside logging's own lock.
    _ChildState.ignored += 1


def _task_started(**kwargs: Any) -> None:
    if _SOFT_LIMIT_SIGNAL is None or threading.current_thread() is not threading.main_thread():
        return  # the threads pool: Python handles signals only in the main thread
    if signal.getsignal(_SOFT_LIMIT_SIGNAL) is billiard_pool.soft_timeout_sighandler:
        # billiard installs its handler after worker_process_init, so replace it here.
        signal.signal(_SOFT_LIMIT_SIGNAL, _soft_time_limit)
    if _ChildState.ignored:
        logger.warning(
            "ignored %d soft time limit signal(s) that arrived after their task had returned "
            "(the worker's main loop had stalled; the results were delivered intact)",
            _ChildState.ignored,
        )
        _ChildState.ignored = 0
    _ChildState.in_task = True


def _task_finished(**kwargs: Any) -> None:
    _ChildState.in_task = False


def install() -> None:
    """Guard every prefork child of this app's workers (solo and threads pools are left alone)."""
    signals.task_prerun.connect(_task_started, weak=False)
    signals.task_postrun.connect(_task_finished, weak=False)
