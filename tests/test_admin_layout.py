"""At 1600 px wide the important columns of each list are on screen (issue 12).

A real Chromium (Playwright) reads the lists with long errors, long Git sources and
long reasons in them, the admin's navigation sidebar open, and measures where each
column ends: no table may be wider than the window, so the error, source and reason
columns never hide behind a horizontal scroll bar.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import Page, sync_playwright

from resilience.models import ComponentHealth, HealthTransition
from scaling.models import ScalingEvent
from sync.models import RunStatus, SyncRun, SyncStatus
from tests.conftest import require
from tests.factories import make_fabric
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.browser

WIDTH = 1600
SCREENSHOTS = os.environ.get("LAYOUT_SCREENSHOTS", "")  # a folder
PASSWORD = "a-long-layout-passphrase-7"
LONG_ERROR = "manifests/production/vlans.yaml:7:3: invalid YAML: " + "mapping values are not allowed here " * 6
LONG_URL = "https://git.example.com/network-engineering/datacenter-east/very/long/path/to/fabric-east-01.git"
# list -> the columns that must stay on screen
PAGES = {
    "/admin/sync/fabric/": ["status", "failing", "last_error_short", "source"],
    "/admin/sync/syncrun/": ["started", "status_badge", "changes", "error"],
    "/admin/sync/resource/": ["kind_of", "fabric", "source", "updated"],
    "/admin/scaling/scalingevent/": ["when", "change", "rule", "short_reason"],
    "/admin/resilience/componenthealth/": ["status_badge", "since", "healing", "message"],
    "/admin/resilience/healthtransition/": ["when", "to_badge", "short_message"],
}
MEASURE = """(columns) => {
  const table = document.querySelector('#result_list');
  const edge = (name) => Math.max(0, ...[...table.querySelectorAll('.column-' + name + ', .field-' + name)]
      .map((cell) => cell.getBoundingClientRect().right));
  // What is on screen: the window, and the list's own box (it scrolls sideways past its edge).
  const box = table.closest('.results').getBoundingClientRect();
  const visible = Math.min(document.documentElement.clientWidth, box.right);
  return {
    window: document.documentElement.clientWidth,
    visible: visible,
    table: table.getBoundingClientRect().right,
    columns: Object.fromEntries(columns.map((name) => [name, edge(name)])),
  };
}"""


@pytest.fixture
def long_texts(transactional_db: None) -> None:
    now = timezone.now()
    get_user_model().objects.create_superuser("layout", "layout@example.com", PASSWORD)
    for i in range(5):
        fabric = make_fabric(
            LONG_URL.replace("east-01", f"east-{i:02}"),
            name=f"datacenter-east-fabric-{i:02}",
            git_path="manifests/production/switches",
            sync_status=SyncStatus.ERROR,
            consecutive_failures=3,
            last_error=LONG_ERROR,
            last_sync=now - timedelta(hours=3),
            last_attempt_at=now - timedelta(minutes=2),
            current_commit="a" * 40,
        )
        SyncRun.objects.create(
            fabric=fabric,
            trigger="schedule",
            status=RunStatus.FAILED,
            started_at=now - timedelta(minutes=i),
            duration_ms=1234,
            commit="b" * 40,
            error_class="sync.errors.ManifestError",
            error_message=LONG_ERROR,
            worker="celery@worker-3.fabric-control-plane.internal.example.com",
        )
        fabric.resources.create(
            api_version="wiring.githedgehog.com/v1beta1",
            kind="VLANNamespace",
            namespace="default",
            name=f"very-long-resource-name-of-a-vlan-namespace-{i}",
            content_hash="c" * 64,
            source_file="manifests/production/switches/datacenter-east/vlan-namespaces/default.yaml",
        )
        ScalingEvent.objects.create(
            service=f"worker-pool-{i}",
            action="up",
            from_instances=2,
            desired_instances=4,
            to_instances=4,
            reason="cpu_percent 91.5 vs target 60.0 (ratio 1.52) proposes 4; " * 4,
            rule="metric:cpu_percent",
            dry_run=i % 2 == 0,
        )
        component = ComponentHealth.objects.create(
            name=f"container:fcp-worker-pool-{i}-replica",
            component_type="container",
            status="unhealthy",
            last_message=LONG_ERROR,
            last_checked_at=now,
        )
        HealthTransition.objects.create(
            component=component, from_status="healthy", to_status="unhealthy", message=LONG_ERROR, at=now
        )


@contextmanager
def wide_page() -> Iterator[Page]:
    """Chromium at 1600 x 900 (no ORM call inside: see tests/test_browser.py)."""
    require(CHROMIUM.exists(), f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 900})
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


def test_the_important_columns_of_every_list_fit_a_1600_px_window(long_texts, live_server):
    measured = {}
    with wide_page() as page:
        page.goto(f"{live_server.url}/admin/login/?next=/admin/")
        page.fill("#id_username", "layout")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url("**/admin/")
        for path, columns in PAGES.items():
            page.goto(f"{live_server.url}{path}")
            assert page.locator("#nav-sidebar").is_visible()  # the left navigation takes its share too
            measured[path] = page.evaluate(MEASURE, columns)
            if SCREENSHOTS:  # to look at what was measured
                page.screenshot(path=f"{SCREENSHOTS}/{path.strip('/').replace('/', '-')}.png", full_page=True)

    for path, sizes in measured.items():
        assert sizes["window"] == WIDTH
        assert sizes["table"] <= sizes["visible"] + 1, (path, sizes)
        for column, right in sizes["columns"].items():
            assert 0 < right <= sizes["visible"] + 1, (path, column, sizes)
