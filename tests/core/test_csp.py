"""Every page carries a Content-Security-Policy, and no page needs inline script to work.

The policy (config/settings.py, django-csp) allows scripts from 'self' only: no 'unsafe-inline',
no 'unsafe-eval'. A page's HTML holds no inline script, no event-handler attribute and no style
attribute; its one allowed inline <style> (the preference center's brand colour) carries the
nonce of the response's header. The template editor and the email layout page allow inline
styles (their email previews are srcdoc iframes holding inline-styled email HTML), never scripts.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from apps.preferences.tokens import preference_token, unsubscribe_token
from apps.templates.services import layout_upsert, template_upsert, template_version_create
from tests.factories import CategoryFactory, SubscriberFactory
from tests.preferences.test_pages import form_from_page

STATIC = Path(settings.BASE_DIR) / "static" / "clarion"
NONCE = re.compile(r"'nonce-([^']+)'")


class _PageScan(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inline_scripts: list[str] = []
        self.handlers: list[str] = []
        self.style_attributes: list[str] = []
        self.style_nonces: list[str | None] = []
        self.urls: list[str] = []
        self._in_script = False
        self._script_type: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append(f"<{tag} {name}={value!r}>")
            if name == "style":
                self.style_attributes.append(f"<{tag} style={value!r}>")
            if name in ("src", "href", "action") and value:
                self.urls.append(value)
        if tag == "script":
            self._in_script = "src" not in attributes
            self._script_type = attributes.get("type")
        if tag == "style":
            self.style_nonces.append(attributes.get("nonce"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        # JSON data blocks (Django admin's json_script) are never executed: CSP does not apply.
        if self._in_script and data.strip() and self._script_type != "application/json":
            self.inline_scripts.append(data.strip()[:80])


def directives(response: Any) -> dict[str, list[str]]:
    header = response.headers.get("Content-Security-Policy")
    assert header, f"no Content-Security-Policy on {response.request['PATH_INFO']}"
    parsed: dict[str, list[str]] = {}
    for part in header.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


def assert_safe_page(response: Any, *, inline_styles: bool = False, status: int = 200) -> _PageScan:
    assert response.status_code == status, response.content[:500]
    policy = directives(response)
    assert policy["script-src"] == ["'self'"], policy
    assert policy["object-src"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    style_src = policy["style-src"]
    if inline_styles:
        assert style_src == ["'self'", "'unsafe-inline'"], style_src
    else:
        assert "'unsafe-inline'" not in style_src, style_src
    scan = _PageScan()
    scan.feed(response.content.decode())
    assert scan.inline_scripts == [], scan.inline_scripts
    assert scan.handlers == [], scan.handlers
    if not inline_styles:
        assert scan.style_attributes == [], scan.style_attributes
        nonce = NONCE.search(" ".join(style_src))
        for style_nonce in scan.style_nonces:
            assert nonce is not None and style_nonce == nonce.group(1), (style_nonce, style_src)
    return scan


def test_api_responses_carry_the_policy_too(api: Any) -> None:
    response = api.get("/api/v1/subscribers")
    assert response.status_code == 200
    assert directives(response)["default-src"] == ["'self'"]


# --- The admin and the template editor ------------------------------------------------------------


@pytest.fixture
def email_template(tenant: Any) -> Any:
    layout, _ = layout_upsert(environment=tenant.environment, key="brand", name="Brand")
    template, _ = template_upsert(environment=tenant.environment, key="welcome", channel="email")
    template_version_create(
        template=template,
        content={"en": {"subject": "Hi {{ subscriber.first_name }}", "body": "**Welcome**"}},
        publish=True,
    )
    return template, layout


def test_admin_pages_need_no_inline_script(admin_client: Client, email_template: Any) -> None:
    template, _ = email_template
    assert_safe_page(admin_client.get("/admin/"))
    assert_safe_page(admin_client.get(reverse("admin:notification_templates_template_changelist")))
    assert_safe_page(admin_client.get(reverse("admin:delivery_message_changelist")))
    version = template.versions.get()
    version_page = reverse("admin:notification_templates_templateversion_change", args=[version.pk])
    assert_safe_page(admin_client.get(version_page))
    diff = reverse("admin:notification_templates_template_diff", args=[template.pk])
    assert_safe_page(admin_client.get(diff, {"a": 1, "b": 1}))
    assert_safe_page(Client().get("/admin/login/"))


def test_template_editor_and_layout_pages_allow_inline_styles_but_no_inline_script(
    admin_client: Client, email_template: Any
) -> None:
    template, layout = email_template
    editor = reverse("admin:notification_templates_template_change", args=[template.pk])
    scan = assert_safe_page(admin_client.get(editor), inline_styles=True)
    assert "/static/clarion/admin/template-editor.js" in scan.urls
    layout_page = reverse("admin:notification_templates_emaillayout_change", args=[layout.pk])
    scan = assert_safe_page(admin_client.get(layout_page), inline_styles=True)
    assert "/static/clarion/admin/layout-preview.js" in scan.urls


# --- The hosted pages -------------------------------------------------------------------------------


@pytest.fixture
def subscriber(tenant: Any) -> Any:
    environment = tenant.environment
    environment.branding = {"product_name": "Acme", "primary_color": "#ff5500"}
    environment.save(update_fields=["branding"])
    CategoryFactory(environment=environment, key="comments", name="Comments")
    return SubscriberFactory(environment=environment, subscriber_id="u1")


def test_preference_pages_need_no_inline_script_or_style(subscriber: Any) -> None:
    client = Client()
    page = f"/preferences/{preference_token(subscriber=subscriber)}/"
    scan = assert_safe_page(client.get(page))
    assert "/static/clarion/preferences.css" in scan.urls
    # The brand colour is the one inline <style>, allowed by the response's nonce.
    assert len(scan.style_nonces) == 1

    saved = client.post(page, form_from_page(client.get(page).content.decode()), follow=True)
    scan = assert_safe_page(saved)
    assert "data-autofocus" in saved.content.decode()  # focused by static/clarion/preferences.js
    assert "/static/clarion/preferences.js" in scan.urls

    unsubscribe = f"/unsubscribe/{unsubscribe_token(subscriber=subscriber, category_key=None, channel=None)}"
    assert_safe_page(client.get(unsubscribe))
    assert_safe_page(client.post(unsubscribe, {"List-Unsubscribe": "One-Click"}))
    error = client.get("/preferences/not-a-token/")
    assert_safe_page(error, status=error.status_code)
    assert error.status_code >= 400


def test_static_scripts_exist_and_need_no_eval() -> None:
    for name in ("preferences.js", "demo-page.js", "admin/template-editor.js", "admin/layout-preview.js"):
        source = (STATIC / name).read_text()
        assert "eval(" not in source and "new Function" not in source, name


# --- The demo page: the flag and a loopback client --------------------------------------------------

DEMO = "/demo/inbox/"


@pytest.fixture
def demo(settings: Any, tmp_path: Path, tenant: Any) -> dict[str, str]:
    settings.VAR_DIR = tmp_path
    settings.CLARION_DEMO_PAGE = True
    settings.DEBUG = False
    data = {
        "environment_slug": tenant.environment.slug,
        "secret_key": tenant.secret_key,
        "publishable_key": tenant.publishable_key,
        "inbox_hmac_secret": tenant.environment.inbox_hmac_secret,
        "subscriber_id": "demo-user",
    }
    (tmp_path / "demo.json").write_text(json.dumps(data))
    return data


def test_demo_page_needs_no_inline_script_or_style(demo: dict[str, str]) -> None:
    scan = assert_safe_page(Client().get(DEMO))
    assert "/static/clarion/demo-page.css" in scan.urls and "/static/clarion/inbox.js" in scan.urls
    assert scan.style_nonces == []


@pytest.mark.parametrize("remote_addr", ["127.0.0.1", "::1"])
def test_demo_page_answers_a_loopback_client_with_debug_off(demo: dict[str, str], remote_addr: str) -> None:
    response = Client(REMOTE_ADDR=remote_addr).get(DEMO)
    assert response.status_code == 200
    assert demo["secret_key"] in response.content.decode()


@pytest.mark.parametrize(
    "extra",
    [
        {"REMOTE_ADDR": "203.0.113.7"},
        {"REMOTE_ADDR": "10.0.0.2"},
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.7"},
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_FORWARDED": "for=203.0.113.7"},
        {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_REAL_IP": "203.0.113.7"},
    ],
)
def test_demo_page_refuses_other_clients_even_with_the_flag(demo: dict[str, str], extra: dict[str, str]) -> None:
    response = Client(**extra).get(DEMO)
    assert response.status_code == 404
    assert demo["secret_key"] not in response.content.decode()


def test_demo_page_is_off_without_the_flag_even_on_loopback(demo: dict[str, str], settings: Any) -> None:
    settings.CLARION_DEMO_PAGE = False
    assert Client().get(DEMO).status_code == 404


# --- The API reference: served from the package, offline -------------------------------------------


EXTERNAL_URL = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)


def test_api_docs_load_swagger_ui_from_our_static_files_only(db: Any) -> None:
    client = Client()
    page = client.get("/api/docs/")
    scan = assert_safe_page(page)
    html = page.content.decode()
    assert EXTERNAL_URL.search(html) is None, EXTERNAL_URL.search(html)
    assert all(url.startswith("/") for url in scan.urls), scan.urls
    for url in scan.urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        if "script" in url:
            script = b"".join(asset.streaming_content) if asset.streaming else asset.content
            assert EXTERNAL_URL.search(script.decode()) is None
    assert any("drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in url for url in scan.urls)


# --- The widget runs under its host page's strict policy ----------------------------------------


def test_inbox_widget_needs_no_eval_inline_script_or_style_attribute() -> None:
    source = (STATIC / "inbox.js").read_text()
    assert "eval(" not in source and "new Function" not in source
    assert not re.search(r"""\bstyle:\s*["']""", source), "a style attribute needs style-src 'unsafe-inline'"
    assert 'setAttribute("style"' not in source
    # Its styles are a constructable stylesheet (adoptedStyleSheets): no style-src needed.
    assert "adoptedStyleSheets" in source and "replaceSync" in source
