"""The embeddable widget (<clarion-inbox>, static/clarion/inbox.js) in the system Chromium, on a
customer's page served from ANOTHER origin than Clarion (a local HTTP server on its own port), so
CORS and the websocket origin check are on the real path. Clarion is the real uvicorn + qcluster
of ``clarion_demo`` (tests/e2e/conftest.py); each test uses subscriber ids of its own."""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import os
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import DemoSystem, under_ci

try:
    from playwright.sync_api import Browser, Locator, Page, expect
except ImportError:  # a dev dependency; without it `make test` must still collect this folder
    if under_ci():
        raise
    pytest.skip("the playwright package is not installed", allow_module_level=True)

pytestmark = pytest.mark.e2e

LIVE_MS = 1_000  # the bar: trigger → badge and list, without a reload, within a second
SCREENSHOT_MAX_BYTES = 300 * 1024
INLINE_BADGE = "clarion-inbox header .count"  # with `inline` the bell is hidden; the count sits in the header


# --- the customer's page, on its own origin -----------------------------------------------------


class _Pages(BaseHTTPRequestHandler):
    pages: dict[str, str] = {}

    def do_GET(self) -> None:
        body = self.pages.get(self.path.split("?")[0])
        if body is None:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class HostSite:
    """A static site on 127.0.0.1:<own port> — a different origin from Clarion's."""

    origin: str
    pages: dict[str, str]

    def add(self, path: str, content: str) -> str:
        self.pages[path] = content
        return self.origin + path


