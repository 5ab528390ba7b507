"""An operator in a real browser: log in, "Sync now" the demo fabric, watch it reach in_sync.

Everything is real: ``manage.py bootstrap`` makes the admin user and the demo Git
repository, pytest-django's live server serves the admin, Chromium (Debian's
package, driven by Playwright) clicks through it, and a real Celery worker runs
the sync from the Redis queue.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from playwright.sync_api import Locator, Page, sync_playwright

from sync.models import Fabric, SyncStatus
from tests.conftest import require

pytestmark = [pytest.mark.browser, pytest.mark.worker]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct-horse-battery-staple-42"
SYNC_DEADLINE_SECONDS = 60


@pytest.fixture
def bootstrapped(transactional_db: None, settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fabric:
    """The state ``make run`` starts from, in a private VAR_DIR.

    Requested before ``celery_worker``, so the worker inherits the allowed roots.
    """
    var = tmp_path / "var"
    settings.VAR_DIR = var
    settings.SYNC_ALLOWED_LOCAL_ROOTS = [*settings.SYNC_ALLOWED_LOCAL_ROOTS, str(var / "repos")]
    monkeypatch.setenv("ADMIN_PASSWORD", PASSWORD)
    call_command("bootstrap", stdout=StringIO())
    return Fabric.objects.get(name="demo")


@contextmanager
def chromium_page() -> Iterator[Page]:
    """A fresh Chromium page driven by Playwright's sync API.

    Playwright keeps an asyncio event loop running in this thread while the block
    runs. Django reacts to a running loop by refusing ORM calls
    (SynchronousOnlyOperation) and, if allowed, by giving them a separate database
    connection that nothing closes. So no ORM call belongs inside the block: set the
    data up before it and check the database after it.
    """
    require(CHROMIUM.exists(), f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


def wait_for_status(page: Page, row: Locator, wanted: str) -> str:
    """Reload the changelist until the row's status reads ``wanted`` (bounded)."""
    status = ""
    deadline = time.monotonic() + SYNC_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        page.reload()
        status = row.locator("td.field-status").inner_text()
        if wanted in status:
            break
        time.sleep(0.5)
    return status


def test_an_operator_syncs_the_demo_fabric_from_the_admin_and_sees_it_in_sync(
    bootstrapped, live_server, celery_worker, settings
):
    with chromium_page() as page:
        page.goto(f"{live_server.url}/admin/sync/fabric/")
        page.fill("#id_username", settings.ADMIN_USERNAME)
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url("**/admin/sync/fabric/")

        row = page.locator("#result_list tbody tr").filter(has=page.locator("th a", has_text="demo"))
        assert "Never synced" in row.locator("td.field-status").inner_text()
        row.locator("input.action-select").check()
        page.select_option("select[name=action]", "sync_now")
        page.click("button[name=index]")
        assert "Enqueued 1 fabric for sync." in page.locator("ul.messagelist").inner_text()

        status = wait_for_status(page, row, "In sync")
        resources = row.locator("td.field-resource_count").inner_text()

    assert "In sync" in status, celery_worker.log()
    assert resources == "18"  # the demo manifests' objects (sync/demo_manifests/README.md)
    bootstrapped.refresh_from_db()
    assert bootstrapped.sync_status == SyncStatus.IN_SYNC
    assert bootstrapped.runs.get().trigger == "manual"
