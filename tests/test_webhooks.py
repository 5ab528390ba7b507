"""Git push webhooks: signed pushes from GitHub, GitLab and Gitea make fabrics sync through the tick's lease.

Every request goes through Django's test client to ``/hooks/git/``; claims land in the
test database and messages in this session's own broker, where they are read back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.utils import timezone
from freezegun import freeze_time

from sync import leases, push_sync
from sync.dispatch import dispatch_due_fabrics
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from sync.runner import run_sync
from sync.sources.git import GitSource
from sync.webhooks import normalise_git_url
from tests.conftest import is_postgres, require, wait_for
from tests.factories import make_fabric

URL = "/hooks/git/"
SECRET = "webhook-secret-" + uuid.uuid4().hex
COMMIT = "c0ffee" * 6 + "abcd"
HOSTS = {"github": "github.com", "gitea": "gitea.example.net", "gitlab": "gitlab.example.com"}


@pytest.fixture(autouse=True)
def _webhook_secret(settings: Any) -> None:
    settings.SYNC_WEBHOOK_SECRET = SECRET
    settings.SYNC_WEBHOOK_DEBOUNCE_SECONDS = 5


@pytest.fixture
def repo() -> str:
    """A repository path of this test's own: debounce keys outlive a test in Redis."""
    return f"acme/fabric-{uuid.uuid4().hex[:12]}"


def payload(forge: str, repo: str, branch: str = "main", host: str = "", clone_url: str = "") -> dict[str, Any]:
    host = host or HOSTS[forge]
    https, ssh, web = f"https://{host}/{repo}.git", f"git@{host}:{repo}.git", f"https://{host}/{repo}"
    ref = branch if branch.startswith("refs/") else f"refs/heads/{branch}"
    if forge == "gitlab":
        project = {"git_http_url": clone_url or https, "git_ssh_url": ssh, "web_url": web}
        return {"object_kind": "push", "ref": ref, "after": COMMIT, "user_username": "alice", "project": project}
    repository = {"clone_url": clone_url or https, "ssh_url": ssh, "html_url": web}
    return {"ref": ref, "after": COMMIT, "repository": repository, "pusher": {"login": "alice", "name": "alice"}}


