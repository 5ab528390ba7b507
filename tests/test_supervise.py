"""``scripts/supervise.py``: a process that exits is restarted with backoff; SIGTERM stops both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

from tests.conftest import ROOT, wait_for


def start_supervisor(tmp_path: Path, script: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SUPERVISE_INITIAL_BACKOFF": "0.2", "SUPERVISE_MAX_BACKOFF": "0.4"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "supervise.py"), "--name", "t", "--", "sh", "-c", script],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
    )


def test_a_process_that_exits_is_restarted_with_growing_backoff(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    supervisor = start_supervisor(tmp_path, f"date +%s.%N >> {starts}; exit 3")
    try:
        wait_for(lambda: starts.exists() and len(starts.read_text().split()) >= 4, timeout=20)
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=10)
    times = [float(t) for t in starts.read_text().split()]
    gaps = [b - a for a, b in pairwise(times)]
    assert gaps[0] >= 0.2  # the initial backoff
    assert gaps[1] >= 0.4  # doubled, then capped at 0.4
    assert supervisor.returncode == 0
    assert b"t exited with 3; restarting" in (supervisor.stderr.read() if supervisor.stderr else b"")


def test_sigterm_stops_the_running_process_and_the_supervisor(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    supervisor = start_supervisor(tmp_path, f"echo $$ > {pid_file}; exec sleep 60")
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=20))
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=10) == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the supervised process outlived its supervisor")
