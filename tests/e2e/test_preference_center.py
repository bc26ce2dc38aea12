"""The hosted preference center in a real Chromium against real uvicorn + qcluster.

``test_email_link_to_preferences_then_both_workflows`` is the whole path: a workflow sends an
email (file backend under the installation's ``var/mail/``), the test reads the preference link
and the ``List-Unsubscribe`` headers from it, turns one category's email off and another to a
daily digest in the page, saves, triggers both workflows and checks what arrives and what the
trace says. It needs the engine to put ``apps.preferences.links.email_links`` into every email
and ``category_frequencies`` into its hold decision.

The other tests use the signed links from ``GET /api/v1/subscribers/{id}/preference-links``:
keyboard-only use, the subscriber's language, a phone-sized screen, one-click unsubscribe over
plain HTTP without cookies, and a tampered link. ``CLARION_E2E_SCREENSHOTS=docs/img`` writes
``docs/img/preference-center.png`` (otherwise a temporary folder).
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import DemoSystem, under_ci

try:
    from playwright.sync_api import Page, expect
except ImportError:  # a dev dependency; without it `make test` must still collect this folder
    if under_ci():
        raise
    pytest.skip("the playwright package is not installed", allow_module_level=True)

pytestmark = pytest.mark.e2e

SCREENSHOT_MAX_BYTES = 300 * 1024
MAIL_TIMEOUT = 30.0
SEPARATOR = "\n" + "-" * 79 + "\n"


# --- helpers -------------------------------------------------------------------------------------


@dataclass
class Space:
    """A fresh environment on the shared live installation, so each test sees only its own categories."""

    demo: DemoSystem
    slug: str
    secret_key: str

    @property
    def base_url(self) -> str:
        return self.demo.base_url

    def api(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201)) -> Any:
        headers = {"Authorization": f"Bearer {self.secret_key}"}
        response = self.demo.system.http.request(method, path, json=body, headers=headers, timeout=15)
        assert response.status_code in ok, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None


def new_space(demo: DemoSystem, *, branding: dict[str, str] | None = None) -> Space:
    created = demo.system.manage("create_environment", f"pc-{uuid.uuid4().hex[:6]}", "--json").stdout
    keys = json.loads(created[created.index("{") :])
    slug = keys["environment"]["slug"]
    if branding:
        code = (
            "from apps.tenancy.models import Environment; "
            f"Environment.objects.filter(slug={slug!r}).update(branding={branding!r})"
        )
        demo.system.manage("shell", "-c", code)
    return Space(demo=demo, slug=slug, secret_key=keys["secret_key"])


def api(space: Space, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201)) -> Any:
    return space.api(method, path, body, ok)


def setup_content(demo: Space, tag: str, *, locale: str = "en") -> dict[str, str]:
    """A subscriber, two categories and two one-step email workflows, all fresh (``tag`` keeps
    tests apart on the shared installation)."""
    subscriber = f"pc-{tag}"
    address = f"{subscriber}@example.com"
    api(
        demo,
        "PUT",
        f"/api/v1/subscribers/{subscriber}",
        {"email": address, "first_name": "Pat", "locale": locale, "timezone": "Europe/Paris"},
    )
    # A default email layout: its footer carries the preference and unsubscribe links.
    api(
        demo,
        "PUT",
        "/api/v1/layouts/house",
        {"name": "House", "footer": {"en": "<p>Acme Cloud</p>"}, "is_default": True},
    )
    news, tips = f"news-{tag}", f"tips-{tag}"
    api(
        demo,
        "PUT",
        f"/api/v1/categories/{news}",
        {"name": "Product news", "description": "What we shipped", "order": 1},
    )
    api(
        demo, "PUT", f"/api/v1/categories/{tips}", {"name": "Tips", "description": "Getting more out of it", "order": 2}
    )
    api(demo, "PUT", f"/api/v1/categories/{'security-' + tag}", {"name": "Security", "critical": True, "order": 3})
    for key, category, subject in [
        (f"pc-news-{tag}", news, "News {{ payload.n }}"),
        (f"pc-tip-{tag}", tips, "Tip {{ payload.n }}"),
    ]:
        api(
            demo,
            "PUT",
            f"/api/v1/templates/{key}",
            {
                "name": key,
                "channel": "email",
                "content": {
                    "en": {"subject": subject, "body": f"<p>{subject}: hello {{{{ subscriber.first_name }}}}</p>"}
                },
                "publish": True,
            },
        )
        api(
            demo,
            "PUT",
            f"/api/v1/workflows/{key}",
            {
                "name": key,
                "category": category,
                "steps": [{"id": "mail", "type": "email", "template": key}],
                "publish": True,
            },
        )
    return {"subscriber": subscriber, "address": address, "news": news, "tips": tips, "tag": tag}


def trigger(demo: Space, workflow: str, subscriber: str, n: int) -> str:
    body = api(
        demo,
        "POST",
        "/api/v1/events/trigger",
        {"workflow": workflow, "to": [subscriber], "payload": {"n": n}},
        ok=(202,),
    )
    return str(body["transaction_id"])


def mails_to(demo: DemoSystem, address: str) -> list[EmailMessage]:
    """Every email the file backend wrote for ``address``, oldest first."""
    folder = demo.system.var_dir / "mail"
    found: list[EmailMessage] = []
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.log"), key=lambda p: (p.stat().st_mtime, p.name)):
        for chunk in path.read_text(encoding="utf-8", errors="replace").split(SEPARATOR):
            if not chunk.strip():
                continue
            message = email.message_from_string(chunk.lstrip("\n"), policy=email.policy.default)
            if address in str(message.get("To", "")):
                found.append(message)  # type: ignore[arg-type]
    return found


def wait_mails(demo: DemoSystem, address: str, count: int, timeout: float = MAIL_TIMEOUT) -> list[EmailMessage]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mails = mails_to(demo, address)
        if len(mails) >= count:
            return mails
        time.sleep(0.3)
    raise AssertionError(f"{len(mails_to(demo, address))} email(s) to {address} after {timeout:.0f} s, wanted {count}")


def body_text(message: EmailMessage) -> str:
    parts = []
    for part in message.walk():
        if part.get_content_maintype() == "text":
            parts.append(part.get_content())
    return "\n".join(parts)


def wait_trace(demo: Space, transaction_id: str, timeout: float = MAIL_TIMEOUT) -> dict[str, Any]:
    """The event's only run, once the engine has decided about its step."""
    deadline = time.monotonic() + timeout
    trace: dict[str, Any] = {}
    while time.monotonic() < deadline:
        trace = api(demo, "GET", f"/api/v1/events/{transaction_id}")
        runs = trace.get("runs") or []
        if runs and runs[0]["steps"] and runs[0]["status"] not in ("pending", "running"):
            return dict(runs[0])
        time.sleep(0.3)
    raise AssertionError(f"no decision for {transaction_id} after {timeout:.0f} s: {trace}")