def signature(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send(
    forge: str,
    data: dict[str, Any],
    *,
    sign: str | None = None,
    event: str | None = None,
    client: Client | None = None,
) -> Any:
    """POST ``data`` as ``forge`` would, signed with SECRET unless ``sign`` says otherwise ("" = unsigned)."""
    body = json.dumps(data).encode()
    if forge == "github":
        headers = {"X-GitHub-Event": event or "push", "X-GitHub-Delivery": str(uuid.uuid4())}
        if sign != "":
            headers["X-Hub-Signature-256"] = sign or f"sha256={signature(body)}"
    elif forge == "gitea":
        # Gitea also sends GitHub's event header; its own signature is what we check.
        headers = {"X-Gitea-Event": event or "push", "X-GitHub-Event": event or "push"}
        if sign != "":
            headers["X-Gitea-Signature"] = sign or signature(body)
    else:
        headers = {"X-Gitlab-Event": event or "Push Hook"}
        if sign != "":
            headers["X-Gitlab-Token"] = sign or SECRET
    return (client or Client()).post(URL, data=body, content_type="application/json", headers=headers)


def sync_messages() -> dict[str, tuple[Any, ...]]:
    """Every ``sync.sync_fabric`` message waiting in this session's broker, by delivery tag: its args."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue = settings.CELERY_TASK_ROUTES["sync.*"]["queue"]
    found: dict[str, tuple[Any, ...]] = {}
    for key in [queue, *(f"{queue}\x06\x16{priority}" for priority in (3, 6, 9))]:
        for raw in client.lrange(key, 0, -1):
            message = json.loads(raw)
            if message["headers"].get("task") == "sync.sync_fabric":
                args = json.loads(base64.b64decode(message["body"]))[0]
                found[message["properties"]["delivery_tag"]] = tuple(args)
    return found


@pytest.fixture
def published(private_broker: None) -> Callable[[], list[tuple[Any, ...]]]:
    """The ``(fabric_id, token, trigger)`` of every sync message published since the test began."""
    before = set(sync_messages())
    return lambda: [args for tag, args in sync_messages().items() if tag not in before]


# --- Signatures -------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("forge", ["github", "gitea", "gitlab"])
def test_a_signed_push_claims_the_matching_fabric_and_publishes_one_webhook_sync(forge, repo, published):
    fabric = make_fabric(f"https://{HOSTS[forge]}/{repo}.git", now=timezone.now() + timedelta(hours=1))

    response = send(forge, payload(forge, repo))

    assert response.status_code == 200, response.content
    fabric.refresh_from_db()
    assert response.json() == {
        "event": "Push Hook" if forge == "gitlab" else "push",
        "repository": f"{HOSTS[forge]}/{repo}",
        "branch": "main",
        "fabrics_matched": 1,
        "claimed": [fabric.id],
        "already_claimed": [],
        "debounced": False,
    }
    assert fabric.sync_status == SyncStatus.QUEUED
    assert fabric.lease_token
    assert published() == [(fabric.id, fabric.lease_token, "webhook")]
    entry = LogEntry.objects.get(object_id=str(fabric.id))
    assert entry.change_message == f"Sync on push: {forge} push to main @ {COMMIT[:12]} by alice"
    user = get_user_model().objects.get(pk=entry.user_id)
    assert (user.get_username(), user.is_active, user.has_usable_password()) == ("webhook", False, False)


@pytest.mark.django_db
@pytest.mark.parametrize("forge", ["github", "gitea", "gitlab"])
@pytest.mark.parametrize(
    ("sign", "error"),
    [("", "missing signature"), ("wrong", "invalid signature"), ("other-secret", "invalid signature")],
)
def test_a_push_with_a_missing_or_wrong_signature_is_refused_and_claims_nothing(forge, sign, error, repo, published):
    due_at = timezone.now() + timedelta(hours=1)
    fabric = make_fabric(f"https://{HOSTS[forge]}/{repo}.git", now=due_at)
    data = payload(forge, repo)
    if sign == "other-secret":  # a genuine signature, made with another secret
        body = json.dumps(data).encode()
        sign = {"github": f"sha256={signature(body, 'x')}", "gitea": signature(body, "x"), "gitlab": "x"}[forge]
    elif sign == "wrong" and forge == "github":
        sign = "sha256=" + "0" * 64

    response = send(forge, data, sign=sign)

    assert (response.status_code, response.json()) == (403, {"error": error})
    fabric.refresh_from_db()
    assert (fabric.lease_token, fabric.sync_status, fabric.next_sync_at) == ("", SyncStatus.NEVER_SYNCED, due_at)
    assert published() == []
    assert not LogEntry.objects.exists()


@pytest.mark.django_db
def test_a_signature_over_another_body_is_refused(repo):
    make_fabric(f"https://github.com/{repo}.git")
    forged = payload("github", repo)
    genuine = json.dumps({**forged, "ref": "refs/heads/other"}).encode()
    response = send("github", forged, sign=f"sha256={signature(genuine)}")
    assert response.status_code == 403


@pytest.mark.django_db
def test_without_a_configured_secret_every_webhook_is_refused(settings, repo):
    settings.SYNC_WEBHOOK_SECRET = ""
    fabric = make_fabric(f"https://github.com/{repo}.git")
    body = json.dumps(payload("github", repo)).encode()
    response = Client().post(
        URL,
        data=body,
        content_type="application/json",
        headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={signature(body, '')}"},
    )
    assert (response.status_code, response.json()) == (403, {"error": "webhook secret not configured"})
    assert Fabric.objects.get(id=fabric.id).lease_token == ""


@pytest.mark.django_db
def test_a_request_from_no_known_forge_is_refused(repo):
    response = Client().post(URL, data=json.dumps(payload("github", repo)), content_type="application/json")
    assert (response.status_code, response.json()) == (403, {"error": "missing signature"})


def test_only_post_is_allowed():
    assert Client().get(URL).status_code == 405


@pytest.mark.django_db
def test_the_endpoint_answers_without_its_trailing_slash_too(repo):
    """A forge does not follow the redirect that APPEND_SLASH would answer a POST with."""
    fabric = make_fabric(f"https://github.com/{repo}.git")
    body = json.dumps(payload("github", repo)).encode()
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={signature(body)}"}
    response = Client().post(URL.rstrip("/"), data=body, content_type="application/json", headers=headers)
    assert response.json()["claimed"] == [fabric.id]


# --- What is a push -----------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("forge", "event"), [("github", "ping"), ("gitea", "issues"), ("gitlab", "Tag Push Hook")])
def test_other_events_are_ignored_with_202(forge, event, repo):
    fabric = make_fabric(f"https://{HOSTS[forge]}/{repo}.git")
    response = send(forge, payload(forge, repo), event=event)
    assert (response.status_code, response.json()) == (
        202,
        {"event": event, "ignored": True, "reason": "not a push event"},
    )
    assert Fabric.objects.get(id=fabric.id).lease_token == ""


@pytest.mark.django_db
def test_a_pushed_tag_is_ignored(repo):
    fabric = make_fabric(f"https://github.com/{repo}.git")
    response = send("github", payload("github", repo, branch="refs/tags/v1.0"))
    assert response.status_code == 202
    assert response.json()["reason"] == "not a branch: refs/tags/v1.0"
    assert Fabric.objects.get(id=fabric.id).lease_token == ""


@pytest.mark.django_db
def test_a_signed_body_that_is_not_a_push_payload_is_a_bad_request():
    assert send("github", {"zen": "no ref"}).json() == {"error": "the payload has no ref"}
    response = send("github", {"ref": "refs/heads/main", "repository": {"clone_url": 42}})
    assert (response.status_code, response.json()) == (400, {"error": "the payload names no repository URL"})


@pytest.mark.django_db
def test_a_form_encoded_github_payload_is_read_too(repo, published):
    fabric = make_fabric(f"https://github.com/{repo}")
    body = urlencode({"payload": json.dumps(payload("github", repo))}).encode()
    response = Client().post(
        URL,
        data=body,
        content_type="application/x-www-form-urlencoded",
        headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={signature(body)}"},
    )
    assert response.json()["claimed"] == [fabric.id]


# --- Matching -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://github.com/Acme/Fabric.git", "github.com/acme/fabric"),
        ("https://GitHub.com/acme/fabric/", "github.com/acme/fabric"),
        ("https://ci-bot@github.com:443/acme/fabric.git/", "github.com/acme/fabric"),
        ("ssh://git@github.com:2222/acme/fabric.git", "github.com/acme/fabric"),
        ("git@github.com:acme/fabric.git", "github.com/acme/fabric"),
        ("github.com:acme/fabric", "github.com/acme/fabric"),
        ("https://gitlab.example.com/group/sub/fabric.git", "gitlab.example.com/group/sub/fabric"),
        ("/srv/Git/fabric.git", "file:///srv/Git/fabric"),
        ("file:///srv/Git/fabric/", "file:///srv/Git/fabric"),
        ("https://github.com/", None),
        ("not a url", None),
        ("", None),
    ],
)
def test_git_urls_normalise_to_one_key_per_repository(url, key):
    assert normalise_git_url(url) == key


@pytest.mark.django_db
@pytest.mark.parametrize(
    "spelling",
    [
        "https://github.com/{repo}.git",
        "https://github.com/{repo}",
        "https://GITHUB.COM/{repo}/",
        "ssh://git@github.com/{repo}.git",
        "ssh://git@github.com:22/{repo}",
        "git@github.com:{repo}.git",
        "https://deploy@github.com/{repo}.git",
    ],
)
def test_a_fabric_matches_whichever_way_its_url_is_spelled(spelling, repo):
    fabric = make_fabric(spelling.format(repo=repo))
    assert send("github", payload("github", repo)).json()["claimed"] == [fabric.id]


@pytest.mark.django_db
def test_only_fabrics_of_the_pushed_repository_and_branch_sync(repo):
    now = timezone.now() + timedelta(hours=1)
    pushed = make_fabric(f"https://github.com/{repo}.git", now=now)
    others = [
        make_fabric(f"https://github.com/{repo}.git", git_branch="production", now=now),
        make_fabric(f"https://github.com/{repo}-staging.git", now=now),
        make_fabric(f"https://github.com/other/{repo.split('/')[1]}.git", now=now),
        make_fabric(f"https://gitlab.com/{repo}.git", now=now),
        make_fabric(f"https://github.com/{repo}.git", sync_enabled=False, now=now),
        make_fabric(f"https://github.com/{repo}.git", sync_status=SyncStatus.SUSPENDED, now=now),
    ]

    body = send("github", payload("github", repo)).json()

    assert (body["fabrics_matched"], body["claimed"]) == (1, [pushed.id])
    for other in Fabric.objects.filter(id__in=[o.id for o in others]):
        assert (other.lease_token, other.next_sync_at) == ("", now), other.git_url


@pytest.mark.django_db
def test_a_push_to_a_branch_no_fabric_follows_changes_nothing(repo, published):
    fabric = make_fabric(f"https://github.com/{repo}.git", git_branch="main")
    body = send("github", payload("github", repo, branch="feature/x")).json()
    assert (body["branch"], body["fabrics_matched"], body["claimed"]) == ("feature/x", 0, [])
    assert Fabric.objects.get(id=fabric.id).lease_token == ""
    assert published() == []


# --- Debounce, held claims, backoff -----------------------------------------------------


@pytest.mark.django_db
def test_repeated_pushes_within_the_debounce_window_dispatch_once(settings, repo, published):
    settings.SYNC_WEBHOOK_DEBOUNCE_SECONDS = 1
    fabric = make_fabric(f"https://github.com/{repo}.git")

    first = send("github", payload("github", repo)).json()
    second = send("gitea", payload("gitea", repo, host="github.com")).json()  # same repository, same branch

    assert (first["claimed"], first["debounced"]) == ([fabric.id], False)
    assert (second["fabrics_matched"], second["claimed"], second["debounced"]) == (1, [], True)
    assert len(published()) == 1
    # Another branch of the same repository has a window of its own.
    assert send("github", payload("github", repo, branch="other")).json()["debounced"] is False

    time.sleep(1.2)  # the window is a Redis TTL: the server's clock, not freezegun's
    third = send("github", payload("github", repo)).json()
    # Past the window the push claims again; the first claim still holds, so no second sync is sent.
    assert (third["debounced"], third["claimed"], third["already_claimed"]) == (False, [], [fabric.id])
    assert len(published()) == 1


@pytest.mark.django_db
def test_a_push_while_the_claim_is_held_makes_the_fabric_due_for_the_tick_after_it(repo, published):
    fabric = make_fabric(f"https://github.com/{repo}.git", now=timezone.now() + timedelta(hours=1))
    token = leases.claim_one(fabric.id, timezone.now())

    pushed_at = timezone.now()
    body = send("github", payload("github", repo)).json()

    assert (body["claimed"], body["already_claimed"], body["debounced"]) == ([], [fabric.id], False)
    fabric.refresh_from_db()
    assert fabric.lease_token == token  # the held claim is untouched
    assert pushed_at <= fabric.next_sync_at <= timezone.now()
    assert published() == []
    assert not LogEntry.objects.exists()  # nothing was triggered


@pytest.mark.django_db
def test_a_push_during_a_running_sync_is_synced_again_by_the_next_tick(git_repo, monkeypatch):
    """The sync read the remote before the pushed commit, so its success must not push the due time out."""
    source = git_repo()
    source.with_switches(1)
    fabric = make_fabric(source.url)
    due_at = fabric.next_sync_at
    now = timezone.now()
    token = leases.claim_due(now).token
    assert leases.begin(fabric.id, token, now, "test").outcome is leases.BeginOutcome.STARTED
    responses = []
    remote_commit = GitSource.remote_commit

    def push_arrives_meanwhile(self: GitSource) -> str:
        commit = remote_commit(self)
        source.with_switches(2)
        responses.append(send("github", payload("github", "unused", clone_url=source.url)).json())
        return commit

    monkeypatch.setattr(GitSource, "remote_commit", push_arrives_meanwhile)
    run_sync(fabric.id, token, trigger="schedule", worker="test")

    assert responses[0]["already_claimed"] == [fabric.id]
    fabric.refresh_from_db()
    assert fabric.sync_status == SyncStatus.IN_SYNC
    assert fabric.next_sync_at < due_at + timedelta(seconds=fabric.sync_interval)
    assert leases.due_fabrics(timezone.now()).filter(id=fabric.id).exists()


@pytest.mark.django_db
def test_a_push_cuts_a_failure_backoff_short_and_keeps_the_failure_count(repo, published):
    failed_at = timezone.now().replace(microsecond=0)
    failing = make_fabric(
        f"https://github.com/{repo}.git",
        now=failed_at + timedelta(seconds=2400),  # the backoff after a third consecutive failure
        sync_status=SyncStatus.ERROR,
        consecutive_failures=3,
        last_error="branch 'main' not found",
    )
    pushed_at = failed_at + timedelta(seconds=90)

    with freeze_time(pushed_at):
        assert not leases.due_fabrics(pushed_at).filter(id=failing.id).exists()  # still backing off
        body = send("github", payload("github", repo)).json()

    assert body["claimed"] == [failing.id]
    failing.refresh_from_db()
    assert failing.next_sync_at == pushed_at
    assert (failing.sync_status, failing.consecutive_failures) == (SyncStatus.QUEUED, 3)
    assert published() == [(failing.id, failing.lease_token, "webhook")]


# --- The tick and the webhook at once ---------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("first", ["tick", "webhook"])
def test_a_tick_and_a_push_for_the_same_due_fabric_sync_it_once(first, repo, published):
    fabric = make_fabric(f"https://github.com/{repo}.git", now=timezone.now() - timedelta(seconds=1))
    steps = {
        "tick": lambda: dispatch_due_fabrics(timezone.now()),
        "webhook": lambda: send("github", payload("github", repo)).json(),
    }
    results = {name: steps[name]() for name in [first, *(set(steps) - {first})]}

    fabric.refresh_from_db()
    assert published() == [(fabric.id, fabric.lease_token, "schedule" if first == "tick" else "webhook")]
    if first == "tick":
        assert results["tick"]["fabrics_dispatched"] == 1
        assert (results["webhook"]["claimed"], results["webhook"]["already_claimed"]) == ([], [fabric.id])
    else:
        assert results["webhook"]["claimed"] == [fabric.id]
        assert results["tick"]["fabrics_dispatched"] == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_ticks_and_pushes_on_postgresql_claim_each_fabric_exactly_once(settings, repo, published):
    """A tick and three pushes (debounce off) race for 60 due fabrics of one repository, each on its own connection."""
    require(is_postgres(), "lease races need PostgreSQL (set DATABASE_URL)")
    settings.SYNC_WEBHOOK_DEBOUNCE_SECONDS = 0
    due = timezone.now() - timedelta(seconds=1)
    Fabric.objects.bulk_create(
        Fabric(name=f"push-race-{i}", git_url=f"https://github.com/{repo}.git", next_sync_at=due) for i in range(60)
    )
    start = threading.Barrier(4)
    errors: list[BaseException] = []
    answers: list[object] = []

    def racer(step: Callable[[], object]) -> None:
        try:
            start.wait()
            answers.append(step())
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    steps: list[Callable[[], object]] = [lambda: dispatch_due_fabrics(timezone.now())]
    steps += [lambda: send("github", payload("github", repo), client=Client()).status_code for _ in range(3)]
    threads = [threading.Thread(target=racer, args=(step,)) for step in steps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert [answer for answer in answers if isinstance(answer, int)] == [200, 200, 200]  # the pushes' statuses
    tokens = dict(Fabric.objects.values_list("id", "lease_token"))
    messages = published()
    assert sorted(fabric_id for fabric_id, _, _ in messages) == sorted(tokens)  # one message per fabric
    assert all(token == tokens[fabric_id] for fabric_id, token, _ in messages)


@pytest.mark.django_db
def test_a_push_the_broker_cannot_take_answers_503_and_leaves_the_fabric_due_for_the_tick(settings, repo):
    fabric = make_fabric(f"https://github.com/{repo}.git", now=timezone.now() + timedelta(hours=1))
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"

    response = send("github", payload("github", repo))

    assert response.status_code == 503
    fabric.refresh_from_db()
    assert fabric.lease_token == ""
    assert fabric.next_sync_at <= timezone.now()


# --- Secrets ------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_secret_and_the_signatures_never_reach_the_logs(caplog, repo):
    caplog.set_level(logging.DEBUG)
    make_fabric(f"https://github.com/{repo}.git")
    data = payload("github", repo)
    genuine = signature(json.dumps(data).encode())
    guessed = "f" * 64

    responses = [
        send("github", data),
        send("github", data, sign=f"sha256={guessed}"),
        send("gitea", payload("gitea", repo), sign=guessed),
        send("gitlab", payload("gitlab", repo), sign="a-guessed-token"),
    ]

    assert [r.status_code for r in responses] == [200, 403, 403, 403]
    assert "git webhook refused: invalid signature" in caplog.text  # the view's log was captured
    for secret in (SECRET, genuine, guessed, "a-guessed-token"):
        assert secret not in caplog.text
        assert all(secret not in r.content.decode() for r in responses)


# --- Through a real worker ----------------------------------------------------------


@pytest.mark.worker
def test_a_push_syncs_the_fabric_on_a_real_worker_as_a_webhook_run(celery_worker, git_repo):
    source = git_repo()
    commit = source.with_switches(2)
    fabric = make_fabric(source.url, now=timezone.now() + timedelta(hours=1))

    body = send("github", payload("github", "unused", clone_url=source.url)).json()

    assert body["claimed"] == [fabric.id]
    wait_for(lambda: Fabric.objects.filter(id=fabric.id, sync_status=SyncStatus.IN_SYNC).exists())
    run = SyncRun.objects.get(fabric=fabric)
    assert (run.trigger, run.status, run.commit) == ("webhook", RunStatus.SUCCESS, commit)


@pytest.mark.django_db
def test_a_delivery_racing_another_of_the_same_push_still_claims_its_fabrics(repo, published, monkeypatch):
    """Two deliveries of one push at the same instant (two hooks, or a forge's retry): the
    other one's UPDATE made the fabrics due a few milliseconds after this delivery's
    ``now``, between this delivery's own UPDATE and its claim. Before the second look
    this claim found them not yet due and claimed nothing: they waited for the next
    tick (40 fabrics of one repository in the chaos suite's full profile)."""
    fabrics = [make_fabric(f"https://github.com/{repo}.git", now=timezone.now() + timedelta(hours=1)) for _ in range(3)]
    debounce = push_sync.first_in_window

    def the_other_delivery_updates_first(push: Any) -> bool:
        later = timezone.now() + timedelta(milliseconds=5)
        Fabric.objects.filter(id__in=[fabric.id for fabric in fabrics]).update(next_sync_at=later)
        return bool(debounce(push))

    monkeypatch.setattr(push_sync, "first_in_window", the_other_delivery_updates_first)
    body = send("github", payload("github", repo)).json()

    ids = sorted(fabric.id for fabric in fabrics)
    assert (sorted(body["claimed"]), body["already_claimed"], body["debounced"]) == (ids, [], False)
    assert sorted(fabric_id for fabric_id, _, _ in published()) == ids
    assert set(Fabric.objects.values_list("sync_status", flat=True)) == {SyncStatus.QUEUED}
