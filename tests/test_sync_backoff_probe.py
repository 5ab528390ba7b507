"""A fabric in failure backoff whose remote has a new commit is due at once (sync.backoff_probe).

Real: fabrics sync from real Git repositories through the runner; the failure is a
real one (a manifest that does not parse), recorded with the commit it failed on;
the fix is a real commit; the probe asks the real remote with ``git ls-remote``.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from core.clients import redis_client
from sync import backoff_probe
from sync.errors import PermanentSyncError
from sync.models import Fabric, SyncStatus
from tests.factories import make_fabric
from tests.gitrepo import GitRepo
from tests.livefabric import sync_now

pytestmark = pytest.mark.django_db


def _broken_repo(git_repo) -> GitRepo:
    repo = git_repo()
    repo.with_switches(2)
    repo.write("manifests/broken.yaml", "kind: Switch\nmetadata: {name: [unclosed\n")
    repo.commit("a typo")
    return repo


def _fail(fabric: Fabric) -> Fabric:
    with pytest.raises(PermanentSyncError):
        sync_now(fabric)
    fabric.refresh_from_db()
    assert fabric.sync_status == SyncStatus.ERROR
    assert fabric.next_sync_at > timezone.now(), "a failed fabric backs off"
    return fabric


def test_a_fix_committed_to_a_backed_off_fabric_makes_it_due_and_the_next_sync_succeeds(git_repo):
    repo = _broken_repo(git_repo)
    fabric = _fail(make_fabric(repo.url))
    twin = _fail(make_fabric(repo.url))  # same remote: asked once for both

    now = timezone.now()
    assert backoff_probe.probe(now) == {"remotes_asked": 1, "remote_errors": 0, "fabrics_made_due": 0}
    for unchanged in (fabric, twin):
        unchanged.refresh_from_db()
        assert unchanged.next_sync_at > now  # same commit: the backoff stands

    repo.remove("manifests/broken.yaml")
    repo.commit("fix the typo")
    assert backoff_probe.probe(timezone.now()) == {"remotes_asked": 1, "remote_errors": 0, "fabrics_made_due": 2}
    fabric.refresh_from_db()
    assert fabric.next_sync_at <= timezone.now()
    assert fabric.consecutive_failures == 1  # the next outcome resets it, not the probe
    sync_now(fabric)
    fabric.refresh_from_db()
    assert (fabric.sync_status, fabric.consecutive_failures) == (SyncStatus.IN_SYNC, 0)


def test_suspended_leased_and_commitless_failures_are_not_probed(git_repo):
    repo = _broken_repo(git_repo)
    suspended = _fail(make_fabric(repo.url))
    Fabric.objects.filter(id=suspended.id).update(sync_status=SyncStatus.SUSPENDED)
    leased = _fail(make_fabric(repo.url))
    Fabric.objects.filter(id=leased.id).update(lease_token="someone-elses")
    unreachable = make_fabric(str(repo.path.parent / "missing"))
    with pytest.raises(PermanentSyncError):
        sync_now(unreachable)  # fails before any commit is known
    repo.remove("manifests/broken.yaml")
    repo.commit("fix the typo")

    now = timezone.now()
    assert list(backoff_probe.in_backoff(now)) == []
    assert backoff_probe.probe(now)["fabrics_made_due"] == 0


def test_an_unreachable_remote_changes_nothing(git_repo, tmp_path):
    repo = _broken_repo(git_repo)
    fabric = _fail(make_fabric(repo.url))
    moved = tmp_path / "moved"
    repo.path.rename(moved)  # the remote is gone

    result = backoff_probe.probe(timezone.now())

    assert result == {"remotes_asked": 1, "remote_errors": 1, "fabrics_made_due": 0}
    before = fabric.next_sync_at
    fabric.refresh_from_db()
    assert fabric.next_sync_at == before


def test_the_tick_sends_one_probe_per_period_and_none_without_backoff(git_repo, settings):
    redis_client().delete(cache.make_key(backoff_probe.PROBE_KEY))
    now = timezone.now()
    assert backoff_probe.send_probe(now) == {"probe_sent": 0}  # nothing in backoff
    _fail(make_fabric(_broken_repo(git_repo).url))
    settings.CELERY_TASK_ALWAYS_EAGER = True  # the probe runs here, not on a worker
    try:
        assert backoff_probe.send_probe(now) == {"probe_sent": 1}
        assert backoff_probe.send_probe(now + timedelta(seconds=1)) == {"probe_sent": 0}  # another tick, same period
    finally:
        redis_client().delete(cache.make_key(backoff_probe.PROBE_KEY))
