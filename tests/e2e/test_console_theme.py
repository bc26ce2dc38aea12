"""The console's theme (django-unfold) in a real Chromium, under Clarion's strict Content-Security-Policy.

Unfold's interface runs on Alpine.js; the console loads Alpine's CSP build so that script-src stays
'self' (no 'unsafe-eval'). These checks prove that build really drives the theme: no policy
violation and no Alpine error on the console's pages, the sidebar grouped by what people do, its
toggle, the user menu's dropdown and the light / dark switch (kept across pages).
"""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import DemoSystem, under_ci
from tests.e2e.test_csp import WATCH  # the page's CSP violations, collected in window.__csp

try:
    from playwright.sync_api import Page, expect
except ImportError:  # a dev dependency; without it `make test` must still collect this folder
    if under_ci():
        raise
    pytest.skip("the playwright package is not installed", allow_module_level=True)

pytestmark = pytest.mark.e2e


DARK = re.compile(r"(^|\s)dark(\s|$)")
GROUPS = ["Activity", "Workflows", "Content", "Audience", "Delivery", "Settings"]


def alpine_errors(clarion_demo: DemoSystem) -> list[str]:
    return [line for line in clarion_demo.console if "Alpine" in line or "CSP Parser" in line or "pageerror" in line]


def test_console_runs_under_the_strict_policy(clarion_demo: DemoSystem, page: Page) -> None:
    page.add_init_script(WATCH)
    clarion_demo.console.clear()
    clarion_demo.log_in(page)
    response = page.goto(clarion_demo.url("/admin/"))
    assert response is not None
    policy = response.headers["content-security-policy"]
    assert (
        "script-src 'self'" in policy
        and "unsafe-eval" not in policy
        and "unsafe-inline" not in policy.split("style-src")[0]
    )

    # The sidebar: pages grouped by what people do, in this order.
    sidebar = page.locator("#nav-sidebar")
    headings = [text.strip() for text in sidebar.locator("h2").all_inner_texts()]
    assert headings == GROUPS
    expect(sidebar.get_by_role("link", name="Events")).to_have_attribute("href", "/admin/events/event/")

    # The sidebar's toggle (Alpine state on <body>, kept in localStorage).
    toggle = page.locator("#header-inner .material-symbols-outlined", has_text="dock_to_right").first
    expect(sidebar).to_be_visible()
    toggle.click()
    expect(sidebar).to_be_hidden()
    page.reload()
    expect(page.locator("#nav-sidebar")).to_be_hidden()
    page.locator("#header-inner .material-symbols-outlined", has_text="dock_to_right").first.click()
    expect(page.locator("#nav-sidebar")).to_be_visible()

    # The user menu's dropdown and the theme switch: dark is applied and kept on the next page.
    menu = page.locator("#nav-sidebar-inner nav")
    expect(menu).to_be_hidden()
    page.locator("#nav-sidebar").get_by_text("admin", exact=True).click()
    expect(menu).to_be_visible()
    menu.get_by_text("Dark", exact=True).click()
    expect(page.locator("html")).to_have_class(DARK)
    page.goto(clarion_demo.url("/admin/events/event/"))
    expect(page.locator("html")).to_have_class(DARK)
    page.locator("#nav-sidebar").get_by_text("admin", exact=True).click()
    page.locator("#nav-sidebar-inner nav").get_by_text("Light", exact=True).click()
    expect(page.locator("html")).not_to_have_class(DARK)

    # Every console page of the sidebar renders without a violation or an Alpine error.
    for path in ["/admin/workflows/workflow/", "/admin/notification_templates/template/", "/admin/tenancy/environment/",
                 "/admin/analytics/savings/"]:  # fmt: skip
        page.goto(clarion_demo.url(path))
        expect(page.locator("#nav-sidebar")).to_be_visible()
    assert page.evaluate("window.__csp") == []
    assert alpine_errors(clarion_demo) == []