@pytest.fixture(scope="module")
def host_site() -> Iterator[HostSite]:
    handler = type("Pages", (_Pages,), {"pages": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HostSite(origin=f"http://127.0.0.1:{server.server_port}", pages=handler.pages)
    finally:
        server.shutdown()
        server.server_close()


def subscriber_hash(demo: DemoSystem, subscriber_id: str) -> str:
    """What the customer's backend computes: HMAC-SHA256(inbox secret, subscriber id)."""
    return hmac.new(demo.demo["inbox_hmac_secret"].encode(), subscriber_id.encode(), hashlib.sha256).hexdigest()


def embed_page(demo: DemoSystem, subscriber_id: str, *, attrs: str = "", body_style: str = "") -> str:
    """The copy-paste snippet of docs/inbox.md, filled in."""
    return textwrap.dedent(
        f"""\
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8"><title>Acme app</title>
        <script src="{demo.base_url}/static/clarion/inbox.js" defer></script></head>
        <body style="font-family: system-ui, sans-serif; margin: 0; {body_style}">
          <nav style="display:flex; justify-content:space-between; align-items:center; padding:12px 24px;">
            <strong>Acme</strong>
            <clarion-inbox id="inbox"
              publishable-key="{html.escape(demo.demo["publishable_key"])}"
              subscriber-id="{html.escape(subscriber_id)}"
              subscriber-hash="{subscriber_hash(demo, subscriber_id)}" {attrs}></clarion-inbox>
          </nav>
        </body></html>
        """
    )


def new_subscriber() -> str:
    return f"widget-{uuid.uuid4().hex[:10]}"


def open_widget(page: Page, url: str) -> Locator:
    page.goto(url)
    widget = page.locator("clarion-inbox")
    expect(widget).to_have_attribute("connection", "live")
    page.evaluate("window.__noReload = true")
    return widget


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__noReload === true"), "the page was reloaded"


def item(page: Page, title: str) -> Locator:
    return page.locator("clarion-inbox li.item", has=page.locator(".title", has_text=title))


def page_errors(demo: DemoSystem) -> list[str]:
    return [line for line in demo.console if line.startswith("[pageerror]")]


def shell(demo: DemoSystem, code: str) -> str:
    return demo.system.manage("shell", "-c", textwrap.dedent(code), timeout=60).stdout


def make_inbox_row(demo: DemoSystem, subscriber_id: str, **fields: Any) -> None:
    """An inbox row with fields the engine does not fill yet (actions, tags), as a service would write it."""
    shell(
        demo,
        f"""
        from apps.inbox.models import InboxMessage
        from apps.inbox.realtime import publish_messages_created
        from apps.subscribers.services import subscriber_upsert
        from apps.tenancy.models import Environment
        environment = Environment.objects.get(slug={demo.demo["environment_slug"]!r})
        subscriber, _ = subscriber_upsert(environment=environment, subscriber_id={subscriber_id!r})
        row = InboxMessage.objects.create(environment=environment, subscriber=subscriber, **{fields!r})
        publish_messages_created([row])
        """,
    )


def trigger_offline(demo: DemoSystem, payload: dict[str, Any], subscriber_id: str) -> None:
    """Accept a trigger without the web process (the same service the API calls); the worker runs it."""
    shell(
        demo,
        f"""
        from apps.events.services import TriggerRequest, event_trigger
        from apps.tenancy.models import Environment
        environment = Environment.objects.get(slug={demo.demo["environment_slug"]!r})
        event_trigger(environment=environment, request=TriggerRequest(
            workflow="comment-created", to=[{subscriber_id!r}], payload={payload!r}))
        """,
    )


# --- live updates -------------------------------------------------------------------------------


def test_trigger_updates_badge_and_list_within_a_second(
    clarion_demo: DemoSystem, host_site: HostSite, page: Page
) -> None:
    subscriber_id = new_subscriber()
    widget = open_widget(page, host_site.add(f"/{subscriber_id}", embed_page(clarion_demo, subscriber_id)))
    badge = page.locator("clarion-inbox .badge")
    expect(badge).to_be_hidden()
    page.locator("clarion-inbox .bell").click()
    expect(page.locator("clarion-inbox .empty")).to_have_text("No notifications yet")

    timings = []
    for n, author in enumerate(["Grace", "Alan", "Ada"], start=1):
        started = time.monotonic()
        clarion_demo.trigger({"post_title": "Launch", "comment": f"Comment {n}", "author": author}, to=subscriber_id)
        expect(badge).to_have_text(str(n), timeout=LIVE_MS * 3)
        expect(item(page, f"{author} commented on Launch")).to_be_visible(timeout=LIVE_MS)
        timings.append(time.monotonic() - started)
    print(f"trigger → badge + list: {', '.join(f'{t * 1000:.0f} ms' for t in timings)}")
    assert min(timings) < LIVE_MS / 1000, timings  # best of three on a shared 2-core machine
    assert sorted(timings)[1] < LIVE_MS / 1000 * 1.5, timings

    first = item(page, "Grace commented on Launch")
    expect(first).to_have_class("item unread")
    expect(first.locator(".body")).to_have_text("“Comment 1”")
    expect(first.locator("time")).to_have_text("just now")
    expect(widget).to_have_attribute("unread", "3")
    assert_not_reloaded(page)

    # Click → read; the server agrees.
    first.click()
    expect(badge).to_have_text("2")
    expect(first).not_to_have_class("item unread")
    token = session_token(clarion_demo, subscriber_id)
    assert inbox_get(clarion_demo, token, "counts")["unread"] == 2

    # Mark all read.
    page.locator("clarion-inbox header .text-btn").click()
    expect(badge).to_be_hidden()
    expect(page.locator("clarion-inbox li.item.unread")).to_have_count(0)
    assert inbox_get(clarion_demo, token, "counts")["unread"] == 0
    assert page_errors(clarion_demo) == []


def session_token(demo: DemoSystem, subscriber_id: str) -> str:
    response = demo.system.api(
        "POST",
        "/api/v1/inbox/session",
        {
            "publishable_key": demo.demo["publishable_key"],
            "subscriber_id": subscriber_id,
            "subscriber_hash": subscriber_hash(demo, subscriber_id),
        },
        auth=False,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def inbox_get(demo: DemoSystem, token: str, path: str) -> Any:
    response = demo.system.api("GET", f"/api/v1/inbox/{path}", auth=False, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()


def test_two_tabs_of_one_subscriber_stay_consistent(
    clarion_demo: DemoSystem, host_site: HostSite, browser: Browser
) -> None:
    subscriber_id = new_subscriber()
    url = host_site.add(f"/{subscriber_id}", embed_page(clarion_demo, subscriber_id, attrs="inline"))
    context = browser.new_context(viewport={"width": 900, "height": 800}, locale="en-US")
    try:
        tab_a, tab_b = context.new_page(), context.new_page()
        for tab in (tab_a, tab_b):
            open_widget(tab, url)
        for author in ("Grace", "Alan"):
            clarion_demo.trigger({"post_title": "Tabs", "comment": "hi", "author": author}, to=subscriber_id)
        for tab in (tab_a, tab_b):
            expect(tab.locator(INLINE_BADGE)).to_have_text("2", timeout=5_000)

        # Read in tab A → tab B's badge and item follow within a second.
        item(tab_a, "Alan commented on Tabs").click()
        expect(tab_b.locator(INLINE_BADGE)).to_have_text("1", timeout=LIVE_MS)
        expect(item(tab_b, "Alan commented on Tabs")).not_to_have_class("item unread", timeout=LIVE_MS)

        # Archive in tab B → gone from tab A's inbox too.
        grace_b = item(tab_b, "Grace commented on Tabs")
        grace_b.hover()
        grace_b.get_by_role("button", name="Archive").click()
        expect(item(tab_a, "Grace commented on Tabs")).to_have_count(0, timeout=LIVE_MS)
        expect(tab_a.locator(INLINE_BADGE)).to_be_hidden(timeout=LIVE_MS)

        # Mark all read (a bulk change: counts.changed + replay) keeps both at 0.
        clarion_demo.trigger({"post_title": "Tabs", "comment": "again", "author": "Ada"}, to=subscriber_id)
        expect(tab_b.locator(INLINE_BADGE)).to_have_text("1", timeout=5_000)
        tab_a.locator("clarion-inbox header .text-btn").click()
        expect(tab_b.locator(INLINE_BADGE)).to_be_hidden(timeout=LIVE_MS)
        expect(tab_b.locator("clarion-inbox li.item.unread")).to_have_count(0, timeout=LIVE_MS)
        for tab in (tab_a, tab_b):
            assert_not_reloaded(tab)
    finally:
        context.close()


def test_reconnects_after_a_server_restart_and_catches_up(
    clarion_demo: DemoSystem, host_site: HostSite, page: Page
) -> None:
    subscriber_id = new_subscriber()
    widget = open_widget(
        page, host_site.add(f"/{subscriber_id}", embed_page(clarion_demo, subscriber_id, attrs="inline"))
    )
    clarion_demo.trigger({"post_title": "Before", "comment": "x", "author": "Grace"}, to=subscriber_id)
    before = item(page, "Grace commented on Before")
    expect(before).to_be_visible(timeout=5_000)
    expect(page.locator(INLINE_BADGE)).to_have_text("1")

    def while_down() -> None:
        expect(widget).not_to_have_attribute("connection", "live")  # the widget noticed
        # Meanwhile: a new message is created by the worker, and the old one is read elsewhere.
        trigger_offline(clarion_demo, {"post_title": "Outage", "comment": "Back?", "author": "Linus"}, subscriber_id)
        clarion_demo.wait_inbox_row("Linus commented on Outage")
        shell(
            clarion_demo,
            f"""
            from apps.inbox.models import InboxMessage
            from apps.inbox.services import inbox_message_mark
            row = InboxMessage.objects.get(
                subscriber__subscriber_id={subscriber_id!r}, title="Grace commented on Before"
            )
            inbox_message_mark(subscriber=row.subscriber, message_id=row.pk, action="read")
            """,
        )
        expect(item(page, "Linus commented on Outage")).to_have_count(0)

    clarion_demo.restart_web(down=while_down)

    missed = item(page, "Linus commented on Outage")
    expect(missed).to_be_visible(timeout=30_000)  # reconnect back-off (≤ 15 s) + replay
    expect(widget).to_have_attribute("connection", "live")
    expect(before).not_to_have_class("item unread")  # the change made while down was replayed too
    expect(page.locator(INLINE_BADGE)).to_have_text("1")  # counts re-synced, not drifted
    assert_not_reloaded(page)

    # Live again.
    clarion_demo.trigger({"post_title": "After", "comment": "y", "author": "Ada"}, to=subscriber_id)
    expect(item(page, "Ada commented on After")).to_be_visible(timeout=5_000)
    expect(page.locator(INLINE_BADGE)).to_have_text("2")


def test_falls_back_to_polling_when_the_websocket_cannot_connect(
    clarion_demo: DemoSystem, host_site: HostSite, page: Page
) -> None:
    subscriber_id = new_subscriber()
    # A proxy that refuses websockets: every handshake to /ws/ is closed at once.
    page.route_web_socket("**/ws/inbox/**", lambda ws: ws.close(code=1011))
    url = host_site.add(f"/{subscriber_id}", embed_page(clarion_demo, subscriber_id, attrs='inline poll-interval="2"'))
    page.goto(url)
    widget = page.locator("clarion-inbox")
    expect(widget).to_have_attribute("connection", "polling")
    expect(page.locator("clarion-inbox footer")).to_have_text("Updating every 2 s")

    clarion_demo.trigger({"post_title": "Polling", "comment": "z", "author": "Grace"}, to=subscriber_id)
    expect(item(page, "Grace commented on Polling")).to_be_visible(timeout=8_000)
    expect(page.locator(INLINE_BADGE)).to_have_text("1")
    assert widget.get_attribute("connection") != "live"


def test_server_minted_token_and_its_renewal(clarion_demo: DemoSystem, host_site: HostSite, page: Page) -> None:
    """The other auth: a token minted by the customer's backend (secret key). An expired or bad
    token fires clarion-inbox:token-expired; the page sets a fresh one and the widget carries on."""
    subscriber_id = new_subscriber()
    minted = clarion_demo.system.api(
        "POST", "/api/v1/inbox/tokens", {"subscriber_id": subscriber_id, "ttl_seconds": 300}
    )
    assert minted.status_code == 201, minted.text
    fresh = minted.json()["token"]
    page_html = textwrap.dedent(
        f"""\
        <!doctype html><html lang="en"><head><meta charset="utf-8"><title>Token</title>
        <script src="{clarion_demo.base_url}/static/clarion/inbox.js" defer></script></head><body>
        <clarion-inbox id="inbox" inline token="not-a-valid-token"></clarion-inbox>
        <script>
          window.__renewals = 0;
          document.getElementById("inbox").addEventListener("clarion-inbox:token-expired", function (e) {{
            window.__renewals += 1;
            e.target.setAttribute("token", {json.dumps(fresh)});  // as if fetched from the backend
          }});
        </script></body></html>
        """
    )
    page.goto(host_site.add(f"/token-{subscriber_id}", page_html))
    widget = page.locator("clarion-inbox")
    expect(widget).to_have_attribute("connection", "live")
    assert page.evaluate("window.__renewals") == 1
    clarion_demo.trigger({"post_title": "Tokens", "comment": "ok", "author": "Grace"}, to=subscriber_id)
    expect(item(page, "Grace commented on Tokens")).to_be_visible(timeout=5_000)
    expect(page.locator(INLINE_BADGE)).to_have_text("1")


# --- the panel: actions, archive, preferences, keyboard, locale --------------------------------


def test_actions_archive_snooze_and_preferences(clarion_demo: DemoSystem, host_site: HostSite, page: Page) -> None:
    subscriber_id = new_subscriber()
    actions = [
        {"id": "accept", "label": "Accept", "url": "", "kind": "primary", "completed_at": None},
        {"id": "decline", "label": "Decline", "url": "", "kind": "secondary", "completed_at": None},
    ]
    make_inbox_row(
        clarion_demo,
        subscriber_id,
        title="Invitation to Acme",
        body="Join the team",
        actions=actions,
        category_key="comments",
    )
    make_inbox_row(clarion_demo, subscriber_id, title="Snooze me", body="later", category_key="comments")
    open_widget(
        page,
        host_site.add(
            f"/{subscriber_id}", embed_page(clarion_demo, subscriber_id, attrs='inline categories="comments:Comments"')
        ),
    )
    invitation = item(page, "Invitation to Acme")
    expect(invitation).to_be_visible()
    expect(page.locator(INLINE_BADGE)).to_have_text("2")

    # Action buttons: complete → done state, message read, persisted.
    invitation.get_by_role("button", name="Accept").click()
    expect(invitation.locator("button.action.primary")).to_have_text("✓ Accept")
    expect(invitation.locator("button.action.primary")).to_be_disabled()
    expect(page.locator(INLINE_BADGE)).to_have_text("1")
    token = session_token(clarion_demo, subscriber_id)
    stored = {m["title"]: m for m in inbox_get(clarion_demo, token, "messages")["data"]}
    assert stored["Invitation to Acme"]["actions"][0]["completed_at"] is not None
    assert stored["Invitation to Acme"]["actions"][1]["completed_at"] is None

    # Snooze: hidden from the inbox and the badge.
    snooze = item(page, "Snooze me")
    snooze.hover()
    snooze.get_by_role("button", name="Snooze for an hour").click()
    expect(snooze).to_have_count(0)
    expect(page.locator(INLINE_BADGE)).to_be_hidden()

    # Archive → the Archived tab has it; the category filter narrows.
    invitation.hover()
    invitation.get_by_role("button", name="Archive").click()
    expect(invitation).to_have_count(0)
    page.locator("clarion-inbox").get_by_role("tab", name="Archived").click()
    expect(item(page, "Invitation to Acme")).to_be_visible()
    page.locator("clarion-inbox select").select_option("comments")
    expect(item(page, "Invitation to Acme")).to_be_visible()

    # Preferences: the widget reads and writes them through the inbox token.
    page.locator("clarion-inbox").get_by_role("button", name="Notification preferences").click()
    group = page.locator("clarion-inbox").get_by_role("group", name="Comments")
    email = group.get_by_role("checkbox", name="Email")
    expect(email).to_be_checked()
    email.uncheck()
    expect(page.locator("clarion-inbox .prefs-status")).to_have_text("Saved")
    prefs = inbox_get(clarion_demo, token, "preferences")
    comments = next(c for c in prefs["categories"] if c["key"] == "comments")
    assert comments["channels"]["email"] is False and comments["channels"]["in_app"] is True
    page.locator("clarion-inbox").get_by_role("button", name="Back").click()
    expect(page.locator("clarion-inbox").get_by_role("tab", name="Archived")).to_be_visible()
    assert page_errors(clarion_demo) == []


def test_infinite_scroll_loads_older_pages(clarion_demo: DemoSystem, host_site: HostSite, page: Page) -> None:
    subscriber_id = new_subscriber()
    shell(
        clarion_demo,
        f"""
        from apps.inbox.models import InboxMessage
        from apps.subscribers.services import subscriber_upsert
        from apps.tenancy.models import Environment
        environment = Environment.objects.get(slug={clarion_demo.demo["environment_slug"]!r})
        subscriber, _ = subscriber_upsert(environment=environment, subscriber_id={subscriber_id!r})
        InboxMessage.objects.bulk_create(
            [InboxMessage(environment=environment, subscriber=subscriber, title=f"Older {{n:02d}}") for n in range(45)]
        )
        """,
    )
    open_widget(
        page, host_site.add(f"/scroll-{subscriber_id}", embed_page(clarion_demo, subscriber_id, attrs="inline"))
    )
    items = page.locator("clarion-inbox li.item")
    expect(items).to_have_count(20)  # the first page
    expect(items.first.locator(".title")).to_have_text("Older 44")
    expect(page.locator(INLINE_BADGE)).to_have_text("45")
    for expected in (40, 45):
        page.locator("clarion-inbox .list").evaluate("list => list.scrollTo(0, list.scrollHeight)")
        expect(items).to_have_count(expected)
    expect(items.last.locator(".title")).to_have_text("Older 00")
    expect(page.locator("clarion-inbox .more")).to_be_hidden()  # nothing older


def test_keyboard_and_screen_reader_basics_in_french(clarion_demo: DemoSystem, host_site: HostSite, page: Page) -> None:
    subscriber_id = new_subscriber()
    open_widget(page, host_site.add(f"/{subscriber_id}", embed_page(clarion_demo, subscriber_id, attrs='locale="fr"')))
    bell = page.locator("clarion-inbox .bell")
    expect(bell).to_have_attribute("aria-label", "Notifications")
    expect(bell).to_have_attribute("aria-expanded", "false")
    clarion_demo.trigger({"post_title": "Clavier", "comment": "ok", "author": "Grace"}, to=subscriber_id)
    expect(bell).to_have_attribute("aria-label", "Notifications, 1 non lues", timeout=5_000)
    expect(page.locator("clarion-inbox [aria-live=polite]").first).to_contain_text("Grace commented on Clavier")

    # Tab to the bell, Enter opens the dialog with focus on the first message, Enter reads it.
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    dialog = page.locator("clarion-inbox").get_by_role("dialog", name="Notifications")
    expect(dialog).to_be_visible()
    expect(bell).to_have_attribute("aria-expanded", "true")
    message = item(page, "Grace commented on Clavier")
    expect(message).to_be_focused()
    expect(message).to_have_attribute("aria-label", "Non lue: Grace commented on Clavier. “ok”. à l'instant")
    page.keyboard.press("Enter")
    expect(page.locator("clarion-inbox .badge")).to_be_hidden()
    expect(page.locator("clarion-inbox").get_by_role("tab", name="Non lues")).to_be_visible()
    expect(page.locator("clarion-inbox header .text-btn")).to_have_text("Tout marquer comme lu")
    # Escape closes and gives focus back to the bell.
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(bell).to_be_focused()


def test_refused_origin_is_told_not_served(clarion_demo: DemoSystem, host_site: HostSite, page: Page) -> None:
    """An environment whose allowed origins do not include the page: the session is refused (403,
    no CORS header) and the widget says so instead of spinning."""
    created = clarion_demo.system.manage("create_environment", f"locked-{uuid.uuid4().hex[:6]}", "--json").stdout
    keys = json.loads(created[created.index("{") :])
    shell(
        clarion_demo,
        f"""
        from apps.tenancy.models import Environment
        Environment.objects.filter(slug={keys["environment"]["slug"]!r}).update(allowed_origins=["https://app.acme.test"])
        """,
    )
    subscriber_id = new_subscriber()
    digest = hmac.new(keys["inbox_hmac_secret"].encode(), subscriber_id.encode(), hashlib.sha256).hexdigest()
    page_html = (
        embed_page(clarion_demo, subscriber_id, attrs="inline")
        .replace(clarion_demo.demo["publishable_key"], keys["publishable_key"])
        .replace(subscriber_hash(clarion_demo, subscriber_id), digest)
    )
    page.goto(host_site.add(f"/locked-{subscriber_id}", page_html))
    expect(page.locator("clarion-inbox")).to_have_attribute("connection", "offline")
    expect(page.locator("clarion-inbox .error")).to_have_text("This site may not show this inbox.")


# --- screenshots for docs/inbox.md --------------------------------------------------------------


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_screenshot_widget(
    clarion_demo: DemoSystem, host_site: HostSite, page: Page, tmp_path: Path, theme: str
) -> None:
    """docs/img/inbox-widget-{light,dark}.png: set CLARION_E2E_SCREENSHOTS=docs/img to (re)write them."""
    subscriber_id = new_subscriber()
    make_inbox_row(
        clarion_demo,
        subscriber_id,
        title="Ada invited you to Acme Design",
        body="Join the workspace to see the new mockups.",
        actions=[
            {"id": "accept", "label": "Accept", "url": "", "kind": "primary", "completed_at": None},
            {"id": "decline", "label": "Decline", "url": "", "kind": "secondary", "completed_at": None},
        ],
        category_key="comments",
    )
    attrs = 'theme="dark"' if theme == "dark" else ""
    style = "background:#0b1020; color:#e5e7eb;" if theme == "dark" else "background:#f6f7f9;"
    page.set_viewport_size({"width": 520, "height": 700})
    open_widget(
        page,
        host_site.add(f"/shot-{subscriber_id}", embed_page(clarion_demo, subscriber_id, attrs=attrs, body_style=style)),
    )
    for author, title in [("Grace", "Quarterly plan"), ("Alan", "Roadmap")]:
        clarion_demo.trigger(
            {"post_title": title, "comment": "Looks good to me, ship it.", "author": author}, to=subscriber_id
        )
    expect(page.locator("clarion-inbox .badge")).to_have_text("3", timeout=5_000)
    page.locator("clarion-inbox .bell").click()
    item(page, "Grace commented on Quarterly plan").click()
    expect(page.locator("clarion-inbox .badge")).to_have_text("2")
    page.mouse.move(0, 0)
    page.locator("clarion-inbox .bell").focus()
    page.wait_for_timeout(1_500)  # the "fresh" highlight fades

    folder = Path(os.environ.get("CLARION_E2E_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"inbox-widget-{theme}.png"
    page.screenshot(path=str(target))
    assert 0 < target.stat().st_size < SCREENSHOT_MAX_BYTES, target.stat().st_size
    assert page_errors(clarion_demo) == []
