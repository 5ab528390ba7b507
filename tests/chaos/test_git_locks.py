"""A git fetch killed mid-way never leaves a fabric broken (issue 10, item 4).

Real: a real Git repository big enough that its shallow fetch takes a while, a real
prefork worker whose pool child and its ``git`` are SIGKILLed mid-fetch (what the OOM
killer does to a process tree), leaving git's lock files in the fabric's bare cache,
and real ticks; the stack's sync lease is 30 s. Before the fix every later fetch
failed "Unable to create … shallow.lock: File exists" until the fabric was suspended.

Bound: the next sync after the lease runs out succeeds; the fabric ends IN_SYNC with
at most the one lost delivery counted, and no two syncs of it overlap.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from tests.chaos.invariants import assert_healthy_history
from tests.chaos.stack import ChaosStack
from tests.conftest import wait_for
from tests.gitrepo import GitRepo, manifest

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]


def _descendants(root: int) -> dict[int, str]:
    """pid -> command line of every process below ``root`` (only ours: other runs share the host)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout
    parents: dict[int, list[tuple[int, str]]] = {}
    for line in out.splitlines():
        fields = [*line.split(None, 2), ""]
        parents.setdefault(int(fields[1]), []).append((int(fields[0]), fields[2]))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for pid, args in parents.get(todo.pop(), []):
            found[pid] = args
            todo.append(pid)
    return found


def test_a_sync_killed_mid_fetch_leaves_no_lock_that_breaks_the_next_sync(chaos_stack: ChaosStack) -> None:
    repo = GitRepo.create(chaos_stack.repos / "big-fabric")
    repo.write("fabric/switch.yaml", manifest("Switch", "leaf-1", role="leaf"))
    for index in range(4):  # incompressible blobs: the fetch takes seconds, time to kill it
        repo.write(f"blobs/{index}.bin", os.urandom(16 * 1024 * 1024))
    repo.commit("wiring and firmware blobs")
    with chaos_stack.orm():
        fabric = Fabric.objects.create(name="big", git_url=repo.url, git_path="fabric", sync_interval=60)
    worker = chaos_stack.start_worker(concurrency=1)
    chaos_stack.tick()

    def fetching() -> list[int]:
        return [pid for pid, args in _descendants(worker.pid).items() if "fetch" in args and "--depth" in args]

    wait_for(fetching, timeout=60, interval=0.02, message="the fetch never started")
    for pid in [*_descendants(worker.pid)]:  # the pool child and its git: the whole tree below the main process
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    cache = Path(chaos_stack.root) / "git-cache-worker0"
    locks = [str(p) for p in cache.rglob("*.lock")]
    assert locks, "the kill left no git lock in the cache: the test would prove nothing"

    with chaos_stack.orm():
        time.sleep(31)  # the 30 s lease runs out: the reaper (in the next tick) redoes the sync
        chaos_stack.tick()
        wait_for(
            lambda: SyncRun.objects.filter(fabric=fabric, status=RunStatus.SUCCESS).exists(),
            timeout=180,
            message=f"the fabric never synced again (locks left by the kill: {locks})",
        )
        fabric.refresh_from_db()
        assert fabric.sync_status == SyncStatus.IN_SYNC, fabric.last_error
        assert fabric.consecutive_failures <= 1
        assert not SyncRun.objects.filter(fabric=fabric, status=RunStatus.FAILED).exists()
        assert_healthy_history()
