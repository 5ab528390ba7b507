"""Several worker hosts, one cut off mid-sync: the others carry on and its claims come back.

Real: every host is a network namespace joined to the root namespace by a veth pair
(``tests/chaos/netns.py``); the private PostgreSQL cluster and Valkey of the chaos
stack listen on the root ends. Host 0 runs beat and the tick worker, every host a sync
worker, each process started with the very command ``deploy/compose.yaml`` deploys
(plus a log level and a unique node name), over the veth links. Beat ticks every
``TICK_SECONDS`` (its database entry shortened, like the stack's short leases). The
fabrics sync from real Git repositories holding ``MANIFESTS`` manifests each, so a
first sync takes seconds and is mid-flight when the last host's link goes down. No
mocks: the partition drops packets; the sync lease (30 s in the stack) and the reaper
of a later tick recover the cut-off host's claims.

Bounds: while partitioned, fabrics keep syncing on the other hosts; no fabric is ever
synced twice at once (``invariants.overlapping_runs``), including by the cut-off host,
whose git work may still finish but whose writes cannot land (its pool kills the sync
at the hard time limit, before the lease runs out); the cut-off host's claims are
synced again elsewhere within lease + 2 ticks (+ ``DRAIN_SECONDS`` for the syncs
themselves) of the cut, and by then every fabric has synced since the start; after
healing, the host takes syncs again within ``REJOIN_SECONDS``, still with no overlap
and nothing stuck.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import yaml
from django.utils import timezone

from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from tests.chaos.conftest import make_fabrics
from tests.chaos.invariants import SYNCED, assert_healthy_history, not_synced_since, overlapping_runs
from tests.chaos.netns import Host, Network, host_env, serve_hosts, unavailable_reason
from tests.chaos.scale import ChaosScale
from tests.chaos.stack import CHAOS_ENV, PYTHON, ROOT, ChaosStack, Proc, Worker
from tests.conftest import require, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]

COMPOSE = ROOT / "deploy" / "compose.yaml"
SUPERVISE = ROOT / "scripts" / "supervise.py"
TICK_SECONDS = 15  # beat's period in this test (60 s in production)
LEASE_SECONDS = int(CHAOS_ENV["SYNC_LEASE_SECONDS"])
MANIFESTS = 150  # per repository: a first sync parses and stores them all, taking seconds
DRAIN_SECONDS = 40  # the surviving hosts running the re-dispatched syncs, on a loaded 2-core host
# TCP retransmissions back off exponentially while the link is down (up to ~2 min apart),
# so a healed host's open connections may take that long to carry packets again.
REJOIN_SECONDS = 180
# Settings the compose file gives every process that the stack does not (its URLs win).
COMPOSE_SETTINGS = ("HEALTH_QUEUE",)


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def compose_command(service: str) -> list[str]:
    command = compose()["services"][service]["command"]
    assert isinstance(command, list), f"{service}: {command!r}"
    assert command[0] == "celery", f"{service}: {command!r}"
    return [str(part) for part in command]


def compose_settings(service: str) -> dict[str, str]:
    environment = compose()["services"][service]["environment"]
    return {key: str(environment[key]) for key in COMPOSE_SETTINGS}


class Hosts:
    """The processes this test runs in its namespaces, each from a compose service's command."""

    def __init__(self, stack: ChaosStack, network: Network) -> None:
        self.stack = stack
        self.network = network
        self.procs: list[Proc] = []

    def start(self, host: Host, service: str, name: str, *extra: str, worker: bool = True) -> Proc:
        command = compose_command(service)
        # `celery` of this interpreter's environment, then the compose arguments unchanged,
        # under the restart policy compose gives every service (restart: unless-stopped),
        # here scripts/supervise.py, as `make run` uses it.
        celery = [PYTHON, "-m", "celery", *command[1:], "--loglevel", "INFO", *extra]
        argv = host.command([PYTHON, str(SUPERVISE), "--name", name, "--", *celery])
        env = host_env(self.stack, host, SYNC_GIT_CACHE_DIR=str(self.stack.root / f"git-cache-{name}"),
                       **compose_settings(service))  # fmt: skip
        log = self.stack.root / f"{name}.log"
        proc: Proc = Worker(name, argv, env, log) if worker else Proc(name, argv, env, log)
        proc.start()
        self.procs.append(proc)
        self.stack.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=10)


