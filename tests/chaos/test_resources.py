"""Resources running out under a worker: disk, file descriptors, memory, CPU.

Real faults into real processes, all of them the test's own:
- **Disk full:** the worker's Git cache (under its ``var/``) is a tmpfs (1 MiB + 512 KiB per fabric) filled to
  the last byte, so every ``git fetch`` hits ENOSPC.
- **File descriptors:** ``prlimit(2)`` lowers the open-files limit of the worker's running
  pool processes to two more than they hold, so the next sync cannot even open its
  database connection: it retries as in a database outage (nothing can be recorded)
  and the log names the cause. A retry that cannot even be published (no socket for
  the broker) would be dropped by Celery; the attempt gives its claim back through the
  database connection it still holds, so no run is LOST and no death is counted.
- **Memory:** the worker runs in its own memory cgroup (v1) limited to what it uses
  idle plus ``MEMORY_HEADROOM``; one fabric's repository holds enough YAML to need more,
  so the kernel's OOM killer kills the pool child parsing it, every time.
- **CPU:** four busy processes per core compete with the worker for the CPU.

Invariants: a fault of the machine is recorded on the fabric with a reason an operator
can act on, never stops the other fabrics, and never leaves a fabric broken: once the
resource is back, the next sync succeeds. Nothing is synced twice at once or stuck,
and the worker process survives. A fabric that kills its worker every time (memory) is
given up by the poison-message guard after ``SYNC_MAX_DELIVERIES`` deliveries with that
reason, while the others keep syncing. A starved CPU slows syncs down but declares no
live worker dead (no LOST run).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from tests.chaos.conftest import make_fabrics
from tests.chaos.invariants import SYNCED, assert_healthy_history, not_synced_since
from tests.chaos.scale import ChaosScale
from tests.chaos.stack import CHAOS_ENV, ChaosStack
from tests.conftest import require, wait_for
from tests.gitrepo import GitRepo, manifest

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]

SYNC_SECONDS = 120
TICK_SECONDS = 15
LEASE_SECONDS = int(CHAOS_ENV["SYNC_LEASE_SECONDS"])
MEMORY_CGROUPS = Path("/sys/fs/cgroup/memory")
MEMORY_HEADROOM = 120 * 1024 * 1024


def _settled() -> bool:
    return not Fabric.objects.filter(sync_status__in=[SyncStatus.QUEUED, SyncStatus.SYNCING]).exists()


def _due_now_and_tick(stack: ChaosStack) -> datetime:
    with stack.orm():
        since = timezone.now()
        Fabric.objects.update(next_sync_at=since)
    stack.tick()
    return since


@contextmanager
def _mounted_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    require(done.returncode == 0, f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_fails_syncs_readably_and_the_first_sync_after_space_returns_succeeds(
    chaos_stack: ChaosStack, chaos_scale: ChaosScale
) -> None:
    count = chaos_scale.n(6, minimum=4)
    make_fabrics(chaos_stack, count, files=20)
    # Room for every fabric's cache once the filler is gone (about 320 KiB each with 20
    # manifests): the fault is the filler, not a disk too small for the fabrics.
    with _mounted_tmpfs(chaos_stack.root / "git-cache-full", f"{1024 + 512 * count}k") as cache:
        worker = chaos_stack.start_worker("full", SYNC_GIT_CACHE_DIR=str(cache))
        filler = cache / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False)
        assert os.statvfs(cache).f_bavail == 0, "the disk is not full"

        since = _due_now_and_tick(chaos_stack)
        with chaos_stack.orm():
            failed = SyncRun.objects.filter(started_at__gte=since, status=RunStatus.FAILED)
            all_failed = lambda: _settled() and failed.values("fabric_id").distinct().count() == Fabric.objects.count()  # noqa: E731
            wait_for(
                all_failed, timeout=chaos_scale.drain(SYNC_SECONDS), message="the syncs on a full disk did not all fail"
            )
            for fabric in Fabric.objects.all():
                assert fabric.sync_status == SyncStatus.ERROR, fabric.sync_status
                assert "No space left on device" in fabric.last_error, fabric.last_error
            assert_healthy_history()

        filler.unlink()  # space is back
        since = _due_now_and_tick(chaos_stack)
        with chaos_stack.orm():
            wait_for(lambda: not not_synced_since(since), timeout=chaos_scale.drain(SYNC_SECONDS),
                     message="a fabric stayed broken after the disk had space again")  # fmt: skip
            assert set(Fabric.objects.values_list("sync_status", flat=True)) == {SyncStatus.IN_SYNC}
            assert_healthy_history()
        assert worker.alive(), worker.log()
        worker.stop()


def test_pool_processes_out_of_file_descriptors_say_so_count_no_failure_and_recover_when_the_limit_returns(
    chaos_stack: ChaosStack, chaos_scale: ChaosScale
) -> None:
    make_fabrics(chaos_stack, chaos_scale.n(6, minimum=4))
    worker = chaos_stack.start_worker("fds", concurrency=2)
    since = _due_now_and_tick(chaos_stack)
    with chaos_stack.orm():
        wait_for(
            lambda: not not_synced_since(since),
            timeout=chaos_scale.drain(SYNC_SECONDS),
            message="baseline round failed",
        )

    children = worker.children()
    assert len(children) == 2, children
    limits = {}
    for pid in children:
        held = len(os.listdir(f"/proc/{pid}/fd"))
        limits[pid] = resource.prlimit(pid, resource.RLIMIT_NOFILE)  # prlimit(2), as the prlimit tool does
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (held + 2, limits[pid][1]))  # soft only: it can go back up
    log_offset = len(worker.log(tail=10_000_000))
    since = _due_now_and_tick(chaos_stack)
    # Out of descriptors, a pool process cannot open its database connection: nothing can
    # be recorded, so its syncs wait and retry like in a database outage, and the log names
    # the real cause rather than psycopg's "connection is bad".
    wait_for(lambda: "out of file descriptors" in worker.log(tail=10_000_000)[log_offset:], timeout=SYNC_SECONDS,
             message=f"the fd exhaustion was not named in the log:\n{worker.log()}")  # fmt: skip
    time.sleep(5)  # a few retries while the limit holds

    for pid, limit in limits.items():
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limit)
    restored = time.monotonic()
    with chaos_stack.orm():
        # A retry that could not be published (no descriptor for a broker connection) is
        # dropped by Celery: its attempt gave the claim back, due at the next tick.
        bound = LEASE_SECONDS + 2 * TICK_SECONDS + chaos_scale.drain(SYNC_SECONDS)
        ticks = 0
        while not_synced_since(since):
            assert time.monotonic() - restored < bound, (
                f"not synced within {bound} s of the limit's return: {not_synced_since(since)}\n{worker.log()}"
            )
            chaos_stack.tick()
            ticks += 1
            time.sleep(TICK_SECONDS)
        assert set(Fabric.objects.values_list("sync_status", flat=True)) == {SyncStatus.IN_SYNC}
        assert_healthy_history()
        lost = SyncRun.objects.filter(started_at__gte=since, status=RunStatus.LOST).count()
        given_back = SyncRun.objects.filter(started_at__gte=since, error_message__contains="given back").count()
        assert lost == 0, f"{lost} runs LOST for a worker that never died"
    assert worker.alive(), worker.log()
    recovered = time.monotonic() - restored
    print(f"\nfds: recovered {recovered:.0f} s after the limit, {ticks} tick(s); {given_back} given back, none LOST")


def _rss_of_tree(pid: int) -> int:
    out = subprocess.run(["ps", "-o", "rss=", "--ppid", str(pid)], capture_output=True, text=True, check=False).stdout
    own = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in own.splitlines() if line.startswith("VmRSS:"))
    return (rss + sum(int(value) for value in out.split())) * 1024


def test_a_fabric_that_exhausts_its_workers_memory_is_given_up_while_the_others_keep_syncing(
    chaos_stack: ChaosStack, chaos_scale: ChaosScale, tmp_path: Path
) -> None:
    require((MEMORY_CGROUPS / "memory.limit_in_bytes").exists(), "needs a writable cgroup v1 memory controller")
    cgroup = MEMORY_CGROUPS / f"fcp-chaos-{os.getpid()}-{time.monotonic_ns()}"
    try:
        cgroup.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup here: {exc}")
    try:
        small = make_fabrics(chaos_stack, chaos_scale.n(4, minimum=3))
        big = GitRepo.create(chaos_stack.repos / "huge")
        # About 40 MB of YAML in 60 files under the per-file limit: parsed, far more than the headroom.
        for number in range(60):
            items = "".join(f"    - name: port-{number}-{item}\n      speed: 100G\n" for item in range(14000))
            big.write(f"fabric/huge-{number}.yaml", manifest("Switch", f"huge-{number}") + "  ports:\n" + items)
        big.commit("a very large wiring")
        with chaos_stack.orm():
            hog = Fabric.objects.create(name="memory-hog", git_url=big.url, git_branch="main", git_path="fabric",
                                        sync_interval=60, next_sync_at=timezone.now())  # fmt: skip
        worker = chaos_stack.start_worker("memory", concurrency=2)
        for pid in [worker.pid, *worker.children()]:
            (cgroup / "tasks").write_text(f"{pid}\n")  # the kernel takes one pid per write
        limit = _rss_of_tree(worker.pid) + MEMORY_HEADROOM
        (cgroup / "memory.limit_in_bytes").write_text(str(limit))

        deliveries = settings.SYNC_MAX_DELIVERIES
        deadline = time.monotonic() + deliveries * (LEASE_SECONDS + 30) + SYNC_SECONDS
        with chaos_stack.orm():
            since = timezone.now()
            Fabric.objects.update(next_sync_at=since)
            ticks = 0
            while True:
                chaos_stack.tick()
                ticks += 1
                hog.refresh_from_db()
                synced_small = set(
                    SyncRun.objects.filter(fabric_id__in=small, status__in=SYNCED, started_at__gte=since).values_list(
                        "fabric_id", flat=True
                    )
                )
                if "gave up after" in hog.last_error and synced_small == set(small):
                    break
                assert time.monotonic() < deadline, f"not given up in time: {hog.sync_status} {hog.last_error!r}"
                time.sleep(10)
            assert hog.sync_status in (SyncStatus.ERROR, SyncStatus.SUSPENDED)
            assert f"gave up after {deliveries} deliveries" in hog.last_error, hog.last_error
            lost = SyncRun.objects.filter(fabric=hog, status=RunStatus.LOST).count()
            assert lost == deliveries, f"{lost} LOST runs, one per worker death expected"
            assert_healthy_history()
        oom_control = (cgroup / "memory.oom_control").read_text().splitlines()
        oom_kills = next((int(line.split()[1]) for line in oom_control if line.startswith("oom_kill ")), -1)
        assert worker.alive(), f"the worker itself died:\n{worker.log()}"
        print(f"\nmemory: limit {limit / 2**20:.0f} MiB; given up after {ticks} ticks; OOM kills {oom_kills}")
        worker.stop()
    finally:
        for member in (cgroup / "tasks").read_text().split() if cgroup.exists() else []:
            with suppress(OSError):
                (MEMORY_CGROUPS / "tasks").write_text(member)
        if cgroup.exists():
            cgroup.rmdir()


def test_a_saturated_cpu_slows_syncs_but_declares_no_live_worker_dead(
    chaos_stack: ChaosStack, chaos_scale: ChaosScale
) -> None:
    make_fabrics(chaos_stack, chaos_scale.n(20, minimum=10), files=20)
    chaos_stack.start_worker("starved", concurrency=2)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4 * (os.cpu_count() or 1))]
    try:
        started = time.monotonic()
        since = _due_now_and_tick(chaos_stack)
        with chaos_stack.orm():
            wait_for(lambda: not not_synced_since(since), timeout=chaos_scale.drain(SYNC_SECONDS * 2),
                     message="syncs did not finish under CPU saturation")  # fmt: skip
            seconds = time.monotonic() - started
            assert not SyncRun.objects.filter(status__in=[RunStatus.LOST, RunStatus.FAILED]).exists()
            assert set(Fabric.objects.values_list("consecutive_failures", flat=True)) == {0}
            assert_healthy_history()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    print(f"\ncpu: {len(hogs)} busy processes; every fabric synced in {seconds:.1f} s, none LOST")
