"""An operator lands on the overview in a real browser: a failing fabric, charts of real runs, a stopped scheduler.

As in ``test_browser.py``: ``manage.py bootstrap`` makes the admin user and the demo
repository, pytest-django's live server serves the admin, Debian's Chromium (driven by
Playwright) reads it, and a real Celery worker runs what a real tick dispatched. All
data is set up before the browser block and checked after it (see ``chromium_page``).
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from playwright.sync_api import Page

from core.tick import run_tick
from project.overview import workers
from project.tasks import MASTER_TASK_NAME
from resilience.models import HealthTransition
from sync import operations
from sync.models import Fabric, RunStatus, SyncRun, SyncStatus
from tests import test_browser
from tests.conftest import wait_for
from tests.factories import make_fabric
from tests.test_browser import PASSWORD, chromium_page

pytestmark = [pytest.mark.browser, pytest.mark.worker]

# The state ``make run`` starts from (the admin user, the demo fabric), shared with the admin browser test.
bootstrapped = test_browser.bootstrapped

SETTLE_SECONDS = 60


def log_in(page: Page, url: str, username: str) -> None:
    page.goto(f"{url}/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")


def settled(*fabrics: Fabric) -> bool:
    statuses = Fabric.objects.filter(id__in=[f.id for f in fabrics]).values_list("sync_status", flat=True)
    return (
        all(s in (SyncStatus.IN_SYNC, SyncStatus.ERROR) for s in statuses)
        and not SyncRun.objects.filter(status=RunStatus.RUNNING).exists()
    )


def worker_answered(hostname: str) -> bool:
    cache.delete(workers.WORKERS_KEY)
    return hostname in workers.queue_workers().queues.get("sync", [])


def chart_values(page: Page, key: str) -> list[str]:
    """The values pygal wrote into each data point's ``<desc class="value">``."""
    return page.locator(f"#chart-{key} svg desc.value").evaluate_all("nodes => nodes.map(n => n.textContent)")


def visible_dots(page: Page, key: str) -> int:
    return page.locator(f"#chart-{key} svg circle.dot").evaluate_all(
        "nodes => nodes.filter(n => parseFloat(n.getAttribute('r')) > 0).length"
    )


def test_the_overview_lists_a_failing_fabric_and_charts_the_runs_a_real_tick_started(
    bootstrapped, git_repo, live_server, celery_worker, settings
):
    broken = git_repo("broken")
    broken.write("manifests/bad.yaml", "kind: [unclosed\n")
    broken.commit()
    failing = make_fabric(broken.url, name="broken-fabric")
    summary = run_tick()  # a real tick: claims both fabrics, dispatches them and a health sweep
    wait_for(lambda: settled(bootstrapped, failing), timeout=SETTLE_SECONDS, message=celery_worker.log())
    operations.enqueue_manual_syncs([bootstrapped], timezone.now())  # a second run: same commit
    wait_for(lambda: SyncRun.objects.filter(fabric=bootstrapped).count() == 2 and settled(bootstrapped), timeout=60)
    wait_for(lambda: HealthTransition.objects.exists(), timeout=SETTLE_SECONDS, message=celery_worker.log())
    runs = SyncRun.objects.count()
    # The page reads the shared cached broadcast: ask until this worker has answered one (on
    # a loaded machine a reply can miss the one-second window once), as the page would.
    wait_for(lambda: worker_answered(celery_worker.hostname), timeout=30, message="the worker never answered")

    with chromium_page() as page:
        log_in(page, live_server.url, settings.ADMIN_USERNAME)
        banner = page.locator("#scheduler-banner").count()
        failing_rows = page.locator("#failing-fabrics tr.failing-fabric").all_inner_texts()
        error_count = page.locator('#fabric-status-counts [data-status="error"] strong').inner_text()
        sync_queue = page.locator('#overview-workers tr[data-queue="sync"]').inner_text()
        outcomes = chart_values(page, "sync-outcomes")
        lag_dots = visible_dots(page, "sync-lag")
        health_dots = visible_dots(page, "health")
        legend = page.locator("#chart-sync-outcomes svg").inner_html()

    assert summary["steps"]["sync"] == "ok"
    assert banner == 0  # the tick just ran and its entry is enabled
    assert len(failing_rows) == 1
    assert "broken-fabric" in failing_rows[0]
    assert "Error" in failing_rows[0]
    assert "ago" in failing_rows[0]
    failing.refresh_from_db()
    assert failing.last_error[:30] in failing_rows[0]
    assert error_count == "1"
    assert celery_worker.hostname in sync_queue
    assert "online" in sync_queue
    # Every real run is counted once in the outcome bars: success, unchanged, failed.
    assert sum(int(v) for v in outcomes) == runs == 3
    assert "Success" in legend
    assert "Failed" in legend
    assert lag_dots >= 2  # the mean duration, and the lag the second demo run closed
    assert 1 <= health_dots <= HealthTransition.objects.count()  # the sweep goes on recording meanwhile


def test_stopping_the_scheduler_shows_the_red_banner_on_the_next_request_and_is_audited(
    bootstrapped, live_server, settings
):
    run_tick()  # a real tick just ran: no banner yet

    with chromium_page() as page:
        log_in(page, live_server.url, settings.ADMIN_USERNAME)
        before = page.locator("#scheduler-banner").count()
        page.once("dialog", lambda dialog: dialog.accept())  # "Stop every tick ...?"
        page.click("#stop-scheduler")
        page.wait_for_url("**/admin/")
        stopped = page.locator("#scheduler-banner").inner_text()
        message = page.locator("ul.messagelist").inner_text()

    assert before == 0
    assert f"The beat entry {MASTER_TASK_NAME} is disabled" in stopped
    assert "Master scheduler stopped" in message
    assert PeriodicTask.objects.get(name=MASTER_TASK_NAME).enabled is False
    entry = LogEntry.objects.get(object_repr__startswith=MASTER_TASK_NAME)
    assert entry.change_message == "Stopped the master scheduler (ticks stop) from the overview"
    assert entry.user_id == get_user_model().objects.get(username=settings.ADMIN_USERNAME).pk


def test_a_real_tick_older_than_two_intervals_shows_the_banner_with_its_age(bootstrapped, live_server, settings):
    run_tick(timezone.now() - timedelta(minutes=5))  # the last tick ran, five minutes ago

    with chromium_page() as page:
        log_in(page, live_server.url, settings.ADMIN_USERNAME)
        stale = page.locator("#scheduler-banner").inner_text()
        age = page.locator("#tick-age").inner_text()

    assert re.search(r"The last tick ran 3\d\d s ago, more than two ticks \(120 s\)", stale), stale
    assert "5 minutes ago" in age.replace("\xa0", " ")
