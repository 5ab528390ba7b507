"""A Git token never leaks through an exception: not in its text, not through a chained
cause, not in the traceback Celery logs or stores in the result backend.

``subprocess.TimeoutExpired`` carries git's whole command line; it used to be chained
as the ``__cause__`` of the sync's error, so a git timeout wrote the URL, token
included, into the worker's log and into ``celery-task-meta-*`` in Redis.
"""

from __future__ import annotations

import base64
import traceback
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from core.models import Credential
from sync import leases
from sync.errors import PermanentSyncError, SyncError, TransientSyncError
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from sync.runner import run_sync
from sync.sources.git import GitSource
from tests.conftest import wait_for
from tests.factories import make_fabric
from tests.test_sync_breakers import HungServer, forget_breaker, fresh_git_breakers  # noqa: F401  (a fixture)

SECRET = "tok3n-SECRET"
# What git would send: the credential as an HTTP Basic header.
SECRET_FORMS = (SECRET, base64.b64encode(f"deploy:{SECRET}".encode()).decode())

pytestmark = pytest.mark.usefixtures("fresh_git_breakers")


@pytest.fixture
def hung_remote() -> Iterator[HungServer]:
    server = HungServer()
    yield server
    server.close()
    forget_breaker(server.host)


def token_url(server: HungServer) -> str:
    """A URL with the token in it: refused by the admin since credentials moved to
    ``Credential``, but a row written another way (a bulk import) may still hold one."""
    return f"https://deploy:{SECRET}@{server.host}:{server.port}/acme/fabric.git"


def with_credential(server: HungServer, **fields) -> Fabric:
    credential = Credential(name=f"deploy-{server.port}", username="deploy")
    credential.set_secret(SECRET)
    credential.save()
    return make_fabric(server.url(), git_credential=credential, **fields)


def assert_clean(text: str) -> None:
    for form in SECRET_FORMS:
        assert form not in text
    assert "TimeoutExpired" not in text


def everything_said_about(exc: BaseException) -> str:
    """The exception as a logger, Celery or an error tracker (locals included) would show it."""
    shown = traceback.TracebackException.from_exception(exc, capture_locals=True)
    return "".join(shown.format()) + repr(exc.args)


def sync_now(fabric: Fabric, may_retry: bool = False):
    now = timezone.now()
    token = leases.claim_one(fabric.id, now)
    assert token is not None
    assert leases.begin(fabric.id, token, now, "test").outcome is leases.BeginOutcome.STARTED
    return run_sync(fabric.id, token, trigger="manual", worker="test", may_retry=may_retry)


# --- The exceptions themselves -----------------------------------------------------------


def test_a_git_timeout_raises_an_error_with_no_cause_and_no_context(hung_remote, settings):
    source = GitSource(hung_remote.url(), "main", settings.SYNC_GIT_CACHE_DIR, 1)
    with pytest.raises(TransientSyncError, match="git ls-remote timed out after 1 s") as caught:
        source.check_reachable()
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


@pytest.mark.django_db
def test_a_url_holding_a_token_is_refused_before_git_runs_and_the_error_never_shows_it(hung_remote):
    fabric = make_fabric(token_url(hung_remote))
    with pytest.raises(PermanentSyncError, match="Git URL contains credentials") as caught:
        sync_now(fabric)
    assert len(hung_remote.accepted) == 0
    assert_clean(everything_said_about(caught.value))
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    fabric.refresh_from_db()
    assert_clean(fabric.last_error)
    assert_clean(SyncRun.objects.get(fabric=fabric).error_message)


@pytest.mark.django_db
def test_a_timeout_with_a_credential_leaves_no_secret_in_the_error_or_its_traceback(hung_remote, settings):
    settings.SYNC_GIT_TIMEOUT = 1
    fabric = with_credential(hung_remote)
    with pytest.raises(SyncError, match="git ls-remote timed out after 1 s") as caught:
        sync_now(fabric)
    assert len(hung_remote.accepted) == 1
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    assert_clean(everything_said_about(caught.value))


@pytest.mark.django_db
def test_an_unexpected_error_is_logged_redacted_and_raised_unchained(git_repo, monkeypatch, caplog):
    def explode(*args, **kwargs):
        raise RuntimeError(f"boom while reading https://deploy:{SECRET}@git.example.com/r.git")

    repo = git_repo()
    repo.with_switches(1)
    monkeypatch.setattr("sync.runner.parse_manifests", explode)
    fabric = make_fabric(repo.url)
    with pytest.raises(PermanentSyncError, match="unexpected RuntimeError") as caught:
        sync_now(fabric)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    assert_clean(everything_said_about(caught.value))
    assert "boom while reading https://deploy:***@git.example.com" in caplog.text
    assert_clean(caplog.text)


# --- Through a real worker: its log and the result backend ---------------------------------


def redis_contents() -> str:
    """Every string, list and hash value in this session's Redis database (results, retries, breakers)."""
    client = redis.Redis.from_url(settings.CELERY_RESULT_BACKEND)
    values: list[str] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            values.append(repr(client.get(key)))
        elif kind == b"list":
            values.append(repr(client.lrange(key, 0, -1)))
        elif kind == b"hash":
            values.append(repr(client.hgetall(key)))
    return "\n".join(values)


@pytest.mark.worker
def test_a_git_timeout_on_a_worker_leaves_no_token_in_its_log_or_the_result_backend(
    worker_factory, hung_remote, settings
):
    from cryptography.fernet import Fernet

    from sync.tasks import sync_fabric

    key = Fernet.generate_key().decode()  # the worker must open the credential this process stores
    settings.CREDENTIALS_KEYS = [key]
    worker = worker_factory(SYNC_GIT_TIMEOUT="2", SYNC_MAX_RETRIES="1", CREDENTIALS_KEYS=key)
    timed_out = with_credential(hung_remote, name="with-credential")
    in_url = make_fabric(token_url(hung_remote), name="token-in-url")
    results = {}
    for fabric in (timed_out, in_url):
        token = leases.claim_one(fabric.id, timezone.now())
        assert token is not None
        # A sync's result is not stored (ignore_result), but its failure is: read it by id.
        results[fabric.name] = sync_fabric.AsyncResult(sync_fabric.apply_async((fabric.id, token, "manual")).id)

    with pytest.raises(TransientSyncError, match="git ls-remote timed out after 2 s"):
        results["with-credential"].get(timeout=60, propagate=True)
    with pytest.raises(PermanentSyncError, match="Git URL contains credentials"):
        results["token-in-url"].get(timeout=60, propagate=True)
    for name, result in results.items():
        assert result.state == "FAILURE", name
        assert_clean(str(result.traceback or ""))

    timed_out.refresh_from_db()
    assert timed_out.sync_status == SyncStatus.ERROR
    runs = SyncRun.objects.filter(fabric=timed_out).order_by("started_at")
    assert [r.status for r in runs] == [RunStatus.RETRYING, RunStatus.FAILED]
    assert len(hung_remote.accepted) == 2  # the URL with a token never reached git

    def logged_traceback() -> str:
        text = worker.log_path.read_text(errors="replace")
        return text if "raised unexpected: TransientSyncError" in text else ""

    log = wait_for(logged_traceback, timeout=10)  # Celery logs the traceback just after storing the result
    assert "Traceback (most recent call last)" in log
    assert_clean(log)
    stored = redis_contents()
    assert "timed out after 2 s" in stored  # the failure was stored...
    assert_clean(stored)  # ...without the token
