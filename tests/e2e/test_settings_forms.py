"""The settings forms in a real Chromium: allowed origins edited as rows (add, remove, an error
beside the bad row, saved as the JSON list), the logo preview following the URL, an API key shown
once with a Copy button, an integration's webhook URL copied to the clipboard; no CSP violation.

Runs against pytest-django's ``live_server``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.delivery.models import Integration
from apps.tenancy.models import ApiKey, Environment
from apps.tenancy.services import environment_create, hash_key
from tests.e2e.conftest import under_ci
from tests.factories import IntegrationFactory

try:
    from playwright.sync_api import Page, expect
except ImportError:  # a dev dependency; without it `make test` must still collect this folder
    if under_ci():
        raise
    pytest.skip("the playwright package is not installed", allow_module_level=True)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
RUN_AXE = """
async () => {
  const result = await axe.run(document, {runOnly: {type: "tag", values: ["wcag2a", "wcag2aa"]}});
  return {
    passes: result.passes.length,
    violations: result.violations.filter((v) => ["critical", "serious"].includes(v.impact)).map((v) => ({
      id: v.id, impact: v.impact, help: v.help, targets: v.nodes.slice(0, 5).map((n) => n.html.slice(0, 160)),
    })),
  };
}
"""
WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.effectiveDirective} blocked ${e.blockedURI || "inline"}`);
});
"""


