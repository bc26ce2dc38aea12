"""Content-Security-Policy in a real Chromium: Clarion's pages work under their own policy with no
violation reported, and the widget works on a customer page whose policy allows nothing inline.

Violations are collected by a ``securitypolicyviolation`` listener installed before any script of
the page runs (Playwright's init script is not subject to the page's policy).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.conftest import DemoSystem, under_ci
from tests.e2e.test_inbox_widget import new_subscriber, subscriber_hash

try:
    from playwright.sync_api import Page, expect
except ImportError:  # a dev dependency; without it `make test` must still collect this folder
    if under_ci():
        raise
    pytest.skip("the playwright package is not installed", allow_module_level=True)

pytestmark = pytest.mark.e2e

WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.effectiveDirective} blocked ${e.blockedURI || "inline"} (${e.sourceFile}:${e.lineNumber})`);
});
"""


def violations(page: Page) -> list[str]:
    return page.evaluate("window.__csp")


class _StrictPage(BaseHTTPRequestHandler):
    """One customer page on another origin, served with a Content-Security-Policy header."""

    body = b""
    policy = ""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Security-Policy", self.policy)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def strict_site() -> Iterator[tuple[str, type[_StrictPage]]]:
    handler = type("StrictPage", (_StrictPage,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_clarion_pages_work_under_their_own_policy(clarion_demo: DemoSystem, page: Page) -> None:
    page.add_init_script(WATCH)

    response = page.goto(clarion_demo.url("/demo/inbox/"))
    assert response is not None and "script-src 'self'" in response.headers["content-security-policy"]
    expect(page.locator("clarion-inbox")).to_have_attribute("connection", "live")
    assert violations(page) == []

    page.goto(clarion_demo.url("/api/docs/"))
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Clarion API")
    expect(page.locator(".opblock").first).to_be_visible()
    assert violations(page) == []

    page.goto(clarion_demo.url("/admin/login/"))
    page.fill("#id_username", clarion_demo.demo["admin_username"])
    page.fill("#id_password", clarion_demo.demo["admin_password"])
    page.get_by_role("button", name="Log in").click()
    page.goto(clarion_demo.url("/admin/notification_templates/template/"))
    page.locator("#result_list tbody tr th a").first.click()
    expect(page.locator("#ce-form")).to_be_visible()
    # The editor's script runs (tabs switch) and its preview renders, inline-styled email and all.
    expect(page.locator("#ce-preview")).not_to_have_attribute("data-state", "idle")
    assert violations(page) == []


def test_the_widget_runs_on_a_page_that_allows_nothing_inline(
    clarion_demo: DemoSystem, strict_site: tuple[str, type[_StrictPage]], page: Page
) -> None:
    clarion = clarion_demo.base_url
    websocket = re.sub(r"^http", "ws", clarion)
    policy = (
        f"default-src 'none'; script-src {clarion}; connect-src {clarion} {websocket}; style-src 'none'; img-src 'none'"
    )
    subscriber_id = new_subscriber()
    url, handler = strict_site
    handler.policy = policy
    handler.body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Strict</title>
<script src="{clarion}/static/clarion/inbox.js" defer></script></head>
<body><clarion-inbox publishable-key="{clarion_demo.demo["publishable_key"]}" subscriber-id="{subscriber_id}"
  subscriber-hash="{subscriber_hash(clarion_demo, subscriber_id)}"></clarion-inbox></body></html>""".encode()
    page.add_init_script(WATCH)
    page.goto(url)
    widget = page.locator("clarion-inbox")
    expect(widget).to_have_attribute("connection", "live")
    clarion_demo.trigger({"post_title": "Strict", "comment": "Hi", "author": "Ada"}, to=subscriber_id)
    bell = page.locator("clarion-inbox .bell")
    expect(bell).to_be_visible()
    # Styled by its constructable stylesheet although the page allows no style at all.
    assert (
        page.evaluate(
            "getComputedStyle(document.querySelector('clarion-inbox').shadowRoot.querySelector('.bell')).cursor"
        )
        == "pointer"
    )
    bell.click()
    expect(page.locator("clarion-inbox li.item .title", has_text="Strict")).to_be_visible()
    assert violations(page) == []
