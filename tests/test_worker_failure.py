"""A real worker's pool under the fault that killed the partitioned host (issue 10).

Real: a prefork worker of this app (``celery -A project worker``), the test Redis and
database, and tasks that run in its pool children (``tests/pool_tasks.py``). The main
process's stalled loop is a real SIGSTOP. The late soft time limit is the SIGUSR1
that billiard's own timer sends. The damaged frame is written to the child's real
result pipe.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from project.celery_app import app
from tests.conftest import WorkerProcess, wait_for

pytestmark = [pytest.mark.django_db(transaction=True)]

INCLUDE = ("--include", "tests.pool_tasks")
FRAME_SIZE = 1_000_000  # characters of the failure message: far more than a 64 KiB pipe holds


def wchan(pid: int) -> str:
    return Path(f"/proc/{pid}/wchan").read_text()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def test_a_late_soft_time_limit_no_longer_breaks_a_result_the_child_is_writing(
    worker_factory: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """Before project/soft_time_limit.py the worker died "Unrecoverable error" here."""
    worker = worker_factory(concurrency=1, args=INCLUDE)
    assert worker.process is not None
    main = worker.process.pid
    started = tmp_path / "started"
    failing = app.send_task("tests.pool.fail_at_length", args=[str(started), 1.0, FRAME_SIZE])
    child = int(wait_for(lambda: started.exists() and started.read_text(), timeout=30))

    # The main loop stalls (as while it reconnects to a lost broker): the child's failure,
    # a frame of about 1 MB, fills the pipe and the child blocks half-way through writing it.
    os.kill(main, signal.SIGSTOP)
    try:
        # ("pipe_write", or "anon_pipe_write" on newer kernels)
        wait_for(lambda: wchan(child).endswith("pipe_write"), timeout=30,
                 message="the child never blocked on its result pipe")  # fmt: skip
        # billiard's soft time limit timer for that job, firing late: SIGUSR1 to the child.
        os.kill(child, signal.SIGUSR1)
        time.sleep(0.5)
    finally:
        os.kill(main, signal.SIGCONT)

    # The main process reads the whole frame and carries on with the same child: with one
    # child, it hands out the next task only once it has read the last one's result.
    assert app.send_task("tests.pool.pid").get(timeout=30) == child
    assert failing.state == "FAILURE"
    log = worker.log_path.read_text(errors="replace")
    assert "Unrecoverable error" not in log
    assert worker.process.poll() is None
    assert "ignored 1 soft time limit signal(s)" in log


def test_a_soft_time_limit_still_stops_a_task_that_overruns(
    worker_factory: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    worker = worker_factory(concurrency=1, args=INCLUDE, SYNC_SOFT_TIME_LIMIT="2", SYNC_HARD_TIME_LIMIT="30")
    overrunning = app.send_task("tests.pool.fail_at_length", args=[str(tmp_path / "started"), 20.0, 10])
    with pytest.raises(SoftTimeLimitExceeded):
        overrunning.get(timeout=20)
    assert worker.process is not None
    assert worker.process.poll() is None


def test_a_worker_whose_pool_breaks_exits_within_its_bound_and_leaves_no_process_behind(
    worker_factory: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """Before project/worker_exit.py the worker stayed up after the error, consuming nothing,
    until the running task reached its soft time limit (4 minutes by default; forever when
    the children are stuck), and left the task's subprocess running after it exited."""
    worker = worker_factory(
        concurrency=2, args=INCLUDE, WORKER_FAILURE_EXIT_SECONDS="5",
        SYNC_SOFT_TIME_LIMIT="240", SYNC_HARD_TIME_LIMIT="300", SYNC_LEASE_SECONDS="360",
    )  # fmt: skip
    assert worker.process is not None
    children = worker.child_pids()
    pid_file = tmp_path / "sleeper"
    app.send_task("tests.pool.hold_subprocess", args=[str(pid_file), 600])
    sleeper = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=30))

    failed_at = time.monotonic()
    app.send_task("tests.pool.damage_result_pipe")
    code = worker.process.wait(timeout=5 + 25)
    exited_after = time.monotonic() - failed_at

    log = worker.log()
    assert "Unrecoverable error: UnicodeDecodeError" in log, log
    assert "killing its" in log, log
    assert code == 1, (code, log)
    assert exited_after >= 5, exited_after  # the shutdown had its chance first
    wait_for(lambda: not any(alive(pid) for pid in [*children, sleeper]), timeout=10,
             message="a pool child or its subprocess outlived the worker")  # fmt: skip
