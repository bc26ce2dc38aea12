"""Activity in a real Chromium against a real Clarion (uvicorn + qcluster): trigger the demo workflow,
find the event by its transaction id, read its timeline, cancel its waiting run with the button."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from tests.e2e.conftest import DemoSystem

if TYPE_CHECKING:
    from playwright.sync_api import Page

HOSTILE = {"post_title": "<b>Hi</b>", "comment": "<img src=x onerror=window.pwned=1>"}


def test_find_an_event_read_its_timeline_and_cancel_it(clarion_demo: DemoSystem, page: Page) -> None:
    from playwright.sync_api import expect

    demo = clarion_demo
    transaction_id = demo.trigger(HOSTILE)

    page.goto(demo.url("/admin/login/?next=/admin/events/event/"))
    page.fill("#id_username", demo.demo["admin_username"])
    page.fill("#id_password", demo.demo["admin_password"])
    page.get_by_role("button", name="Log in").click()
    page.fill("#searchbar", transaction_id)
    page.press("#searchbar", "Enter")
    page.click(f"text={transaction_id}")

    run = page.locator(".clarion-run").first
    deadline = time.monotonic() + 30
    while "waiting" not in (run.locator("h3").text_content() or "") and time.monotonic() < deadline:
        time.sleep(0.5)  # the worker walks the run: in-app sent, then the 10-minute delay
        page.reload()
    expect(run.locator("h3")).to_contain_text("waiting")
    decisions = run.locator("table.clarion-decisions")
    expect(decisions).to_contain_text("the in-app message was put in the subscriber's inbox")
    expect(decisions).to_contain_text("waiting for the delay to end")
    expect(run.locator(".clarion-message h4").first).to_contain_text("in_app")

    page.click("button[name=cancel_runs]")
    # ignore_case: the admin's CSS upper-cases the message's first letter (a hex id may start with one)
    expect(page.locator(".messagelist")).to_contain_text(f"{transaction_id}: cancelled 1 run(s).", ignore_case=True)
    expect(run.locator("h3")).to_contain_text("cancelled")
    expect(decisions).to_contain_text("cancelled_by_api")
    expect(page.locator("button[name=cancel_runs]")).to_have_count(0)
    assert page.evaluate("window.pwned") is None  # the payload is shown, never run
