"""The live inbox demo page (/demo/inbox/), which embeds the <clarion-inbox> widget inline, in a
real Chromium against real uvicorn + qcluster: a trigger over HTTP shows up without a reload,
read / read-all move the badge and the server agrees, and the page catches up with what happened
while the web process was down."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import DemoSystem, under_ci

try:
    from playwright.sync_api import Locator, Page, expect
except ImportError:  # a dev dependency; without it `make test` must still collect this folder
    if under_ci():
        raise
    pytest.skip("the playwright package is not installed", allow_module_level=True)

pytestmark = pytest.mark.e2e

DEMO_PAYLOAD = {"post_title": "Hello", "comment": "First!", "author": "Grace"}  # as the page's curl sends it
UNREAD = re.compile(r"\bunread\b")
WIDGET = "clarion-inbox"  # Playwright's CSS locators pierce its open shadow root
BADGE = f"{WIDGET} header .count"  # the demo embeds the widget inline: the unread count sits in its header
LIVE_WITHIN_MS = 5_000  # trigger → message on screen
SCREENSHOT_MAX_BYTES = 300 * 1024


def open_demo(page: Page, demo: DemoSystem) -> None:
    """Open the demo page, wait until its websocket is live, and mark the document so a reload shows."""
    page.goto(demo.url("/demo/inbox/"))
    expect(page.locator(WIDGET)).to_have_attribute("connection", "live")
    expect(page.locator(f"{WIDGET} .empty")).to_be_visible()  # demo_inbox emptied the inbox
    page.evaluate("window.__clarionE2eNoReload = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__clarionE2eNoReload === true"), "the page was reloaded"


def message_item(page: Page, title: str) -> Locator:
    return page.locator(f"{WIDGET} li.item", has=page.locator(".title", has_text=title))


def page_errors(demo: DemoSystem) -> list[str]:
    return [line for line in demo.console if line.startswith("[pageerror]")]


def test_trigger_shows_live_then_read_and_read_all(demo_inbox: DemoSystem, page: Page) -> None:
    badge = page.locator(BADGE)
    open_demo(page, demo_inbox)
    expect(badge).to_be_hidden()

    started = time.monotonic()
    demo_inbox.trigger(DEMO_PAYLOAD)
    first = message_item(page, "Grace commented on Hello")
    expect(first).to_be_visible(timeout=LIVE_WITHIN_MS)
    expect(badge).to_have_text("1", timeout=LIVE_WITHIN_MS)
    expect(badge).to_be_visible(timeout=100)
    elapsed = time.monotonic() - started
    assert elapsed < LIVE_WITHIN_MS / 1000, f"message + badge took {elapsed:.1f} s"
    expect(first).to_have_class(UNREAD)
    expect(first.locator(".body")).to_have_text("“First!”")
    expect(page).to_have_title("(1) Live inbox demo · Clarion")
    assert_not_reloaded(page)

    # Click → read: the item, the badge and the server agree.
    first.click()
    expect(first).not_to_have_class(UNREAD)
    expect(badge).to_be_hidden()
    expect(badge).to_have_text("0")
    counts = demo_inbox.counts()
    assert counts["unread"] == 0 and counts["total"] == 1, counts

    # Two more → badge 2.
    demo_inbox.trigger({"post_title": "Roadmap", "comment": "Ship it.", "author": "Alan"})
    demo_inbox.trigger({"post_title": "Release notes", "comment": "Nice work!", "author": "Ada"})
    expect(message_item(page, "Alan commented on Roadmap")).to_be_visible(timeout=LIVE_WITHIN_MS)
    expect(message_item(page, "Ada commented on Release notes")).to_be_visible(timeout=LIVE_WITHIN_MS)
    expect(badge).to_have_text("2")
    expect(page.locator(f"{WIDGET} li.item")).to_have_count(3)
    expect(page.locator(WIDGET)).to_have_attribute("unread", "2")

    # Mark all read → 0, everywhere.
    page.locator(f"{WIDGET} header .text-btn").click()
    expect(badge).to_be_hidden()
    expect(page.locator(f"{WIDGET} li.item.unread")).to_have_count(0)
    expect(page.locator(f"{WIDGET} header .text-btn")).to_be_disabled()
    counts = demo_inbox.counts()
    assert counts["unread"] == 0 and counts["total"] == 3, counts
    assert_not_reloaded(page)
    assert page_errors(demo_inbox) == []


def test_message_sent_while_web_down_appears_after_reconnect(demo_inbox: DemoSystem, page: Page) -> None:
    widget = page.locator(WIDGET)
    open_demo(page, demo_inbox)
    transaction_ids: list[str] = []

    def while_down() -> None:
        # The page notices the socket is gone (it polls meanwhile and keeps trying to reconnect) ...
        expect(widget).not_to_have_attribute("connection", "live")
        # ... and a trigger accepted meanwhile is run by the worker, whose push reaches nobody.
        outage = {"post_title": "Outage", "comment": "Back?", "author": "Linus"}
        transaction_ids.append(demo_inbox.trigger_offline(outage))
        demo_inbox.wait_inbox_row("Linus commented on Outage")
        expect(widget).not_to_have_attribute("connection", "live")
        expect(message_item(page, "Linus commented on Outage")).to_have_count(0)

    demo_inbox.restart_web(down=while_down)
    started = time.monotonic()

    missed = message_item(page, "Linus commented on Outage")
    expect(missed).to_be_visible(timeout=40_000)  # reconnect back-off (≤ 15 s per attempt) + replay
    expect(widget).to_have_attribute("connection", "live")
    expect(page.locator(BADGE)).to_have_text("1")
    assert_not_reloaded(page)

    # The server tells the same story: one unread message, made by that event.
    counts = demo_inbox.counts()
    assert counts["unread"] == 1 and counts["total"] == 1, counts
    trace = demo_inbox.system.api("GET", f"/api/v1/events/{transaction_ids[0]}")
    assert trace.status_code == 200, trace.text
    assert "Linus commented on Outage" in trace.text

    # And the page is live again: a new trigger arrives without a reload.
    demo_inbox.trigger({"post_title": "Outage", "comment": "Yes, all good.", "author": "Margaret"})
    expect(message_item(page, "Margaret commented on Outage")).to_be_visible(timeout=LIVE_WITHIN_MS)
    expect(page.locator(BADGE)).to_have_text("2")
    assert time.monotonic() - started < 60


def test_screenshot_demo_inbox(demo_inbox: DemoSystem, page: Page, tmp_path: Path) -> None:
    """docs/img/demo-inbox.png: set CLARION_E2E_SCREENSHOTS=docs/img to (re)write it; otherwise
    the shot goes to a temporary folder (a plain run leaves the checkout untouched)."""
    open_demo(page, demo_inbox)
    demo_inbox.trigger({"post_title": "Quarterly plan", "comment": "Looks good to me.", "author": "Ada"})
    expect(message_item(page, "Ada commented on Quarterly plan")).to_be_visible(timeout=LIVE_WITHIN_MS)
    message_item(page, "Ada commented on Quarterly plan").click()
    expect(message_item(page, "Ada commented on Quarterly plan")).not_to_have_class(UNREAD)
    demo_inbox.trigger({"post_title": "Roadmap", "comment": "Can we ship this in May?", "author": "Alan"})
    demo_inbox.trigger(DEMO_PAYLOAD)
    expect(message_item(page, "Grace commented on Hello")).to_be_visible(timeout=LIVE_WITHIN_MS)
    expect(message_item(page, "Alan commented on Roadmap")).to_be_visible(timeout=LIVE_WITHIN_MS)
    expect(page.locator(BADGE)).to_have_text("2")
    page.wait_for_timeout(1_800)  # let the "fresh" highlight animation finish

    folder = Path(os.environ.get("CLARION_E2E_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "demo-inbox.png"
    page.screenshot(path=str(target), full_page=True)
    assert 0 < target.stat().st_size < SCREENSHOT_MAX_BYTES, target.stat().st_size
    assert page_errors(demo_inbox) == []


# --- Layout defects found while taking the screenshot (templates/inbox/; outside tests/e2e) -------


def test_load_older_hidden_without_older_messages(demo_inbox: DemoSystem, page: Page) -> None:
    open_demo(page, demo_inbox)
    more = page.locator(f"{WIDGET} .more")
    assert more.evaluate("node => node.hidden") is True  # the widget did hide it
    expect(more).to_be_hidden(timeout=1_000)


def test_narrow_viewport_has_no_horizontal_overflow(demo_inbox: DemoSystem, page: Page) -> None:
    page.set_viewport_size({"width": 420, "height": 860})
    open_demo(page, demo_inbox)
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"page is {width[0]}px wide in a {width[1]}px viewport"
