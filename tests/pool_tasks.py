"""Tasks only the tests of a real worker's pool load (``celery worker --include tests.pool_tasks``).

Each one does, inside a real prefork child, one thing a test needs to provoke: a long
failure message, a child holding a subprocess, a damaged frame on its result pipe.
"""

from __future__ import annotations

import os
import struct
import subprocess
import time
from pathlib import Path

from billiard.process import current_process

from project.celery_app import app

# A pickle (protocol 4) whose one string is not UTF-8: unpickling it raises
# UnicodeDecodeError, the error the partitioned host's worker died of (issue 10).
UNDECODABLE_FRAME_BODY = b"\x80\x04X\x02\x00\x00\x00\xff\xfe."


@app.task(name="tests.pool.fail_at_length")
def fail_at_length(started: str, seconds: float, size: int) -> None:
    """Fail after ``seconds`` with a message of ``size`` characters: a result frame larger than a pipe holds."""
    Path(started).write_text(str(os.getpid()))
    time.sleep(seconds)
    raise RuntimeError("x" * size)


@app.task(name="tests.pool.hold_subprocess")
def hold_subprocess(pid_file: str, seconds: int) -> None:
    """Run ``sleep`` as this child's own subprocess (as a sync runs git) and wait for it."""
    sleeper = subprocess.Popen(["sleep", str(seconds)])
    Path(pid_file).write_text(str(sleeper.pid))
    sleeper.wait()


@app.task(name="tests.pool.damage_result_pipe")
def damage_result_pipe() -> None:
    """Put one undecodable frame on this child's result pipe, as an interrupted write leaves one."""
    outq = current_process().outq  # type: ignore[attr-defined]
    os.write(outq._writer.fileno(), struct.pack(">i", len(UNDECODABLE_FRAME_BODY)) + UNDECODABLE_FRAME_BODY)


@app.task(name="tests.pool.pid")
def pid() -> int:
    return os.getpid()
