"""A fabric's Git credential reaches a real HTTPS Git server through git's environment only.

The server is ``git http-backend`` behind TLS and HTTP Basic auth (``tests/githttp.py``):
without the right ``Authorization`` header it answers 401, like a Git host would.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.utils import timezone

from core.credentials import git_credential_env
from core.models import Credential
from sync import leases, operations
from sync.errors import PermanentSyncError
from sync.health import _probe_git
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from sync.runner import run_sync
from sync.sources import git as git_module
from sync.sources.git import GitSource
from tests.conftest import wait_for
from tests.factories import make_fabric
from tests.githttp import GitHttpsServer

pytestmark = pytest.mark.django_db

USER, TOKEN = "deploy", "tok3n/with@odd chars+="
KEY = Fernet.generate_key().decode()


@pytest.fixture
def https_git(git_repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[GitHttpsServer, str]]:
    """A served bare copy of a repository with three switches; git in this process trusts the server."""
    repo = git_repo()
    repo.with_switches(3)
    served = tmp_path / "served"
    served.mkdir()
    subprocess.run(["git", "clone", "--quiet", "--bare", str(repo.path), str(served / "fabric.git")], check=True)
    server = GitHttpsServer(served, USER, TOKEN, tmp_path).start()
    server.trust_in_home(tmp_path / "home")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    yield server, server.url_for(served / "fabric.git")
    server.stop()


@pytest.fixture
def git_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, str]]]:
    """Every (argv, env) the sync hands to subprocess for git, still running the real git."""
    calls: list[tuple[list[str], dict[str, str]]] = []
    real_run = subprocess.run

    def recording_run(command: list[str], *args: Any, **kwargs: Any) -> Any:
        calls.append((list(command), dict(kwargs.get("env") or {})))
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(git_module.subprocess, "run", recording_run)
    return calls


def make_credential(secret: str = TOKEN, name: str = "served") -> Credential:
    credential = Credential(name=name, username=USER)
    credential.set_secret(secret)
    credential.save()
    return credential


def sync_now(fabric: Fabric):
    now = timezone.now()
    token = leases.claim_one(fabric.id, now)
    assert token is not None
    assert leases.begin(fabric.id, token, now, "test").outcome is leases.BeginOutcome.STARTED
    return run_sync(fabric.id, token, trigger="manual", worker="test")


def test_git_authenticates_with_the_credential_and_the_token_is_never_in_argv_or_url(https_git, git_calls, tmp_path):
    server, url = https_git
    source = GitSource(url, "main", tmp_path / "cache", 30, extra_env=git_credential_env(make_credential(), url))
    commit = source.fetch()
    assert len(source.manifest_files(commit, "manifests", 1 << 20, 100)) == 1
    assert git_calls
    for argv, env in git_calls:
        assert not any(TOKEN in arg or "tok3n" in arg for arg in argv), argv
        assert not any("tok3n" in value for key, value in env.items() if key != "GIT_CONFIG_VALUE_0")
    network_calls = [env for argv, env in git_calls if "fetch" in argv]
    assert network_calls[0]["GIT_CONFIG_VALUE_0"].startswith("Authorization: Basic ")
    assert any(authorized for _method, _path, authorized in server.requests)


def test_without_the_credential_the_server_refuses_and_the_failure_is_permanent(https_git, tmp_path):
    server, url = https_git
    with pytest.raises(
        PermanentSyncError,
        match=r"Authentication failed: 127.0.0.1 rejected the request \(no Git credential is set\) \(HTTP 401\)",
    ):
        GitSource(url, "main", tmp_path / "cache", 30).remote_commit()
    assert server.requests
    assert not any(authorized for _method, _path, authorized in server.requests)


def test_a_sync_through_the_runner_uses_the_fabrics_credential(https_git, git_calls):
    _server, url = https_git
    fabric = make_fabric(url, git_credential=make_credential())
    result = sync_now(fabric)
    fabric.refresh_from_db()
    assert fabric.sync_status == SyncStatus.IN_SYNC
    assert result.counts.created == 3
    assert sorted(fabric.resources.values_list("name", flat=True)) == ["leaf0", "leaf1", "leaf2"]
    assert not any("tok3n" in arg for argv, _env in git_calls for arg in argv)


def test_a_wrong_token_fails_the_sync_for_good_without_echoing_either_token(https_git, git_calls):
    _server, url = https_git
    fabric = make_fabric(url, git_credential=make_credential(secret="wrong-t0ken"))
    with pytest.raises(PermanentSyncError):
        sync_now(fabric)
    fabric.refresh_from_db()
    run = SyncRun.objects.get(fabric=fabric)
    assert fabric.sync_status == SyncStatus.ERROR
    assert run.status == RunStatus.FAILED
    for text in (fabric.last_error, run.error_message):
        assert text.startswith("Authentication failed: 127.0.0.1 rejected the fabric's Git credential (HTTP 401)")
        assert "wrong-t0ken" not in text
        assert "tok3n" not in text


def test_a_credential_no_key_opens_fails_the_sync_with_its_name(https_git, settings):
    _server, url = https_git
    credential = make_credential()
    settings.SECRET_KEY = "a-different-secret-key"  # the derived key changes: nothing opens the secret
    settings.CREDENTIALS_KEYS = []
    fabric = make_fabric(url, git_credential=credential)
    with pytest.raises(PermanentSyncError, match="credential 'served' cannot be decrypted"):
        sync_now(fabric)


def test_the_git_health_probe_uses_the_credential(https_git):
    _server, url = https_git
    assert _probe_git(url, ["east"], make_credential()).status == "healthy"
    unauthenticated = _probe_git(url, ["east"], None)
    assert unauthenticated.status == "unhealthy"
    assert "tok3n" not in unauthenticated.message


def test_a_row_that_still_holds_credentials_in_its_url_is_refused_at_sync_time_without_echoing_them():
    fabric = make_fabric("https://deploy:0ld-t0ken@127.0.0.1:9/acme/fabric.git")  # the ORM does not validate
    with pytest.raises(PermanentSyncError, match="contains credentials") as caught:
        sync_now(fabric)
    fabric.refresh_from_db()
    for text in (str(caught.value), fabric.last_error, SyncRun.objects.get(fabric=fabric).error_message):
        assert "0ld-t0ken" not in text


@pytest.mark.worker
def test_a_real_worker_syncs_with_the_credential_and_never_logs_it(https_git, worker_factory, settings):
    _server, url = https_git
    settings.CREDENTIALS_KEYS = [KEY]
    fabric = make_fabric(url, git_credential=make_credential())
    worker = worker_factory(CREDENTIALS_KEYS=KEY)  # inherits HOME, so its git trusts the test server

    outcome = operations.enqueue_manual_syncs([fabric], timezone.now())

    assert outcome.enqueued == [fabric.name]
    wait_for(
        lambda: Fabric.objects.get(pk=fabric.pk).sync_status == SyncStatus.IN_SYNC, timeout=60, message=worker.log()
    )
    assert Fabric.objects.get(pk=fabric.pk).resources.count() == 3
    assert "tok3n" not in worker.log()