@pytest.fixture(scope="module")
def _orm_beside_playwright() -> Iterator[None]:
    """Playwright's sync API keeps an event loop in this thread: allow plain ORM calls here."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


@pytest.fixture
def console(_orm_beside_playwright: None, live_server: Any, django_user_model: Any) -> dict[str, Any]:
    django_user_model.objects.create_superuser("e2e-admin", "admin@example.com", "e2e-password")
    environment = environment_create(name="production", project_name="Acme").environment
    integration = IntegrationFactory(environment=environment, channel="sms", provider="twilio")
    return {"base": str(live_server.url), "environment": environment, "integration": integration}


def _log_in(page: Page, base: str, next_url: str) -> None:
    page.add_init_script(WATCH)
    page.goto(f"{base}/admin/login/?next={next_url}")
    page.fill("#id_username", "e2e-admin")
    page.fill("#id_password", "e2e-password")
    page.get_by_role("button", name="Log in").click()


def _screenshot(page: Page, tmp_path: Path, name: str, *headings: str) -> None:
    """The fieldsets with these headings (the viewport without any): docs/img for the docs."""
    folder = Path(os.environ.get("CLARION_E2E_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    if not headings:
        page.screenshot(path=str(folder / name), full_page=False)
        return
    # A window as tall as the page: the theme's sticky Save bar then sits below the fieldsets
    # instead of being drawn across them in a clip beyond the window.
    page.set_viewport_size({"width": 1280, "height": int(page.evaluate("document.documentElement.scrollHeight"))})
    page.evaluate("window.scrollTo(0, 0)")
    boxes = [page.locator("fieldset", has=page.locator("h2", has_text=h)).bounding_box() for h in headings]
    top, bottom = min(b["y"] for b in boxes if b), max(b["y"] + b["height"] for b in boxes if b)
    left, width = min(b["x"] for b in boxes if b), max(b["width"] for b in boxes if b)
    clip = {"x": left - 8, "y": top - 8, "width": width + 16, "height": bottom - top + 16}
    page.screenshot(path=str(folder / name), full_page=True, clip=clip)


def test_allowed_origins_branding_and_a_new_key(console: dict[str, Any], page: Page, tmp_path: Path) -> None:
    environment: Environment = console["environment"]
    _log_in(page, console["base"], f"/admin/tenancy/environment/{environment.pk}/change/")
    rows = page.locator(".clarion-origin-list input[type=text]")
    expect(rows).to_have_count(1)

    rows.nth(0).fill("https://App.Example.com/")
    page.get_by_role("button", name="Add an origin").click()
    rows.nth(1).fill("https://drop.example.com")
    page.get_by_role("button", name="Add an origin").click()
    rows.nth(2).fill("https://x.example.com/path")
    page.locator(".clarion-origin-row").nth(1).get_by_role("button", name="Remove").click()
    expect(rows).to_have_count(2)

    page.get_by_label("Logo URL").fill("https://cdn.acme.test/logo.png")
    expect(page.locator("img.clarion-logo-preview")).to_have_attribute("src", "https://cdn.acme.test/logo.png")
    expect(page.locator("img.clarion-logo-preview")).to_have_attribute("referrerpolicy", "no-referrer")
    page.get_by_label("No brand colour").uncheck()
    page.locator("input[type=color]").fill("#0f766e")
    page.get_by_role("button", name="Save and continue editing").click()

    bad = page.get_by_role("textbox", name="Allowed origin 2")
    expect(bad).to_have_attribute("aria-invalid", "true")
    expect(page.locator(".clarion-origin-error")).to_contain_text("Not an origin")
    environment.refresh_from_db()
    assert environment.allowed_origins == []
    _screenshot(page, tmp_path, "console-settings-environment.png", "Inbox", "Branding")

    bad.fill("https://*.example.org")
    page.get_by_role("button", name="Save and continue editing").click()
    expect(page.locator(".messagelist")).to_contain_text("was changed successfully")
    environment.refresh_from_db()
    assert environment.allowed_origins == ["https://app.example.com", "https://*.example.org"]
    assert environment.branding == {"primary_color": "#0f766e", "logo_url": "https://cdn.acme.test/logo.png"}

    page.get_by_role("link", name="Create an API key").click()
    page.get_by_label("Publishable (inbox)").check()
    page.get_by_label("Name").fill("web app")
    page.get_by_role("button", name="Create the key").click()
    raw = page.get_by_label("Key").input_value()
    assert raw.startswith("pk_")
    assert ApiKey.objects.get(name="web app").key_hash == hash_key(raw)
    page.go_back()  # not kept anywhere the browser can bring back from the server
    page.goto(f"{console['base']}/admin/tenancy/environment/{environment.pk}/change/")
    assert raw not in page.content()
    assert page.evaluate("window.__csp") == []


def test_copy_a_webhook_url(console: dict[str, Any], page: Page, tmp_path: Path) -> None:
    integration: Integration = console["integration"]
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    _log_in(page, console["base"], f"/admin/delivery/integration/{integration.pk}/change/")
    button = page.get_by_role("button", name="Copy the status callback URL")
    url = button.get_attribute("data-copy")
    assert url and integration.webhook_key in url
    expect(page.locator(".clarion-webhook-url").first).to_contain_text(url)
    button.click()
    expect(button).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == url
    button.scroll_into_view_if_needed()
    _screenshot(page, tmp_path, "console-settings-integration.png")
    assert page.evaluate("window.__csp") == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_critical_or_serious_accessibility_violation(console: dict[str, Any], page: Page, scheme: str) -> None:
    page.emulate_media(color_scheme=scheme)  # the admin follows prefers-color-scheme
    environment: Environment = console["environment"]
    integration: Integration = console["integration"]
    base = console["base"]
    _log_in(page, base, f"/admin/tenancy/environment/{environment.pk}/change/")
    page.locator(".clarion-origin-list input[type=text]").nth(0).fill("ftp://bad.example.com")
    page.get_by_role("button", name="Save and continue editing").click()  # a page with a row error
    expect(page.locator(".clarion-origin-error")).to_be_visible()
    pages = {"environment (with an error)": page.url}
    for name, path in {
        "create a key": f"/admin/tenancy/environment/{environment.pk}/keys/new/",
        "rotate the inbox secret": f"/admin/tenancy/environment/{environment.pk}/inbox-secret/rotate/",
        "integration": f"/admin/delivery/integration/{integration.pk}/change/",
        "send a test": f"/admin/delivery/integration/{integration.pk}/send-test/",
    }.items():
        pages[name] = base + path
    found = {}
    for name, url in pages.items():
        if page.url != url:
            page.goto(url)
        page.evaluate(AXE.read_text(encoding="utf-8"))
        report = page.evaluate(RUN_AXE)
        assert report["passes"] > 0
        if report["violations"]:
            found[name] = report["violations"]
    page.goto(f"{base}/admin/tenancy/environment/{environment.pk}/keys/new/")
    page.get_by_role("button", name="Create the key").click()
    page.evaluate(AXE.read_text(encoding="utf-8"))
    report = page.evaluate(RUN_AXE)
    if report["violations"]:
        found["the new key"] = report["violations"]
    assert not found, found