def links(demo: Space, subscriber: str, category: str | None = None) -> dict[str, Any]:
    query = f"?category={category}" if category else ""
    return dict(api(demo, "GET", f"/api/v1/subscribers/{subscriber}/preference-links{query}"))


def local(demo: Space | DemoSystem, url: str) -> str:
    """The links are built from CLARION_PUBLIC_URL, which the harness sets to the live server."""
    assert url.startswith(demo.base_url), (url, demo.base_url)
    return url


def category_card(page: Page, key: str) -> Any:
    return page.locator(f'section.category[data-category="{key}"]')


def shot(page: Page, tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("CLARION_E2E_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    page.screenshot(path=str(target), full_page=True)
    assert 0 < target.stat().st_size < SCREENSHOT_MAX_BYTES, (name, target.stat().st_size)
    return target


# --- the whole path from an email -------------------------------------------------------------


def test_email_link_to_preferences_then_both_workflows(clarion_demo: DemoSystem, page: Page) -> None:
    demo = clarion_demo
    space = new_space(demo)
    c = setup_content(space, uuid.uuid4().hex[:8])
    news_workflow, tip_workflow = f"pc-news-{c['tag']}", f"pc-tip-{c['tag']}"

    # 1. A sent email carries the preference link and RFC 8058 headers.
    trigger(space, news_workflow, c["subscriber"], 1)
    first = wait_mails(demo, c["address"], 1)[-1]
    assert first["Subject"] == "News 1"
    text = body_text(first)
    match = re.search(r"https?://[^\s\"'<>]+/preferences/[^\s\"'<>/]+/", text)
    assert match, f"no preference-center link in the email:\n{text[:2000]}"
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = re.search(r"<(https?://[^>]+/unsubscribe/[^>]+)>", str(first["List-Unsubscribe"]))
    assert unsubscribe, first["List-Unsubscribe"]

    # 2. Open it: news email off, tips as a daily digest, save.
    page.goto(local(demo, match.group(0)))
    expect(page.locator("h1")).to_have_text("Notification preferences")
    news_card, tips_card = category_card(page, c["news"]), category_card(page, c["tips"])
    email_box = news_card.get_by_role("checkbox", name="Email")
    expect(email_box).to_be_checked()
    email_box.uncheck()
    tips_card.get_by_label("How often").select_option(label="Daily digest")
    expect(category_card(page, f"security-{c['tag']}").locator("input[type=checkbox]").first).to_be_disabled()
    page.get_by_role("button", name="Save preferences").click()
    status = page.get_by_role("status")
    expect(status).to_contain_text("Your preferences were saved.")
    expect(status).to_contain_text("Product news: Email off")
    expect(status).to_contain_text("Tips: daily digest")
    expect(news_card.get_by_role("checkbox", name="Email")).not_to_be_checked()
    expect(tips_card.get_by_label("How often")).to_have_value("daily")
    history = api(space, "GET", f"/api/v1/subscribers/{c['subscriber']}/preferences/history")["data"]
    assert history[0]["source"] == "page"

    # 3. Trigger both: the news email is skipped by preference, the tip is held for the digest.
    news_tx = trigger(space, news_workflow, c["subscriber"], 2)
    tip_tx = trigger(space, tip_workflow, c["subscriber"], 3)
    news_run, tip_run = wait_trace(space, news_tx), wait_trace(space, tip_tx)
    news_step = news_run["steps"][-1]
    assert (news_step["decision"], news_step["reason"]) == ("skipped", "preference"), news_run
    assert news_step["detail"]["rule"] == "subscriber_category"
    assert news_run["messages"] == []
    tip_step = tip_run["steps"][-1]
    assert tip_step["decision"] == "held", tip_run
    assert tip_step["detail"].get("digest_at"), tip_step
    time.sleep(2)  # nothing else may arrive meanwhile
    assert [m["Subject"] for m in mails_to(demo, c["address"])] == ["News 1"]

    # 4. The digest goes out when it closes at 09:00 Paris time; an operator sends it now from the
    #    admin (category digests are closed by the sweeper or this action, not by /digests/flush).
    page.goto(demo.url("/admin/login/?next=/admin/"))
    page.fill("#id_username", demo.demo["admin_username"])
    page.fill("#id_password", demo.demo["admin_password"])
    page.get_by_role("button", name="Log in").click()
    page.goto(demo.url(f"/admin/workflows/digestbucket/?q={c['subscriber']}"))
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(c["tips"])
    rows.first.locator("input.action-select").check()
    page.select_option("select[name=action]", "flush")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("1 digest(s) sent.")
    digest = wait_mails(demo, c["address"], 2)[-1]
    assert "Tip 3" in body_text(digest), body_text(digest)
    assert "News 2" not in body_text(digest)
    assert len(mails_to(demo, c["address"])) == 2  # the first news email and the digest, nothing else

    # 5. One-click unsubscribe from the first email's header, as a mail provider does it.
    response = httpx.post(local(demo, unsubscribe.group(1)), data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200 and not response.cookies
    state = api(space, "GET", f"/api/v1/subscribers/{c['subscriber']}/preferences")
    assert {x["key"]: x["channels"]["email"] for x in state["categories"]}[c["news"]] is False


# --- the page on its own --------------------------------------------------------------------------


def test_keyboard_only_save_and_screenshot(clarion_demo: DemoSystem, page: Page, tmp_path: Path) -> None:
    demo = clarion_demo
    space = new_space(demo, branding={"product_name": "Acme Cloud", "primary_color": "#0f766e"})
    c = setup_content(space, uuid.uuid4().hex[:8])
    api(space, "PUT", f"/api/v1/subscribers/{c['subscriber']}", {"email": c["address"], "phone": "+15550100200"})
    page.set_viewport_size({"width": 900, "height": 1100})
    page.goto(local(demo, links(space, c["subscriber"])["preferences_url"]))
    expect(page).to_have_title(re.compile("Notification preferences"))

    # Tab from the top of the page to the first toggle, then work the form with keys only.
    news_email = category_card(page, c["news"]).get_by_role("checkbox", name="Email")
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement && document.activeElement.id") == news_email.get_attribute("id"):
            break
    else:
        raise AssertionError("the Product news email toggle is not reachable with Tab")
    page.keyboard.press("Space")
    expect(news_email).not_to_be_checked()
    tips_frequency = category_card(page, c["tips"]).get_by_label("How often")
    tips_frequency.focus()
    page.keyboard.press("ArrowDown")  # instant -> daily
    expect(tips_frequency).to_have_value("daily")
    quiet = page.get_by_role("checkbox", name="Use quiet hours")
    quiet.focus()
    page.keyboard.press("Space")
    expect(quiet).to_be_checked()
    page.get_by_role("button", name="Save preferences").focus()
    page.keyboard.press("Enter")
    status = page.get_by_role("status")
    expect(status).to_contain_text("Product news: Email off")
    expect(status).to_contain_text("Quiet hours: 22:00 to 07:00")
    expect(status).to_be_focused()  # the page moves focus to what was saved
    shot(page, tmp_path, "preference-center.png")  # the documentation screenshot: branded, after a save

    state = api(space, "GET", f"/api/v1/subscribers/{c['subscriber']}/preferences")
    by_key = {x["key"]: x for x in state["categories"]}
    assert by_key[c["news"]]["channels"]["email"] is False and by_key[c["news"]]["channels"]["sms"] is True
    assert by_key[c["tips"]]["frequency"] == "daily"
    quiet_hours = api(space, "GET", f"/api/v1/subscribers/{c['subscriber']}/quiet-hours")
    assert (quiet_hours["start"], quiet_hours["end"]) == ("22:00", "07:00")

    # The summary was shown once; a reload shows the saved state without it.
    page.reload()
    expect(page.get_by_role("status")).to_have_count(0)
    expect(news_email).not_to_be_checked()


def test_phone_screen_french_and_one_click_without_cookies(clarion_demo: DemoSystem, page: Page) -> None:
    demo = clarion_demo
    space = new_space(demo)
    c = setup_content(space, uuid.uuid4().hex[:8], locale="fr")
    page.set_viewport_size({"width": 375, "height": 740})
    page.goto(local(demo, links(space, c["subscriber"])["preferences_url"]))
    expect(page.locator("html")).to_have_attribute("lang", "fr")
    expect(page.locator("h1")).to_have_text("Préférences de notification")
    expect(page.get_by_role("button", name="Enregistrer les préférences")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "sideways scrolling on a phone"

    # GET of the unsubscribe link (a link scanner) changes nothing; POST without cookies does.
    url = local(demo, links(space, c["subscriber"], c["news"])["unsubscribe_url"])
    with httpx.Client() as client:
        for _ in range(2):
            assert client.get(url).status_code == 200
        before = api(space, "GET", f"/api/v1/subscribers/{c['subscriber']}/preferences")
        assert {x["key"]: x["channels"]["email"] for x in before["categories"]}[c["news"]] is True
        for _ in range(2):  # idempotent
            response = client.post(
                url,
                content="List-Unsubscribe=One-Click",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert response.status_code == 200, response.text
            assert "Vous êtes désabonné" in response.text
        assert not client.cookies
    after = api(space, "GET", f"/api/v1/subscribers/{c['subscriber']}/preferences")
    assert {x["key"]: x["channels"]["email"] for x in after["categories"]}[c["news"]] is False
    history = api(space, "GET", f"/api/v1/subscribers/{c['subscriber']}/preferences/history")["data"]
    assert [h["source"] for h in history] == ["one_click"]

    # The confirmation page in the browser: GET shows the question, the button unsubscribes.
    page.goto(url)
    expect(page.get_by_role("button", name="Se désabonner")).to_be_visible()

    # A tampered link gets a readable page, not a server error. Whose link it was is unknown, so
    # the page follows the browser's language (this context's is en-US).
    response = page.goto(url[:-4] + "AAAA")
    assert response is not None and response.status == 400
    expect(page.locator("h1")).to_have_text("This link is not valid")