@pytest.fixture
def hosts(chaos_stack: ChaosStack, chaos_scale: ChaosScale) -> Iterator[Hosts]:
    reason = unavailable_reason()
    require(reason is None, reason or "")
    with Network.create(chaos_scale.workers) as network:
        serve_hosts(chaos_stack, network)
        running = Hosts(chaos_stack, network)
        try:
            yield running
        finally:
            # Stop them with the links up, so they shut down cleanly (destroy() kills the rest).
            for host in network.hosts:
                if host.partitioned:
                    network.heal(host)
            running.stop()


def leased_by(prefix: str, status: str) -> set[int]:
    return set(Fabric.objects.filter(sync_status=status, lease_owner__startswith=prefix).values_list("id", flat=True))


def synced_after(fabric_ids: set[int], since: datetime, exclude_worker: str = "") -> set[int]:
    runs = SyncRun.objects.filter(fabric_id__in=fabric_ids, status__in=SYNCED, started_at__gte=since)
    if exclude_worker:
        runs = runs.exclude(worker__startswith=exclude_worker)
    return set(runs.values_list("fabric_id", flat=True))


def test_a_partitioned_worker_host_loses_its_claims_to_the_others_and_rejoins(
    chaos_stack: ChaosStack, chaos_scale: ChaosScale, hosts: Hosts
) -> None:
    started = time.monotonic()
    network = hosts.network
    count = chaos_scale.n(40, minimum=16)
    make_fabrics(chaos_stack, count, files=MANIFESTS)
    pid = os.getpid()
    workers = [
        hosts.start(host, "sync-worker", f"sync{index}", "--hostname", f"sync{index}-{pid}@%h")
        for index, host in enumerate(network.hosts)
    ]
    tick_worker = hosts.start(network.hosts[0], "tick-worker", "tick")
    for proc in [*workers, tick_worker]:
        assert isinstance(proc, Worker)
        proc.wait_ready()
    victim, victim_worker = network.hosts[-1], workers[-1]
    victim_node = f"sync{len(workers) - 1}-{pid}@"

    with chaos_stack.orm():
        from django_celery_beat.models import IntervalSchedule, PeriodicTask

        from project.tasks import MASTER_TASK_NAME

        entry = PeriodicTask.objects.get(name=MASTER_TASK_NAME)
        entry.interval, _ = IntervalSchedule.objects.get_or_create(every=TICK_SECONDS, period=IntervalSchedule.SECONDS)
        entry.save()
        since = timezone.now()
    hosts.start(network.hosts[0], "beat", "beat", worker=False)

    with chaos_stack.orm():
        # Cut the last host off while it holds SYNCING leases: syncs in flight.
        wait_for(lambda: leased_by(victim_node, SyncStatus.SYNCING), timeout=120, interval=0.05,
                 message=f"the last host never began a sync:\n{victim_worker.log()}")  # fmt: skip
        network.partition(victim)
        partitioned_at = timezone.now()
        partitioned_mono = time.monotonic()
        time.sleep(1)  # a commit already on the wire lands; nothing after it can
        held = leased_by(victim_node, SyncStatus.SYNCING)
        queued = set(Fabric.objects.filter(sync_status=SyncStatus.QUEUED).values_list("id", flat=True))
        cut_runs = set(
            SyncRun.objects.filter(worker__startswith=victim_node, status=RunStatus.RUNNING).values_list(
                "id", flat=True
            )
        )
        assert held, "the host finished its syncs before the cut: nothing was mid-flight"

        # The others carry on: fabrics keep syncing while the host is cut off.
        everyone = set(Fabric.objects.values_list("id", flat=True))
        wait_for(lambda: len(synced_after(everyone, partitioned_at)) >= len(held), timeout=60,
                 message="no fabric synced on the other hosts while one was partitioned")  # fmt: skip
        assert not overlapping_runs(), overlapping_runs()

        # Its claims come back after their lease: synced by another host within lease + 2 ticks.
        bound = LEASE_SECONDS + 2 * TICK_SECONDS + chaos_scale.drain(DRAIN_SECONDS)
        wait_for(lambda: synced_after(held, partitioned_at, exclude_worker=victim_node) == held, timeout=bound,
                 interval=0.5, message=f"claims of the cut-off host not synced again within {bound} s: "
                 f"{held - synced_after(held, partitioned_at, exclude_worker=victim_node)}")  # fmt: skip
        recovered_seconds = time.monotonic() - partitioned_mono
        missing = not_synced_since(since)
        assert not missing, f"not every fabric synced within {bound} s of the cut: {missing}"
        # The runs it had open are closed LOST (by the reaper, or by the redelivery's takeover).
        closed = set(SyncRun.objects.filter(id__in=cut_runs, status=RunStatus.LOST).values_list("id", flat=True))
        assert closed == cut_runs, f"runs of the cut-off host not closed LOST: {cut_runs - closed}"
        assert not overlapping_runs(), overlapping_runs()
        # Partitioned, not dead: the host's worker service still runs. (Its stalled main
        # loop used to fire late soft time limits into children writing results, and die
        # "Unrecoverable error: UnicodeDecodeError", then hang in its shutdown:
        # project/soft_time_limit.py and project/worker_exit.py; tests/test_worker_failure.py.)
        assert victim_worker.alive(), "the cut-off host's worker service stopped"

        # Heal: the host takes syncs again, and still nothing runs twice at once.
        network.heal(victim)
        healed_at = timezone.now()
        healed_mono = time.monotonic()

        def rejoined() -> bool:
            runs = SyncRun.objects.filter(worker__startswith=victim_node, started_at__gte=healed_at)
            return runs.filter(status__in=SYNCED).exists()

        late = f"the healed host took no sync within {REJOIN_SECONDS} s:\n{victim_worker.log()}"
        wait_for(rejoined, timeout=REJOIN_SECONDS, interval=0.5, message=late)
        rejoin_seconds = time.monotonic() - healed_mono
        time.sleep(TICK_SECONDS)  # one more tick with every host serving
        assert_healthy_history()
        runs = SyncRun.objects.filter(started_at__gte=since)
        synced_runs = runs.filter(status__in=SYNCED).count()
        per_host = {
            f"sync{index}": runs.filter(worker__startswith=f"sync{index}-{pid}@", status__in=SYNCED).count()
            for index in range(len(workers))
        }
    victim_log = victim_worker.log(tail=10_000_000)
    print(
        f"\nmultihost: {count} fabrics, {len(workers)} hosts; {len(held)} SYNCING and {len(queued)} QUEUED claims at "
        f"the cut; recovered {recovered_seconds:.1f} s after it (bound {bound} s); rejoined {rejoin_seconds:.1f} s "
        f"after healing; {synced_runs} syncs ({per_host}); cut-off worker restarted "
        f"{victim_log.count('supervise: ')} time(s), late soft limits ignored in its pool "
        f"{victim_log.count('soft time limit signal(s) that arrived after')} time(s); "
        f"test {time.monotonic() - started:.0f} s"
    )


def test_compose_runs_each_concern_restarted_on_its_own_queue() -> None:
    """The deployed topology: one queue per concern, every long-lived process restarted."""
    services = compose()["services"]
    for name in ["postgres", "redis", "web", "beat", "tick-worker", "sync-worker", "scaling-worker", "health-worker"]:
        assert services[name]["restart"] == "unless-stopped", name
    assert "--appendonly" in services["redis"]["command"]
    for name in ["tick-worker", "sync-worker", "scaling-worker", "health-worker"]:
        assert compose_command(name)[1:4] == ["-A", "project", "worker"], name
    assert compose_command("beat")[1:4] == ["-A", "project", "beat"]
    assert compose_command("tick-worker")[4:] == ["--queues", "tick", "--concurrency", "1", "--hostname", "tick@%h"]
    assert compose_command("sync-worker")[4:] == ["--queues", "sync,celery", "--concurrency", "4"]
    assert compose_command("scaling-worker")[4:] == ["--queues", "scaling"]
    assert compose_command("health-worker")[4:] == ["--pool", "threads", "--concurrency", "16", "--queues", "health"]
    assert compose_command("beat")[4:] == ["--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"]
    assert compose_settings("sync-worker") == {"HEALTH_QUEUE": "health"}
