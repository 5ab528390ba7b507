"""Every Git call that reaches a remote passes that remote host's shared circuit breaker.

A remote that keeps timing out trips its breaker; from then on a sync of any fabric
on that host is skipped at once, truthfully ("remote unavailable (breaker open until
…)", a SKIPPED run), without running git, without counting a failure and without a
retry loop, while fabrics on healthy remotes sync as usual.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from core import guards
from core.breaker import REDIS_TIMEOUT, channel_for
from core.breaker_core import State
from core.breaker_redis import known_breakers
from core.tick import run_tick
from sync import leases
from sync.errors import PermanentSyncError, TransientSyncError
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from sync.runner import run_sync
from sync.sources.git import GitSource, RemoteUnavailable, git_breaker, remote_host
from tests.conftest import wait_for
from tests.factories import make_fabric


class HungServer:
    """A TCP server that accepts connections and never says a word (a hung Git remote).

    It listens on its own loopback address (127.x.y.z all reach this machine), so each
    test's remote host, and so its breaker, is its own.
    """

    def __init__(self) -> None:
        self.host = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        self._listener = socket.create_server((self.host, 0))
        self.port = self._listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            self.accepted.append(conn)

    def url(self, path: str = "acme/fabric.git") -> str:
        return f"https://{self.host}:{self.port}/{path}"

    def close(self) -> None:
        self._listener.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def hung_remote() -> Iterator[HungServer]:
    server = HungServer()
    yield server
    server.close()
    forget_breaker(server.host)  # also when only forced open (never listed)


def forget_breaker(host: str) -> None:
    """Delete the host's shared breaker state, and this process's handle on it."""
    git_breaker(host).forget()
    guards.forget_handles()


def forget_git_breakers() -> None:
    channel = channel_for(django_settings.REDIS_URL, REDIS_TIMEOUT)
    for name in known_breakers(channel, django_settings.BREAKER_KEY_PREFIX):
        if name.startswith("git:"):
            forget_breaker(name.removeprefix("git:"))
    guards.forget_handles()


@pytest.fixture
def fresh_git_breakers() -> Iterator[None]:
    """Every Git remote's breaker starts and ends CLOSED and empty. Failures of one test
    (say, a few on 127.0.0.1) would otherwise add up with the next test's and trip the
    shared breaker of a host that both use."""
    forget_git_breakers()
    yield
    forget_git_breakers()


pytestmark = pytest.mark.usefixtures("fresh_git_breakers")


def sync_now(fabric: Fabric, may_retry: bool = False):
    now = timezone.now()
    token = leases.claim_one(fabric.id, now)
    assert token is not None
    assert leases.begin(fabric.id, token, now, "test").outcome is leases.BeginOutcome.STARTED
    return run_sync(fabric.id, token, trigger="manual", worker="test", may_retry=may_retry)


def trip(server: HungServer, timeout: int = 1, failures: int = 5) -> None:
    """Real failures: ``failures`` ls-remote calls that each time out after ``timeout`` s."""
    source = GitSource(server.url(), "main", django_settings.SYNC_GIT_CACHE_DIR, timeout)
    for _ in range(failures):
        with pytest.raises(TransientSyncError, match="timed out"):
            source.check_reachable()


# --- Which breaker --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://git.example.com/acme/fabric.git", "git.example.com"),
        ("https://GIT.Example.com:8443/acme/fabric.git", "git.example.com"),
        ("ssh://git@git.example.com:2222/acme/fabric.git", "git.example.com"),
        ("git@github.com:acme/fabric.git", "github.com"),
        ("github.com:acme/fabric.git", "github.com"),
        ("/srv/repos/fabric", "local"),
        ("file:///srv/repos/fabric", "local"),
    ],
)
def test_each_remote_host_has_one_breaker_and_local_paths_share_local(url, host):
    assert remote_host(url) == host


# --- Real failures trip it; later syncs are skipped without git --------------------------


@pytest.mark.django_db
def test_five_timeouts_trip_the_breaker_and_later_syncs_are_skipped_without_running_git(hung_remote, settings):
    settings.SYNC_GIT_TIMEOUT = 1
    fabric = make_fabric(hung_remote.url())
    for attempt in range(5):
        with pytest.raises(TransientSyncError, match="git ls-remote timed out after 1 s"):
            sync_now(fabric)
        fabric.refresh_from_db()
        assert fabric.consecutive_failures == attempt + 1
    assert len(hung_remote.accepted) == 5
    breaker = git_breaker(hung_remote.host)
    assert breaker.state is State.OPEN
    open_until = breaker.metrics.open_until
    assert open_until is not None

    started = datetime.now(UTC)
    with pytest.raises(RemoteUnavailable) as skipped:
        sync_now(fabric)
    assert datetime.now(UTC) - started < timedelta(seconds=0.5)  # far less than a git timeout
    assert len(hung_remote.accepted) == 5  # git never ran: no new connection
    assert skipped.value.retry_at == open_until

    fabric.refresh_from_db()
    message = f"remote unavailable (breaker open until {open_until.isoformat(timespec='seconds')})"
    assert fabric.last_error == message
    assert fabric.consecutive_failures == 5  # unchanged: a skip is not a failure
    assert fabric.sync_status == SyncStatus.ERROR  # what the last real attempt said
    assert fabric.next_sync_at == open_until
    assert fabric.lease_token == ""
    assert fabric.lease_expires_at is None
    run = SyncRun.objects.filter(fabric=fabric).first()
    assert run is not None
    assert (run.status, run.error_class, run.error_message) == (RunStatus.SKIPPED, "RemoteUnavailable", message)
    assert run.finished_at is not None


@pytest.mark.django_db
def test_a_skipped_fabric_that_never_failed_keeps_its_status_and_its_failure_count(hung_remote, git_repo):
    trip(hung_remote)
    repo = git_repo()
    repo.with_switches(1)
    synced = make_fabric(repo.url)
    sync_now(synced)
    Fabric.objects.filter(id=synced.id).update(git_url=hung_remote.url(), next_sync_at=timezone.now())
    with pytest.raises(RemoteUnavailable):
        sync_now(synced)
    synced.refresh_from_db()
    assert synced.sync_status == SyncStatus.IN_SYNC
    assert synced.consecutive_failures == 0
    assert synced.last_error.startswith("remote unavailable (breaker open until ")

    fresh = make_fabric(hung_remote.url())
    with pytest.raises(RemoteUnavailable):
        sync_now(fresh)
    fresh.refresh_from_db()
    assert fresh.sync_status == SyncStatus.NEVER_SYNCED
    assert fresh.consecutive_failures == 0


@pytest.mark.django_db
def test_an_operator_forcing_the_breaker_open_skips_syncs_until_the_next_interval(hung_remote):
    git_breaker(hung_remote.host).force_open()
    fabric = make_fabric(hung_remote.url(), sync_interval=600)
    before = timezone.now()
    with pytest.raises(RemoteUnavailable, match=r"remote unavailable \(breaker forced open by an operator\)"):
        sync_now(fabric)
    fabric.refresh_from_db()
    assert before + timedelta(seconds=600) <= fabric.next_sync_at <= timezone.now() + timedelta(seconds=600)
    assert len(hung_remote.accepted) == 0


@pytest.mark.django_db
def test_a_rejected_sync_is_never_retried_even_when_retries_are_allowed(hung_remote):
    git_breaker(hung_remote.host).force_open()
    fabric = make_fabric(hung_remote.url())
    with pytest.raises(RemoteUnavailable):
        sync_now(fabric, may_retry=True)
    fabric.refresh_from_db()
    assert fabric.sync_status == SyncStatus.NEVER_SYNCED  # not SYNCING/QUEUED, waiting for a retry
    assert fabric.lease_token == ""
    assert [r.status for r in SyncRun.objects.filter(fabric=fabric)] == [RunStatus.SKIPPED]


# --- Only the remote's own failures count ------------------------------------------------


@pytest.mark.django_db
def test_permanent_errors_mean_the_remote_answered_and_never_trip_the_breaker(git_repo):
    repo = git_repo()
    repo.with_switches(1)
    fabric = make_fabric(repo.url, git_branch="no-such-branch")
    for _ in range(6):
        with pytest.raises(PermanentSyncError, match="branch 'no-such-branch' not found"):
            sync_now(fabric)
    metrics = git_breaker("local").metrics
    assert metrics.state is State.CLOSED
    assert metrics.failed_calls == 0
    assert metrics.successful_calls == 6


@pytest.mark.django_db
def test_the_local_cache_reads_need_no_breaker(git_repo):
    """ls-tree and cat-file read the fabric's own cache: an open "local" breaker stops
    ls-remote and fetch only."""
    repo = git_repo()
    repo.with_switches(2)
    source = GitSource(repo.url, "main", django_settings.SYNC_GIT_CACHE_DIR / "local-reads", 10)
    commit = source.fetch()
    git_breaker("local").force_open()
    files = source.manifest_files(commit, "manifests", 1 << 20, 100)
    assert list(source.read_blobs(files)) == ["manifests/switches.yaml"]
    with pytest.raises(RemoteUnavailable):
        source.remote_commit()


# --- The health probe --------------------------------------------------------------------


@pytest.mark.django_db
def test_the_health_probe_reports_an_open_breaker_without_calling_the_remote(hung_remote):
    from core.health import HealthStatus
    from sync.health import _probe_git

    trip(hung_remote)
    open_until = git_breaker(hung_remote.host).metrics.open_until
    assert open_until is not None
    result = _probe_git(hung_remote.url(), ["a"])
    assert result.status == HealthStatus.UNHEALTHY
    assert result.message == f"remote unavailable (breaker open until {open_until.isoformat(timespec='seconds')})"
    assert result.latency_ms < 500
    assert len(hung_remote.accepted) == 5

    git_breaker(hung_remote.host).force_open()
    forced = _probe_git(hung_remote.url(), ["a"])
    assert forced.status == HealthStatus.DEGRADED  # an operator's choice says nothing about the remote
    assert forced.message == "remote unavailable (breaker forced open by an operator)"


# --- The whole path, through a real worker ---------------------------------------------


@pytest.mark.worker
def test_a_tick_skips_fifty_fabrics_on_a_hung_remote_and_syncs_the_healthy_ones_meanwhile(
    worker_factory, git_repo, hung_remote, settings
):
    """Without the breaker each of the 50 would hold a worker process for the whole git
    timeout (50 x 60 s over 2 processes); with it they are skipped in milliseconds, and
    the healthy fabrics, queued after them, are in sync well within one git timeout."""
    git_timeout = 60
    worker = worker_factory(
        SYNC_GIT_TIMEOUT=str(git_timeout),
        SYNC_SOFT_TIME_LIMIT=str(git_timeout + 20),
        SYNC_HARD_TIME_LIMIT=str(git_timeout + 30),
        SYNC_LEASE_SECONDS=str(git_timeout + 40),
    )
    # This process trips the breaker; its config sets the open wait, long enough for the test.
    settings.BREAKER_WAIT_SECONDS = 300
    guards.forget_handles()
    trip(hung_remote)
    open_until = git_breaker(hung_remote.host).metrics.open_until
    assert open_until is not None
    now = timezone.now()
    hung = [
        make_fabric(hung_remote.url(f"acme/fabric-{i}.git"), name=f"hung-{i:02}", now=now - timedelta(minutes=10))
        for i in range(50)
    ]
    healthy = []
    for i in range(3):
        repo = git_repo(f"healthy{i}")
        repo.with_switches(1 + i)
        healthy.append(make_fabric(repo.url, name=f"healthy-{i}", now=now))  # due last: queued behind the 50

    started = time.monotonic()
    summary = run_tick()
    assert summary["metrics"]["sync"]["fabrics_dispatched"] == 53

    def healthy_in_sync() -> bool:
        return Fabric.objects.filter(id__in=[f.id for f in healthy], sync_status=SyncStatus.IN_SYNC).count() == 3

    wait_for(healthy_in_sync, timeout=git_timeout / 2, message=worker.log())
    assert time.monotonic() - started < git_timeout / 2

    def hung_settled() -> bool:
        return not Fabric.objects.filter(
            id__in=[f.id for f in hung], sync_status__in=[SyncStatus.QUEUED, SyncStatus.SYNCING]
        ).exists()

    wait_for(hung_settled, timeout=30, message=worker.log())
    message = f"remote unavailable (breaker open until {open_until.isoformat(timespec='seconds')})"
    for fabric in Fabric.objects.filter(id__in=[f.id for f in hung]):
        assert fabric.last_error == message
        assert fabric.consecutive_failures == 0
        assert fabric.sync_status == SyncStatus.NEVER_SYNCED
        assert fabric.next_sync_at == open_until
        assert fabric.lease_token == ""
    runs = SyncRun.objects.filter(fabric__in=hung)
    assert runs.count() == 50  # one run each: no retry loop
    assert set(runs.values_list("status", flat=True)) == {RunStatus.SKIPPED}
    assert len(hung_remote.accepted) == 5  # only the tripping calls ever reached the remote
    for fabric in healthy:
        fabric.refresh_from_db()
        assert fabric.resources.count() == int(fabric.name[-1]) + 1
