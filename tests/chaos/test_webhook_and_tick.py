"""Git pushes and ticks together: webhooks through a real web server while several ticks claim.

Real: the project's web process (``deploy/compose.yaml``'s gunicorn command) on the
private stack, GitHub push deliveries signed and sent over HTTP (each one twice at the
same instant, as a forge's redelivery or two hooks on one repository do), several
``manage.py tick`` processes started at that same instant (several beats), several
workers, and real commits to real Git repositories while their fabrics sync; in each
round a second push lands while the first push's syncs are running.

The fabrics' interval is an hour, so after their first sync only a push makes them
due: a push that was lost (dropped while its fabric's claim was held, or overwritten
by a sync that had read the remote before it) shows as a fabric that never reaches its
repository's last commit.

Invariants: the pushes' claims are disjoint and, with the ticks', cover every pushed
fabric; one delivery per repository dispatches, the other is debounced; no fabric
synced twice at once; nothing stuck; no failed, lost or retried run; every fabric
synced its repository's last pushed commit within 2 ticks plus the drain after the
round's last push.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import requests
from django.utils import timezone

from project.embedded import free_port
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from tests.chaos.conftest import make_fabrics
from tests.chaos.invariants import assert_healthy_history, describe, report
from tests.chaos.scale import ChaosScale
from tests.chaos.stack import PYTHON, ROOT, ChaosStack, Proc
from tests.conftest import wait_for
from tests.gitrepo import GitRepo, manifest

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]

BEATS = 3
DELIVERIES = 2  # each push delivered twice at once
DEBOUNCE_SECONDS = 5  # SYNC_WEBHOOK_DEBOUNCE_SECONDS's default
TICK_EVERY = 5.0  # the convergence loop's beat: the bound is counted in ticks of it
FILES = 100  # manifests per repository
DRAIN_SECONDS = 60  # the workers syncing every fabric once more, on a loaded 2-core host
SECRET = "chaos-webhook-" + uuid.uuid4().hex


def start_web(stack: ChaosStack) -> str:
    """The web service of deploy/compose.yaml on the stack; returns its base URL."""
    port = free_port()
    argv = [PYTHON, "-m", "gunicorn", "project.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    web = Proc("web", argv, stack.env(SYNC_WEBHOOK_SECRET=SECRET), stack.root / "web.log")
    stack.procs.append(web)
    web.start()
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return requests.get(f"{base}/hooks/git/", timeout=2).status_code == 405  # GET: 405 once it serves
        except requests.ConnectionError:
            return False

    wait_for(answers, timeout=60, interval=0.5, message=f"the web process did not answer:\n{web.log()}")
    return base


def push(base: str, repo: GitRepo, commit: str) -> dict[str, Any]:
    """What GitHub sends after a push to ``repo``'s main branch, signed with the secret."""
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "after": commit,
            "repository": {"clone_url": repo.url, "ssh_url": repo.url, "html_url": repo.url},
            "pusher": {"name": "chaos"},
        }
    ).encode()
    response = requests.post(
        f"{base}/hooks/git/",
        data=body,
        timeout=60,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
        },
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def run_tick(stack: ChaosStack) -> int:
    """One ``manage.py tick`` process; the number of fabrics it claimed."""
    result = subprocess.run(
        [PYTHON, "manage.py", "tick"], cwd=ROOT, env=stack.env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return int(json.loads(result.stdout)["metrics"]["sync"]["fabrics_dispatched"])


def commit_change(repo: GitRepo, label: str) -> str:
    """A commit that changes every manifest, so each sync of it reads, parses and writes
    them all: long enough after its fetch for the next push to land while it runs."""
    for number in range(FILES):
        repo.write(f"fabric/switch-{number}.yaml", manifest("Switch", f"leaf-{number}", role=f"leaf-{label}"))
    return repo.commit(f"push {label}")


def behind(heads: dict[str, str]) -> list[str]:
    """Fabrics whose last synced commit is not their repository's head."""
    return [name for name, url, commit in Fabric.objects.values_list("name", "git_url", "current_commit")
            if commit != heads[url]]  # fmt: skip


def settled(heads: dict[str, str]) -> bool:
    """Every fabric at its head, none claimed, none due: nothing more will happen."""
    now = timezone.now()
    return not (
        behind(heads)
        or Fabric.objects.filter(sync_status__in=[SyncStatus.QUEUED, SyncStatus.SYNCING]).exists()
        or Fabric.objects.filter(next_sync_at__lte=now).exists()
    )


def converge(stack: ChaosStack, heads: dict[str, str], bound: float, since: float | None = None) -> tuple[float, int]:
    """Tick every TICK_EVERY seconds until settled; (seconds since ``since``, ticks) it took."""
    started, ticks = time.monotonic() if since is None else since, 0
    while not settled(heads):
        elapsed = time.monotonic() - started
        assert elapsed <= bound, (
            f"not settled {elapsed:.0f} s after the last push (bound {bound:.0f} s): {describe(behind(heads))}"
        )
        run_tick(stack)
        ticks += 1
        time.sleep(TICK_EVERY)
    return time.monotonic() - started, ticks


def test_pushes_and_ticks_at_once_claim_each_fabric_once_and_lose_no_push(
    chaos_stack: ChaosStack, chaos_scale: ChaosScale
) -> None:
    count = chaos_scale.n(30, minimum=10)
    repo_count = 3
    make_fabrics(chaos_stack, count, repos=repo_count, interval=3600, files=FILES)
    repos = [GitRepo(chaos_stack.repos / f"fabric-repo-{index}") for index in range(repo_count)]
    for index in range(chaos_scale.workers):
        chaos_stack.start_worker(f"worker{index}", concurrency=2)
    base = start_web(chaos_stack)
    heads = {repo.url: repo.head() for repo in repos}
    bound = 2 * TICK_EVERY + chaos_scale.drain(DRAIN_SECONDS)

    with chaos_stack.orm():
        converge(chaos_stack, heads, bound)  # the first sync of every fabric
        first_sync_ended = timezone.now()
        pushes = 0
        for number in range(chaos_scale.rounds):
            wait_for(  # the last round's debounce window has closed (its key expired)
                lambda: not chaos_stack.redis.client().keys("*sync:webhook:*"),
                timeout=DEBOUNCE_SECONDS + 5,
                message="the debounce window never closed",
            )
            heads = {repo.url: commit_change(repo, f"{number}a") for repo in repos}
            with ThreadPoolExecutor(max_workers=BEATS + DELIVERIES * repo_count) as pool:
                ticks = [pool.submit(run_tick, chaos_stack) for _ in range(BEATS)]
                deliveries = [
                    pool.submit(push, base, repo, heads[repo.url]) for repo in repos for _ in range(DELIVERIES)
                ]
                answers = [delivery.result() for delivery in deliveries]
                # A second push while those claims are held: a sync that read the remote
                # before this commit must leave its fabric due, not in sync.
                held = Fabric.objects.filter(sync_status__in=[SyncStatus.QUEUED, SyncStatus.SYNCING]).count()
                heads = {repo.url: commit_change(repo, f"{number}b") for repo in repos}
                for repo in repos:
                    push(base, repo, heads[repo.url])
                last_push = time.monotonic()
                tick_claims = sum(tick.result() for tick in ticks)
            pushes += len(answers) + repo_count
            assert held > 0, "every sync had ended before the second push: nothing was tested"
            claimed = [fabric_id for answer in answers for fabric_id in answer["claimed"]]
            assert len(claimed) == len(set(claimed)), f"a fabric claimed by two pushes: {answers}"
            assert sum(not answer["debounced"] for answer in answers) == repo_count, answers
            assert all(answer["fabrics_matched"] == len(answer["claimed"]) + len(answer["already_claimed"])
                       for answer in answers if not answer["debounced"]), answers  # fmt: skip
            # Every pushed fabric was claimed: by its push or by a tick that saw it due. A
            # tick may claim a fabric once more when a later delivery made it due again
            # after its sync had ended (a push cannot know whether a sync read its
            # commit); never while the first claim is held (no overlap, asserted from
            # the history).
            assert len(claimed) + tick_claims >= count, (len(claimed), tick_claims, answers)
            seconds, convergence_ticks = converge(chaos_stack, heads, bound, since=last_push)
            report(f"webhook round {number + 1}: second push with {held} of {count} claims held; all at the last"
                   " pushed commit", seconds, convergence_ticks)  # fmt: skip

        assert_healthy_history()
        runs = SyncRun.objects.filter(started_at__gte=first_sync_ended - timedelta(seconds=1))
        not_synced = runs.exclude(status__in=[RunStatus.SUCCESS, RunStatus.UNCHANGED])
        bad = list(not_synced.values_list("status", "error_message"))
        assert not bad, f"runs that did not succeed: {bad[:10]}"
        assert runs.filter(trigger="webhook").exists(), "no sync was dispatched by a webhook"
        assert not Fabric.objects.exclude(consecutive_failures=0).exists()
        by_webhook = runs.filter(trigger="webhook").count()
        print(f"\nwebhook: {pushes} deliveries, {runs.count()} runs ({by_webhook} by webhook)")
