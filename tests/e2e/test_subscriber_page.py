"""The subscriber page and "Why not?" in a real Chromium against a real Clarion: open the demo
subscriber, read its sections, dry-run the demo workflow with a hostile payload, then with bad JSON."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tests.e2e.conftest import DEMO_WORKFLOW, DemoSystem

if TYPE_CHECKING:
    from playwright.sync_api import Page

HOSTILE = {"post_title": "<img src=x onerror=window.pwned=1>", "comment": "<script>window.pwned=2</script>"}


def test_subscriber_page_and_why_not(clarion_demo: DemoSystem, page: Page) -> None:
    from playwright.sync_api import expect

    demo = clarion_demo
    page.goto(demo.url("/admin/login/?next=/admin/subscribers/subscriber/"))
    page.fill("#id_username", demo.demo["admin_username"])
    page.fill("#id_password", demo.demo["admin_password"])
    page.get_by_role("button", name="Log in").click()
    page.fill("#searchbar", demo.subscriber_id)
    page.press("#searchbar", "Enter")
    page.click(f"#result_list a:text-is('{demo.subscriber_id}')")

    for section in ("runs", "messages", "preferences", "suppressions", "devices", "quiet-hours", "inbox"):
        expect(page.locator(f"#subscriber-{section}")).to_be_visible()
    expect(page.locator("#subscriber-preferences")).to_contain_text("reachable")

    page.click("text=Why not?")
    page.select_option("#id_workflow", label=page.locator("#id_workflow option", has_text=DEMO_WORKFLOW).inner_text())
    page.fill("#id_payload", json.dumps(HOSTILE))
    page.click("input[type=submit][value='Dry run']")
    result = page.locator("#why-not-result")
    expect(result).to_contain_text("an in-app message would be put in the inbox")
    expect(result).to_contain_text("would wait")
    expect(result).to_contain_text("after the wait, at")
    expect(page.locator("#id_payload")).to_have_value(json.dumps(HOSTILE))
    assert page.evaluate("window.pwned") is None  # the payload is shown, never run

    page.fill("#id_payload", '{"post_title": ')
    page.click("input[type=submit][value='Dry run']")
    expect(page.locator(".errorlist")).to_contain_text("Not valid JSON")
    expect(page.locator("#why-not-result")).to_have_count(0)
