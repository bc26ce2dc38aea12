"""The first hour of a newcomer (issue 12), in the system Chromium.

``test_the_readmes_first_hour_on_another_port`` walks the README as written, with ``make run`` on a
port that is not 8000: the banner → the landing page → the demo inbox, live → the email a minute
later in ``var/mail/`` → its preference link opens → its one-click unsubscribe works. Every link
must follow the port.

The others check the stumbles the issue lists against the shared live installation
(``clarion_demo``): the widget's header fits 320 px in every shipped language, its empty states
and preferences view, and the template editor after a refused publish.

Screenshots (French header at 320 px, empty states, landing page) go to ``CLARION_E2E_SCREENSHOTS``
or a temporary folder.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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

ROOT = Path(__file__).resolve().parents[2]
LANGUAGES = ["en", "fr", "de"]
SCREENSHOT_MAX_BYTES = 300 * 1024
RUN_PORTS = range(8500, 8600)
START_TIMEOUT = 240.0  # make run on a fresh clone: migrations, collectstatic, seed
MAIL_TIMEOUT = 150.0  # the demo workflow waits a minute before the email


def shot(page: Page, tmp_path: Path, name: str, *, full_page: bool = False) -> Path:
    folder = Path(os.environ.get("CLARION_E2E_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    page.screenshot(path=str(target), full_page=full_page)
    assert 0 < target.stat().st_size < SCREENSHOT_MAX_BYTES, (name, target.stat().st_size)
    return target


# --- the widget on a customer's page ----------------------------------------------------------------


def free_port() -> int:
    """A free port in 8500-8599 (the range this suite's own servers use)."""
    for port in RUN_PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port in 8500-8599")


class _Pages(BaseHTTPRequestHandler):
    pages: dict[str, str] = {}

    def do_GET(self) -> None:
        body = self.pages.get(self.path).encode() if self.path in self.pages else b""
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def customer_site() -> Iterator[tuple[str, dict[str, str]]]:
    """A customer's site on another origin than Clarion: (origin, {path: html})."""
    handler = type("Pages", (_Pages,), {"pages": {}})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", handler.pages
    finally:
        server.shutdown()
        server.server_close()


def host_widget(
    page: Page,
    site: tuple[str, dict[str, str]],
    demo: DemoSystem,
    subscriber_id: str,
    *,
    attrs: str = "",
    width: int = 320,
) -> None:
    """Put docs/inbox.md's snippet on the customer's site and open it."""
    secret = demo.demo["inbox_hmac_secret"].encode()
    digest = hmac.new(secret, subscriber_id.encode(), hashlib.sha256).hexdigest()
    widget = (
        f'<clarion-inbox publishable-key="{demo.demo["publishable_key"]}" subscriber-id="{subscriber_id}" '
        f'subscriber-hash="{digest}" {attrs}></clarion-inbox>'
    )
    inline = " inline" in f" {attrs}"
    html = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1"><title>Acme</title>
        <script src="{demo.base_url}/static/clarion/inbox.js" defer></script></head>
        <body style="margin:0;font-family:system-ui,sans-serif;background:#f6f7f9">
        <nav style="display:flex;justify-content:space-between;align-items:center;padding:10px 8px">
          <strong>Acme</strong>{"" if inline else widget}</nav>
        {f'<main style="padding:0 8px">{widget}</main>' if inline else ""}</body></html>"""
    origin, pages = site
    path = f"/{subscriber_id}-{len(pages)}"
    pages[path] = html
    page.set_viewport_size({"width": width, "height": 720})
    page.goto(origin + path)
    expect(page.locator("clarion-inbox")).to_have_attribute("connection", "live")


MEASURE = """
(el) => {
  const root = el.shadowRoot;
  const panelEl = root.querySelector('.panel');
  const panel = panelEl.getBoundingClientRect();
  const header = root.querySelector('header');
  const shown = [...header.children].filter((c) => !c.hidden && getComputedStyle(c).display !== 'none');
  const lines = (node) => {
    const range = document.createRange();
    range.selectNodeContents(node);
    return range.getClientRects().length;
  };
  const heading = root.querySelector('.heading');
  return {
    viewport: innerWidth,
    panel: { left: panel.left, right: panel.right, width: panel.width },
    headerOverflow: header.scrollWidth - header.clientWidth,
    boxes: shown.map((c) => { const b = c.getBoundingClientRect();
      return { name: c.className || c.tagName, left: b.left, right: b.right, height: b.height }; }),
    tabs: [...root.querySelectorAll('[role=tab]')].filter((t) => t.getClientRects().length)
      .map((t) => ({ text: t.textContent, lines: lines(t) })),
    headingLines: lines(heading),
    headingTruncated: heading.scrollWidth > heading.clientWidth,
    compact: panelEl.classList.contains('compact'),
  };
}
"""


def assert_header_fits(geometry: dict[str, Any], label: str) -> None:
    panel = geometry["panel"]
    assert panel["right"] <= geometry["viewport"] + 0.5, (label, geometry)
    assert geometry["headerOverflow"] <= 0, (label, geometry)
    for box in geometry["boxes"]:
        assert box["left"] >= panel["left"] - 0.5 and box["right"] <= panel["right"] - 1, (label, box, geometry)
    for tab in geometry["tabs"]:
        assert tab["lines"] == 1, (label, tab)  # "Non lues" on one line
    assert geometry["headingLines"] == 1 and not geometry["headingTruncated"], (label, geometry)


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_widget_header_fits_320_px_in_every_language(
    clarion_demo: DemoSystem, customer_site: tuple[str, dict[str, str]], page: Page, tmp_path: Path, language: str
) -> None:
    subscriber_id = f"first-hour-{language}-{uuid.uuid4().hex[:8]}"
    clarion_demo.trigger({"post_title": "Hello", "comment": "First!", "author": "Grace"}, to=subscriber_id)
    attrs = f'locale="{language}" categories="comments:Comments"'

    # The bell's panel on a 320 px phone, then in its full 380 px on a desktop.
    for width in (320, 1280):
        host_widget(page, customer_site, clarion_demo, subscriber_id, attrs=attrs, width=width)
        widget = page.locator("clarion-inbox")
        page.locator("clarion-inbox .bell").click()
        expect(page.locator("clarion-inbox .item")).to_have_count(1)
        expect(page.locator("clarion-inbox header .count")).to_have_text("1")
        geometry = widget.evaluate(MEASURE)
        assert_header_fits(geometry, f"{language} popup at {width}")
        close = page.locator("clarion-inbox header .icon-btn").last
        expect(close).to_be_in_viewport(ratio=1)
        if width == 320 and language == "fr":
            shot(page, tmp_path, "first-hour-widget-fr-320.png")
        # The preferences view's header too.
        page.locator("clarion-inbox header .icon-btn").nth(-2).click()  # the gear
        expect(page.locator("clarion-inbox .prefs .pref").first).to_be_visible()
        assert_header_fits(widget.evaluate(MEASURE), f"{language} preferences at {width}")
        if width == 320 and language == "de":
            shot(page, tmp_path, "first-hour-widget-de-320-preferences.png")

    # Inline, in a 320 px wide page.
    host_widget(page, customer_site, clarion_demo, subscriber_id, attrs=attrs + " inline", width=320)
    expect(page.locator("clarion-inbox .item")).to_have_count(1)
    geometry = page.locator("clarion-inbox").evaluate(MEASURE)
    assert_header_fits(geometry, f"{language} inline at 320")
    # Whatever the header shows, "mark all as read" keeps its words for screen readers.
    mark_all = {"en": "Mark all as read", "fr": "Tout marquer comme lu", "de": "Alle als gelesen markieren"}[language]
    expect(page.locator("clarion-inbox").get_by_role("button", name=mark_all)).to_be_visible()


def test_empty_states_say_what_the_filter_found_and_preferences_hide_the_badge(
    clarion_demo: DemoSystem, customer_site: tuple[str, dict[str, str]], page: Page, tmp_path: Path
) -> None:
    subscriber_id = f"first-hour-empty-{uuid.uuid4().hex[:8]}"
    clarion_demo.trigger({"post_title": "Hello", "comment": "First!", "author": "Grace"}, to=subscriber_id)
    host_widget(
        page,
        customer_site,
        clarion_demo,
        subscriber_id,
        attrs='inline categories="comments:Comments,billing:Billing"',
        width=420,
    )
    widget = page.locator("clarion-inbox")
    empty = page.locator("clarion-inbox .empty")
    expect(page.locator("clarion-inbox .item")).to_have_count(1)

    widget.get_by_role("tab", name="Archived").click()
    expect(empty).to_have_text("Nothing archived")
    shot(page, tmp_path, "first-hour-empty-archived.png")

    widget.get_by_role("tab", name="All").click()
    widget.locator("select").select_option("billing")
    expect(empty).to_have_text("Nothing in this category")
    widget.locator("select").select_option("")

    page.locator("clarion-inbox .item").click()  # read it
    expect(page.locator("clarion-inbox header .count")).to_be_hidden()
    widget.get_by_role("tab", name="Unread").click()
    expect(empty).to_have_text("All caught up")
    shot(page, tmp_path, "first-hour-empty-unread.png")

    # A second message: the count shows on the list, not on the preferences view.
    clarion_demo.trigger({"post_title": "Again", "comment": "Second", "author": "Alan"}, to=subscriber_id)
    count = page.locator("clarion-inbox header .count")
    expect(count).to_have_text("1", timeout=5_000)
    widget.get_by_role("button", name="Notification preferences").click()
    expect(widget.get_by_role("heading", name="Preferences")).to_be_visible()
    expect(count).to_be_hidden()
    # Chat is offered per category because it is offered globally.
    comments = widget.get_by_role("group", name="Comments")
    expect(comments.get_by_role("checkbox", name="Chat")).to_be_visible()
    globals_ = widget.locator(".prefs > .pref:not([role=group]) input")
    categories = comments.locator("input")
    expect(categories).to_have_count(globals_.count())
    shot(page, tmp_path, "first-hour-preferences.png")
    widget.get_by_role("button", name="Back").click()
    expect(count).to_have_text("1")
    expect(count).to_be_visible()


# --- the template editor ------------------------------------------------------------------------------


def test_the_editor_opens_the_language_a_refused_publish_is_about(clarion_demo: DemoSystem, page: Page) -> None:
    demo = clarion_demo
    key = f"first-hour-{uuid.uuid4().hex[:8]}"
    sample = {"post_title": "Hello", "author": "Grace"}
    for number, publish in ((1, True), (2, True), (3, False)):
        response = demo.system.api(
            "PUT",
            f"/api/v1/templates/{key}",
            {
                "channel": "in_app",
                "sample_payload": sample,
                "content": {
                    "en": {"title": f"v{number} {{{{ payload.author }}}}", "body": "{{ payload.post_title }}"},
                    "fr": {"title": f"v{number} fr", "body": "{{ payload.post_title }}"},
                },
                "publish": publish,
            },
        )
        assert response.status_code in (200, 201), response.text

    page.goto(demo.url("/admin/login/?next=/admin/"))
    page.fill("#id_username", demo.demo["admin_username"])
    page.fill("#id_password", demo.demo["admin_password"])
    page.get_by_role("button", name="Log in").click()
    page.goto(demo.url("/admin/notification_templates/template/"))
    page.get_by_role("link", name=key, exact=True).click()
    expect(page.locator(".ce-editor")).to_be_visible()

    # History: v2 is published, v1 was replaced by it, v3 is a newer draft.
    rows = page.locator(".ce-history tbody tr")
    expect(rows.filter(has_text="v1").locator("td").nth(2)).to_have_text("superseded")
    expect(rows.filter(has_text="v2").locator("td").nth(2)).to_have_text("published")
    expect(rows.filter(has_text="v3").locator("td").nth(2)).to_have_text("draft")
    # The sample payload field has a label.
    expect(page.get_by_label("Sample payload (JSON)")).to_have_value(re.compile('"author": "Grace"'))

    # A broken French body, then "publish" from the English tab: refused, and the French tab opens
    # with the error in view.
    page.locator(".ce-tab[data-lang=fr]").click()
    page.fill("#id_body_fr", "{% if %}")
    page.locator(".ce-tab[data-lang=en]").click()
    page.click("#ce-publish")
    expect(page.locator(".messagelist")).to_contain_text("Not published")
    expect(page.locator(".ce-tab[data-lang=fr]")).to_have_attribute("aria-selected", "true")
    error = page.locator('[data-error-for="fr.body"]')
    expect(error).to_be_visible()
    expect(error).to_be_in_viewport()
    expect(page.locator(".ce-tab[data-lang=fr]")).to_have_class(re.compile("ce-tab-error"))
    expect(page.locator("#id_body_fr")).to_have_value("{% if %}")


# --- the README's first hour, with make run on another port -------------------------------------------


class MakeRun:
    """``make run`` in its own process group, its output collected line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        # The test's own virtualenv is already installed: `-o` keeps make from re-installing it.
        self.process = subprocess.Popen(
            ["make", "--no-print-directory", "-o", ".venv/.installed", "run"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def banner(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output()
            start = text.find("Clarion is running")
            if start != -1 and text.find("export CLARION_URL=", start) != -1:
                end = text.find("=" * 78, text.find("export CLARION_URL=", start))
                if end != -1:
                    return text[start:end]
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no banner after {timeout:.0f} s:\n{self.output()[-6000:]}")

    def stop(self) -> None:
        """Ctrl-C, as a person would; then whatever is left of the group is killed."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # stray children, if any
        except ProcessLookupError:
            pass


@pytest.fixture
def make_run(chromium_executable: str, tmp_path: Path) -> Iterator[tuple[MakeRun, int, Path]]:
    port = free_port()
    var_dir = tmp_path / "var"
    env = {
        k: v
        for k, v in os.environ.items()
        # A newcomer's shell: no services, no keys, no public URL; make generates and derives them.
        if k
        not in {
            "DATABASE_URL",
            "REDIS_URL",
            "SECRET_KEY",
            "CLARION_ENCRYPTION_KEYS",
            "CLARION_PUBLIC_URL",
            "CLARION_TASKS_EAGER",
            "CLARION_DEMO_PAGE",
            "DEBUG",
            "MAKEFLAGS",
            "MAKELEVEL",
        }
    }
    env.update(PORT=str(port), HOST="127.0.0.1", CLARION_VAR_DIR=str(var_dir), PYTHONUNBUFFERED="1")
    run = MakeRun(env)
    try:
        yield run, port, var_dir
    finally:
        run.stop()


def banner_value(banner: str, label: str) -> str:
    match = re.search(rf"^\s*{re.escape(label)}\s+(\S+)", banner, re.MULTILINE)
    assert match, f"no {label!r} in the banner:\n{banner}"
    return match.group(1)


def demo_emails(var_dir: Path) -> list[EmailMessage]:
    folder = var_dir / "mail"
    found: list[EmailMessage] = []
    for path in sorted(folder.glob("*.log")) if folder.is_dir() else []:
        for chunk in path.read_text(encoding="utf-8", errors="replace").split("\n" + "-" * 79 + "\n"):
            if chunk.strip():
                found.append(email.message_from_string(chunk.lstrip("\n"), policy=email.policy.default))  # type: ignore[arg-type]
    return found


def test_the_readmes_first_hour_on_another_port(
    make_run: tuple[MakeRun, int, Path], page: Page, tmp_path: Path
) -> None:
    run, port, var_dir = make_run
    base = f"http://127.0.0.1:{port}"

    # 1. The banner: every URL on our port, the public URL derived from it, the keys and files.
    banner = run.banner(START_TIMEOUT)
    assert banner_value(banner, "App") == f"{base}/"
    assert banner_value(banner, "Demo inbox") == f"{base}/demo/inbox/"
    assert banner_value(banner, "Public URL") == base
    demo = json.loads((var_dir / "demo.json").read_text())
    assert banner_value(banner, "Secret key") == demo["secret_key"]
    assert banner_value(banner, "Inbox secret") == demo["inbox_hmac_secret"]
    assert banner_value(banner, "Demo keys") == str((var_dir / "demo.json").resolve())
    assert f"export CLARION_URL={base} CLARION_API_KEY={demo['secret_key']}" in banner

    # 2. The banner's first URL: the landing page, linking the rest.
    page.goto(banner_value(banner, "App"))
    expect(page).to_have_title("Clarion")
    for name in ("Admin", "Demo inbox", "API docs", "Docs"):
        expect(page.get_by_role("link", name=name, exact=True).first).to_be_visible()
    shot(page, tmp_path, "first-hour-landing.png", full_page=True)
    icon = httpx.get(f"{base}/favicon.ico", follow_redirects=True)
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg")

    # 3. The demo inbox, live; the banner's curl, pasted into a terminal, shows up without a reload.
    page.get_by_role("link", name="Demo inbox", exact=True).first.click()
    expect(page.locator("clarion-inbox")).to_have_attribute("connection", "live", timeout=20_000)
    curl = banner[banner.index("curl -X POST") : banner.index("The README's examples")].strip()
    command = shlex.split(curl.replace("\\\n", " "))
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and '"accepted"' in done.stdout, (done.stdout, done.stderr)
    item = page.locator("clarion-inbox li.item", has_text="Grace commented on Hello")
    expect(item).to_be_visible(timeout=10_000)

    # The README's own examples, with the two exported variables.
    transaction_id = json.loads(done.stdout)["transaction_id"]
    trace = httpx.get(
        f"{base}/api/v1/events/{transaction_id}", headers={"Authorization": f"Bearer {demo['secret_key']}"}
    )
    assert trace.status_code == 200, trace.text

    # 4. Left unread, the email lands in var/mail/ a minute later.
    deadline = time.monotonic() + MAIL_TIMEOUT
    mails: list[EmailMessage] = []
    while time.monotonic() < deadline and not mails:
        mails = [m for m in demo_emails(var_dir) if "demo@example.com" in str(m.get("To", ""))]
        time.sleep(1)
    assert mails, f"no email in {var_dir / 'mail'} after {MAIL_TIMEOUT:.0f} s\n{run.output()[-4000:]}"
    message = mails[-1]
    assert message["Subject"] == "New comment on Hello"

    # 5. Its links follow the port: the preference link opens, one-click unsubscribe works.
    html = next(part.get_content() for part in message.walk() if part.get_content_type() == "text/html")
    preferences = re.search(r'href="([^"]+/preferences/[^"]+)"', html)
    assert preferences, html[:3000]
    unsubscribe = re.search(r"<([^>]+/unsubscribe/[^>]+)>", str(message["List-Unsubscribe"]))
    assert unsubscribe, message["List-Unsubscribe"]
    assert preferences.group(1).startswith(f"{base}/preferences/"), preferences.group(1)
    assert unsubscribe.group(1).startswith(f"{base}/unsubscribe/"), unsubscribe.group(1)
    assert "You get this because you follow posts on the Clarion demo." in html

    page.goto(preferences.group(1).replace("&amp;", "&"))
    expect(page).to_have_title(re.compile("Notification preferences"))
    expect(page.get_by_role("checkbox", name="Email").first).to_be_visible()

    response = httpx.post(unsubscribe.group(1), data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200, response.text
    state = httpx.get(
        f"{base}/api/v1/subscribers/demo-user/preferences", headers={"Authorization": f"Bearer {demo['secret_key']}"}
    ).json()
    comments = {c["key"]: c["channels"] for c in state["categories"]}["comments"]
    assert comments["email"] is False and comments["in_app"] is True, state
