"""The admin template editor in a real Chromium against a real Clarion (uvicorn + qcluster):
log in, edit the demo's in-app template in two languages and watch the live preview change, hit
a validation error and fix it, publish, trigger the workflow and see the new text arrive in the
inbox (English and French subscribers); then roll back and see the old text arrive again.

The screenshots for docs/templates.md are taken here: set ``CLARION_E2E_SCREENSHOTS=docs/img``
to (re)write them; otherwise they go to a temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.e2e.conftest import DemoSystem, under_ci

try:
    from playwright.sync_api import Page, expect
except ImportError:  # a dev dependency; without it `make test` must still collect this folder
    if under_ci():
        raise
    pytest.skip("the playwright package is not installed", allow_module_level=True)

pytestmark = pytest.mark.e2e

TEMPLATE = "comment-in-app"
SAMPLE = {"author": "Grace", "post_title": "Hello", "comment": "First!"}
PAYLOAD = {"author": "Linus", "post_title": "Kernel", "comment": "Merged."}
FRENCH_SUBSCRIBER = "e2e-editor-fr"
SCREENSHOT_MAX_BYTES = 400 * 1024


def login(page: Page, demo: DemoSystem) -> None:
    page.goto(demo.url("/admin/login/?next=/admin/"))
    page.fill("#id_username", demo.demo["admin_username"])
    page.fill("#id_password", demo.demo["admin_password"])
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#site-name")).to_be_visible()
    page.goto(demo.url("/admin/notification_templates/template/"))
    toggle = page.locator("#toggle-nav-sidebar")
    if toggle.is_visible() and page.locator("#nav-sidebar").is_visible():
        toggle.click()  # more room for the editor (the admin remembers it for the session)


def template_id(demo: DemoSystem, key: str) -> int:
    with closing(sqlite3.connect(f"file:{demo.system.var_dir / 'clarion.sqlite3'}?mode=ro", uri=True)) as conn:
        row = conn.execute("SELECT id FROM notification_templates_template WHERE key = ?", (key,)).fetchone()
    assert row, f"no template {key}"
    return int(row[0])


def open_editor(page: Page, demo: DemoSystem, key: str) -> None:
    page.goto(demo.url("/admin/notification_templates/template/"))
    page.get_by_role("link", name=key, exact=True).click()
    expect(page.locator(".ce-editor")).to_be_visible()
    expect(page.locator("#ce-preview")).to_have_attribute("data-state", re.compile("ok|invalid"))


def wait_preview(page: Page) -> None:
    """Wait until the preview answered for the latest keystroke (debounced)."""
    page.wait_for_function(
        "() => { const p = document.getElementById('ce-preview');"
        " return p.dataset.state === 'ok' || p.dataset.state === 'invalid'; }"
    )


def inbox_titles(demo: DemoSystem, subscriber_id: str) -> list[str]:
    database = demo.system.var_dir / "clarion.sqlite3"
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as conn:
        rows = conn.execute(
            "SELECT m.title FROM inbox_inboxmessage m JOIN subscribers_subscriber s ON s.id = m.subscriber_id "
            "WHERE s.subscriber_id = ? ORDER BY m.id",
            (subscriber_id,),
        ).fetchall()
    return [row[0] for row in rows]


def message_rendering(demo: DemoSystem, title: str) -> tuple[int, str]:
    """(template version number, locale) recorded on the in-app Message with that title."""
    database = demo.system.var_dir / "clarion.sqlite3"
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as conn:
        row = conn.execute(
            "SELECT v.number, d.locale FROM delivery_message d "
            "JOIN notification_templates_templateversion v ON v.id = d.template_version_id "
            "WHERE d.channel = 'in_app' AND d.subject = ? ORDER BY d.id DESC",
            (title,),
        ).fetchone()
    assert row, f"no message {title!r}"
    return int(row[0]), str(row[1])


def trigger(demo: DemoSystem, to: str) -> None:
    response = demo.system.api(
        "POST", "/api/v1/events/trigger", {"workflow": "comment-created", "to": [to], "payload": PAYLOAD}
    )
    assert response.status_code == 202, response.text


def shot(page: Page, tmp_path: Path, name: str) -> None:
    folder = Path(os.environ.get("CLARION_E2E_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    page.screenshot(path=str(target), full_page=False)
    assert 0 < target.stat().st_size < SCREENSHOT_MAX_BYTES, (name, target.stat().st_size)


def page_errors(demo: DemoSystem) -> list[str]:
    return [line for line in demo.console if line.startswith("[pageerror]")]


def test_edit_two_languages_validate_publish_trigger_and_roll_back(
    clarion_demo: DemoSystem, page: Page, tmp_path: Path
) -> None:
    demo = clarion_demo
    response = demo.system.api(
        "PUT", f"/api/v1/subscribers/{FRENCH_SUBSCRIBER}", {"first_name": "Jeanne", "locale": "fr"}
    )
    assert response.status_code in (200, 201), response.text
    login(page, demo)
    open_editor(page, demo, TEMPLATE)

    # The sample payload drives the preview.
    page.fill("#id_sample_payload", json.dumps(SAMPLE))
    wait_preview(page)
    expect(page.locator("#ce-pv-title")).to_have_text("Grace commented on Hello")

    # English: the preview follows the typing.
    title_en = page.locator("#id_title_en")
    title_en.fill("{{ payload.author }} replied to ")
    page.locator(".ce-var", has_text="payload.post_title").click()  # the picker inserts at the cursor
    expect(title_en).to_have_value("{{ payload.author }} replied to {{ payload.post_title }}")
    expect(page.locator("#ce-pv-title")).to_have_text("Grace replied to Hello")

    # A typo in a variable: shown next to the field, in plain words, while typing.
    body_en = page.locator("#id_body_en")
    body_en.fill("“{{ payload.coment }}”")
    error = page.locator('[data-error-for="en.body"]')
    expect(error).to_be_visible()
    expect(error).to_contain_text("unknown variable")
    expect(error).to_contain_text("coment")

    # French tab: translate the title; the preview renders French.
    page.locator(".ce-tab[data-lang=fr]").click()
    expect(page.locator("#ce-preview-lang")).to_have_text("fr")
    page.fill("#id_title_fr", "{{ payload.author }} a répondu à {{ payload.post_title }}")
    expect(page.locator("#ce-pv-title")).to_have_text("Grace a répondu à Hello")

    # Publishing with the error is refused, inline, and nothing is stored.
    page.click("#ce-publish")
    expect(page.locator(".messagelist")).to_contain_text("Not published")
    expect(page.locator('[data-error-for="en.body"]')).to_contain_text("coment")
    expect(page.locator('.ce-tab[data-lang="en"]')).to_have_class(re.compile("ce-tab-error"))
    expect(page.locator(".ce-history tbody tr")).to_have_count(1)
    shot(page, tmp_path, "template-editor-error.png")

    # Fix it (the form kept every edit) and publish.
    expect(page.locator("#id_title_fr")).to_have_value("{{ payload.author }} a répondu à {{ payload.post_title }}")
    page.locator(".ce-tab[data-lang=en]").click()
    page.fill("#id_body_en", "“{{ payload.comment }}”")
    expect(page.locator('[data-error-for="en.body"]')).to_be_hidden()
    expect(page.locator("#ce-pv-body")).to_have_text("“First!”")
    page.fill("#id_primary_action_label_en", "Reply")
    page.fill("#id_primary_action_url", "https://example.com/posts/{{ payload.post_title|urlencode }}")
    expect(page.locator("#ce-pv-actions .ce-primary")).to_have_text("Reply")
    page.fill("#id_note", "Say replied")
    page.click("#ce-publish")
    expect(page.locator(".messagelist")).to_contain_text(f"Published: {TEMPLATE} version 2")
    expect(page.locator(".ce-history tr.ce-published")).to_contain_text("v2")
    expect(page.locator(".ce-history tr.ce-published")).to_contain_text("Say replied")
    wait_preview(page)
    shot(page, tmp_path, "template-editor-in-app.png")

    # The workflow now sends the new text, in each subscriber's language.
    started = time.monotonic()
    trigger(demo, demo.subscriber_id)
    trigger(demo, FRENCH_SUBSCRIBER)
    demo.wait_inbox_row("Linus replied to Kernel")
    demo.wait_inbox_row("Linus a répondu à Kernel")
    assert time.monotonic() - started < 30
    assert message_rendering(demo, "Linus replied to Kernel") == (2, "en")
    assert message_rendering(demo, "Linus a répondu à Kernel") == (2, "fr")

    # History: compare v1 and v2 side by side.
    page.click("text=Compare selected versions")
    expect(page.locator(".ce-diff")).to_contain_text("version 1 and version 2")
    expect(page.locator(".ce-diff-field.ce-changed", has_text="en.title")).to_contain_text("replied to")
    shot(page, tmp_path, "template-editor-diff.png")
    page.go_back()

    # One-click rollback to v1: a new version 3 with v1's content is published.
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(".ce-history tr", has_text="v1").locator(".ce-rollback").click()
    expect(page.locator(".messagelist")).to_contain_text("version 3 (a copy of version 1) is now published")
    trigger(demo, demo.subscriber_id)
    trigger(demo, FRENCH_SUBSCRIBER)
    demo.wait_inbox_row("Linus commented on Kernel")
    demo.wait_inbox_row("Linus a commenté Kernel")
    assert inbox_titles(demo, FRENCH_SUBSCRIBER) == ["Linus a répondu à Kernel", "Linus a commenté Kernel"]
    assert message_rendering(demo, "Linus commented on Kernel") == (3, "en")
    assert page_errors(demo) == []


def test_email_layout_and_sms_editors(clarion_demo: DemoSystem, page: Page, tmp_path: Path) -> None:
    """The email editor renders Markdown into a layout (iframe + plain text); the SMS editor
    counts characters and segments; the layout editor previews live. Screenshots for the docs."""
    demo = clarion_demo
    layout = {
        "name": "Acme",
        "header": {"en": "<strong>Acme</strong> · Community"},
        "footer": {"en": "Acme Inc · 1 Main Street · You get this because you follow this post."},
        "brand_color": "#0f766e",
        "is_default": True,
    }
    assert demo.system.api("PUT", "/api/v1/layouts/acme", layout).status_code in (200, 201)
    sms = {"channel": "sms", "name": "Login code", "content": {"en": {"body": "Your code is {{ payload.code }}"}}}
    sms["sample_payload"] = {"code": "493 817"}
    assert demo.system.api("PUT", "/api/v1/templates/login-code", sms).status_code in (200, 201)
    login(page, demo)

    open_editor(page, demo, "comment-email")
    page.fill("#id_sample_payload", json.dumps(SAMPLE))
    page.select_option("#id_layout", label="Acme (default)")
    page.select_option("#id_body_format", "markdown")
    page.fill(
        "#id_body_en",
        "Hi **{{ subscriber.first_name }}**,\n\n{{ payload.author }} commented on *{{ payload.post_title }}*:\n\n"
        "> {{ payload.comment }}\n\n[Reply](https://example.com/posts/1)",
    )
    page.fill("#id_preheader_en", "{{ payload.author }}: {{ payload.comment }}")
    frame = page.frame_locator("#ce-pv-frame")
    expect(frame.locator("blockquote")).to_contain_text("First!")
    expect(frame.locator("body")).to_contain_text("Acme Inc · 1 Main Street")
    expect(frame.locator("body")).to_contain_text("Unsubscribe")
    expect(page.locator("#ce-pv-preheader")).to_have_text("Grace: First!")
    shot(page, tmp_path, "template-editor-email.png")
    page.click(".ce-switch button[data-show=text]")
    expect(page.locator("#ce-pv-text")).to_contain_text("Grace commented on Hello:")
    expect(page.locator("#ce-pv-text")).to_contain_text("Unsubscribe: ")

    open_editor(page, demo, "login-code")
    expect(page.locator("#ce-pv-body")).to_have_text("Your code is 493 817")
    page.fill("#id_body_en", "Your code is {{ payload.code }}. " + "Never share it with anyone. " * 6)
    expect(page.locator("#ce-pv-sms")).to_contain_text("2 segments · GSM-7")
    page.fill("#id_body_en", "Ton code : {{ payload.code }} — ne le partage à personne")
    expect(page.locator("#ce-pv-sms")).to_contain_text("1 segment · UCS-2")
    shot(page, tmp_path, "template-editor-sms.png")

    page.goto(demo.url("/admin/notification_templates/emaillayout/"))
    page.get_by_role("link", name="acme", exact=True).click()
    layout_frame = page.frame_locator("#ce-pv-frame")
    expect(layout_frame.locator("body")).to_contain_text("Your weekly summary")
    page.fill("#id_footer_en", "Acme GmbH · Hauptstraße 1")
    expect(layout_frame.locator("body")).to_contain_text("Acme GmbH · Hauptstraße 1")
    assert page_errors(demo) == []
