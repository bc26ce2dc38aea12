"""The console's home in a real Chromium: the charts are images with accessible names, the period
switcher works, the page fits a narrow window, a hostile integration name stays text, and nothing
breaks the Content-Security-Policy (the page's one inline <style> carries the nonce).

Runs against pytest-django's ``live_server`` (``--liveserver 127.0.0.1:<port>`` to pin its port)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.analytics import counters
from apps.tenancy.services import environment_create
from tests.e2e.conftest import under_ci
from tests.factories import IntegrationFactory

try:
    from playwright.sync_api import Page, expect
except ImportError:  # a dev dependency; without it `make test` must still collect this folder
    if under_ci():
        raise
    pytest.skip("the playwright package is not installed", allow_module_level=True)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

HOSTILE = '<img src=x onerror="document.title=1">'
WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.effectiveDirective} blocked ${e.blockedURI || "inline"}`);
});
"""


@pytest.fixture(scope="module")
def _orm_beside_playwright() -> Iterator[None]:
    """Playwright's sync API keeps an event loop in this thread, so Django refuses ORM calls here:
    this test's set-up and the database flush after it are plain synchronous code. Module scope:
    set before the database fixtures, undone after their teardown."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


@pytest.fixture
def console(_orm_beside_playwright: None, live_server: Any, django_user_model: Any) -> str:
    django_user_model.objects.create_superuser("e2e-admin", "admin@example.com", "e2e-password")
    environment = environment_create(name="production", project_name="Acme").environment
    now = timezone.now()
    tally = counters.Tally()
    for hours_ago in range(30):
        at = now - timedelta(hours=hours_ago)
        tally.add(environment_id=environment.pk, at=at, metric=counters.TRIGGERED, value=10 + hours_ago)
        tally.add(environment_id=environment.pk, at=at, metric=counters.SENT, channel="email", value=9)
        tally.add(environment_id=environment.pk, at=at, metric=counters.FAILED, channel="email", value=1)
    tally.write()
    IntegrationFactory(environment=environment, name=HOSTILE, circuit_open_until=now + timedelta(minutes=5))
    return str(live_server.url)


def _log_in(page: Page, base: str) -> None:
    page.add_init_script(WATCH)
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", "e2e-admin")
    page.fill("#id_password", "e2e-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("link", name="24 h")).to_have_attribute("aria-current", "page")


def test_the_home_page_in_a_browser(console: str, page: Page) -> None:
    _log_in(page, console)

    for name in (
        "Notifications triggered per hour, last 24 h",
        "Messages by channel and status, last 24 h",
        "Messages skipped by reason, last 24 h",
        "Error rate per channel, last 24 h",
    ):
        expect(page.get_by_role("img", name=re.compile(f"^{re.escape(name)}"))).to_be_visible()
    expect(page.get_by_text(HOSTILE)).to_be_visible()  # shown as text, never parsed
    assert page.title() != "1"
    expect(page.locator("#content .app-delivery")).to_be_visible()  # the app list, below

    page.get_by_role("link", name="30 d").click()
    expect(page.get_by_role("link", name="30 d")).to_have_attribute("aria-current", "page")
    expect(page.get_by_role("img", name=re.compile("^Notifications triggered per day, last 30 d"))).to_be_visible()

    page.set_viewport_size({"width": 480, "height": 900})
    chart = page.get_by_role("img", name=re.compile("^Notifications triggered")).bounding_box()
    assert chart is not None and chart["x"] + chart["width"] <= 480
    assert page.evaluate("window.__csp") == []
