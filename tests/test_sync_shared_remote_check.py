"""One ``git ls-remote`` per repository and branch per claim, whatever the number of fabrics on it."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from django.utils import timezone

from sync import leases, remote_check
from sync.models import Fabric, RunStatus, SyncRun
from sync.runner import run_sync
from sync.sources.git import GitSource
from tests.factories import make_fabric

pytestmark = pytest.mark.django_db


@pytest.fixture
def git_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The git subcommand of every git process the sync code starts, in order."""
    calls: list[str] = []
    real_run = subprocess.run

    def counting_run(command: list[str], *args: Any, **kwargs: Any) -> Any:
        if command and command[0] == "git":
            calls.append(subcommand(command[1:]))
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr("sync.sources.git.subprocess.run", counting_run)
    return calls


def subcommand(args: list[str]) -> str:
    """``ls-remote`` of ``git -c a=b --git-dir D ls-remote ...``."""
    rest = iter(args)
    for arg in rest:
        if arg in ("-c", "--git-dir"):
            next(rest, None)
        elif not arg.startswith("-"):
            return arg
    return ""


def sync_claimed(fabrics: list[Fabric]) -> str:
    """Claim the fabrics in one claim, as a tick does, and sync each in turn."""
    now = timezone.now()
    Fabric.objects.filter(id__in=[f.id for f in fabrics]).update(next_sync_at=now)
    claim = leases.claim_ids([f.id for f in fabrics], now, before_claim=lambda token, seconds: None)
    assert sorted(claim.fabric_ids) == sorted(f.id for f in fabrics)
    for fabric in fabrics:
        assert leases.begin(fabric.id, claim.token, timezone.now(), "test").outcome is leases.BeginOutcome.STARTED
        run_sync(fabric.id, claim.token, trigger="schedule", worker="test")
    return claim.token


def test_the_fabrics_of_one_claim_share_one_ls_remote_per_repository(git_repo, git_calls):
    repos = [git_repo(f"shared{i}") for i in range(2)]
    for repo in repos:
        repo.with_switches(2)
    fabrics = [make_fabric(repos[i % 2].url, name=f"shared-{i}") for i in range(6)]

    sync_claimed(fabrics)
    assert git_calls.count("ls-remote") == 2  # one per repository, not one per fabric
    assert git_calls.count("fetch") == 6  # each fabric still fetches into its own cache

    git_calls.clear()
    sync_claimed(fabrics)  # the next tick: a new claim asks each remote again, once
    assert git_calls == ["ls-remote", "ls-remote"]
    assert SyncRun.objects.filter(status=RunStatus.UNCHANGED).count() == 6


def test_a_new_claim_sees_a_commit_pushed_after_the_last_answer(git_repo, git_calls):
    repo = git_repo()
    first = repo.with_switches(1)
    fabrics = [make_fabric(repo.url, name=f"moving-{i}") for i in range(2)]
    sync_claimed(fabrics)
    second = repo.with_switches(3)

    sync_claimed(fabrics)

    for fabric in fabrics:
        fabric.refresh_from_db()
        assert (fabric.current_commit, fabric.resources.count()) == (second, 3)
    assert first != second


def test_different_credentials_never_share_an_answer_and_never_appear_in_its_key(tmp_path):
    def source(secret: str) -> GitSource:
        return GitSource("https://git.example/acme/fabric.git", "main", tmp_path, 5, {"GIT_CONFIG_VALUE_0": secret})

    alice, bob = source("Authorization: Basic YWxpY2U6aHVudGVyMg=="), source("Authorization: Basic Ym9iOnMzY3JldA==")
    assert alice.remote_identity() != bob.remote_identity()
    assert alice.remote_identity() == source("Authorization: Basic YWxpY2U6aHVudGVyMg==").remote_identity()
    key = remote_check._key("token", alice)
    assert "YWxpY2U6aHVudGVyMg" not in key
    assert "git.example" not in key


def test_without_redis_every_fabric_asks_the_remote_itself(git_repo, git_calls, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    repo = git_repo()
    repo.with_switches(1)
    fabrics = [make_fabric(repo.url, name=f"no-redis-{i}") for i in range(3)]

    sync_claimed(fabrics)

    assert git_calls.count("ls-remote") == 3
    for fabric in fabrics:
        fabric.refresh_from_db()
        assert fabric.sync_status == "in_sync"


def test_a_refused_source_is_refused_even_when_an_answer_is_shared(git_repo, settings):
    from sync.errors import PermanentSyncError

    repo = git_repo()
    repo.with_switches(1)
    source = GitSource(repo.url, "main", settings.SYNC_GIT_CACHE_DIR / "x", 5)
    remote_check.branch_commit(source, "claim")
    settings.SYNC_ALLOWED_LOCAL_ROOTS = ["/nowhere"]
    with pytest.raises(PermanentSyncError, match="refused"):
        remote_check.branch_commit(source, "claim")
