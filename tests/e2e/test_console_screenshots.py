"""The pictures of docs/console.md, taken of the demo installation (uvicorn + the worker) in Chromium,
on data made through the real API: subscribers, a workflow published twice, triggers the worker
walks (in-app and email messages sent, steps skipped for a preference and for a missing address),
a skipped-only event. Nothing is written into the database by hand.

``CLARION_E2E_SCREENSHOTS=docs/img`` (re)writes them; otherwise they go to a temporary folder, so
CI still runs every page and its checks without touching the tree. Each test checks that its page
shows what the picture is meant to show before taking it, and that the file is a PNG of a
reasonable size. The other console pictures are taken by the tests of their pages:
``test_workflow_editor.py`` (workflow-editor.png), ``test_template_editor.py`` (template-editor-*.png)
and ``test_settings_forms.py`` (console-settings-*.png).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import DemoSystem, under_ci
from tests.e2e.test_console_proofs import skipped_event

try:
    from playwright.sync_api import FloatRect, Locator, Page, expect
except ImportError:  # a dev dependency; without it `make test` must still collect this folder
    if under_ci():
        raise
    pytest.skip("the playwright package is not installed", allow_module_level=True)

pytestmark = pytest.mark.e2e

MAX_BYTES = 450 * 1024
TOUR = "product-update"
TOUR_STEPS = [
    {"id": "inbox", "type": "in_app", "template": "comment-in-app"},
    {"id": "mail", "type": "email", "template": "comment-email"},
]
TOUR_STEPS_V2 = [
    {"id": "inbox", "type": "in_app", "template": "comment-in-app"},
    {"id": "wait", "type": "delay", "for": "5m"},
    {"id": "mail", "type": "email", "template": "comment-email", "if": "not steps.inbox.read"},
]
SUBSCRIBERS = {  # in this order in each trigger's "to": the event's timeline shows them so
    "margaret": {"email": "margaret@example.com", "first_name": "Margaret", "last_name": "Hamilton", "locale": "en"},
    "linus": {"first_name": "Linus", "locale": "en"},  # no email address: email steps are skipped
    "ada": {"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace", "locale": "en"},
    "grace": {"email": "grace@example.com", "first_name": "Grace", "last_name": "Hopper", "locale": "en"},
}
PAYLOADS = [
    {"post_title": "Release 2.4", "comment": "The new editor is out.", "author": "Grace"},
    {"post_title": "Quarterly report", "comment": "Numbers are in.", "author": "Ada"},
    {"post_title": "Incident review", "comment": "Root cause found.", "author": "Margaret"},
]


@dataclass
class Tour:
    demo: DemoSystem
    folder: Path
    tour_event: str  # a transaction id of TOUR, for all four subscribers, walked to the end
    skipped_subscriber: str
    skipped_event: str


def _api_ok(demo: DemoSystem, method: str, path: str, body: object) -> dict[str, object]:
    response = demo.system.api(method, path, body)
    assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
    return response.json() if response.content else {}


def _wait_completed(demo: DemoSystem, transaction_id: str, runs: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    statuses: list[object] = []
    while time.monotonic() < deadline:
        body = demo.system.api("GET", f"/api/v1/events/{transaction_id}").json()
        statuses = [run.get("status") for run in body.get("runs", [])]
        if len(statuses) == runs and set(statuses) == {"completed"}:
            return
        time.sleep(0.3)
    raise AssertionError(f"{transaction_id}: runs {statuses} after {timeout:.0f} s\n{demo.logs()}")


@pytest.fixture(scope="module")
def tour(clarion_demo: DemoSystem, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tour]:
    """The demo's own data plus, through the API: four subscribers (one without an email address,
    one with email turned off for "comments"), TOUR published as version 1 then 2, three triggers
    of version 1 to the four (sent and skipped messages), three of the demo workflow to the demo
    subscriber, and the skipped-only event of the proofs."""
    demo = clarion_demo
    folder = Path(os.environ.get("CLARION_E2E_SCREENSHOTS") or tmp_path_factory.mktemp("console-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    for subscriber_id, fields in SUBSCRIBERS.items():
        _api_ok(demo, "PUT", f"/api/v1/subscribers/{subscriber_id}", fields)
    _api_ok(demo, "PATCH", "/api/v1/subscribers/margaret/preferences", {"categories": {"comments": {"email": False}}})
    workflow = {"name": "Product update", "category": "comments", "steps": TOUR_STEPS, "publish": True}
    _api_ok(demo, "PUT", f"/api/v1/workflows/{TOUR}", workflow)
    tour_events = []
    for payload in PAYLOADS:
        body = {"workflow": TOUR, "to": list(SUBSCRIBERS), "payload": payload}
        tour_events.append(str(_api_ok(demo, "POST", "/api/v1/events/trigger", body)["transaction_id"]))
    for payload in PAYLOADS:
        demo.trigger(payload)
    for transaction_id in tour_events:
        _wait_completed(demo, transaction_id, runs=len(SUBSCRIBERS))
    _api_ok(demo, "PUT", f"/api/v1/workflows/{TOUR}", {**workflow, "steps": TOUR_STEPS_V2})
    subscriber, _, skipped = skipped_event(demo)
    yield Tour(demo, folder, tour_events[0], subscriber, skipped)


def shot(page: Page, tour: Tour, name: str, element: Locator | None = None, until: Locator | None = None) -> None:
    """The window; or just ``element`` (one of Clarion's own sections: the same whatever the theme),
    down to the bottom of ``until`` if given. For a section, the window is first made as tall as the
    page: Chromium draws a region beyond the window wrongly beside a sticky sidebar."""
    page.wait_for_load_state("networkidle")
    target = tour.folder / name
    if element is None:
        page.screenshot(path=str(target), animations="disabled", caret="hide")
    else:
        width = page.viewport_size["width"] if page.viewport_size else 1280
        page_height = page.evaluate("document.documentElement.scrollHeight")
        page.set_viewport_size({"width": width, "height": min(int(page_height), 8000)})
        page.evaluate("window.scrollTo(0, 0)")
        box = element.bounding_box()
        bottom = until.bounding_box() if until is not None else box
        assert box and bottom, name
        left, right = min(box["x"], bottom["x"]), max(box["x"] + box["width"], bottom["x"] + bottom["width"])
        clip = FloatRect(x=left, y=box["y"], width=right - left, height=bottom["y"] + bottom["height"] - box["y"])
        page.screenshot(path=str(target), clip=clip, animations="disabled", caret="hide")
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(data) < MAX_BYTES, (name, len(data))


def _open(page: Page, tour: Tour, path: str, scheme: str = "light") -> None:
    page.emulate_media(color_scheme="dark" if scheme == "dark" else "light")  # the admin follows the system
    tour.demo.log_in(page, path)


def _subscriber_pk(tour: Tour, subscriber_id: str) -> int:
    rows = tour.demo.sqlite("SELECT id FROM subscribers_subscriber WHERE subscriber_id = ?", subscriber_id)
    assert rows, subscriber_id
    return int(rows[0][0])


def _workflow_pk(tour: Tour, key: str) -> int:
    rows = tour.demo.sqlite("SELECT id FROM workflows_workflow WHERE key = ?", key)
    assert rows, key
    return int(rows[0][0])


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_home(tour: Tour, page: Page, scheme: str) -> None:
    page.set_viewport_size({"width": 1280, "height": 1000})
    _open(page, tour, "/admin/", scheme)
    chart = page.get_by_role("img", name=re.compile(r"^Notifications triggered per hour, last 24 h"))
    expect(chart).to_be_visible()
    expect(page.get_by_role("img", name=re.compile(r"^Messages skipped by reason"))).to_be_visible()
    shot(page, tour, "console-home.png" if scheme == "light" else "console-home-dark.png")


def test_activity_list(tour: Tour, page: Page) -> None:
    _open(page, tour, "/admin/events/event/")
    expect(page.locator("#result_list").get_by_role("link", name=tour.tour_event, exact=True)).to_be_visible()
    shot(page, tour, "console-activity.png")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_event_timeline(tour: Tour, page: Page, scheme: str) -> None:
    _open(page, tour, "/admin/events/event/", scheme)
    page.locator("input[name=q]").fill(tour.tour_event)
    page.locator("input[name=q]").press("Enter")
    page.locator("#result_list").get_by_role("link", name=tour.tour_event, exact=True).click()
    timeline = page.locator("#timeline")
    expect(timeline.locator(".clarion-run")).to_have_count(len(SUBSCRIBERS))
    expect(timeline).to_contain_text("the subscriber has no email address")
    expect(timeline).to_contain_text("email is off for category comments")
    expect(timeline.locator("table.clarion-attempts").first).to_be_visible()
    runs = timeline.locator(".clarion-run")
    expect(runs.nth(2).locator("table.clarion-attempts")).to_be_visible()  # ada's email, sent
    name = "console-event.png" if scheme == "light" else "console-event-dark.png"
    # From the line under its heading (the section's and the heading's own boxes start higher,
    # beside the stock admin's floated form) to the third run: margaret (email off by preference),
    # linus (no address), ada (email sent, its delivery attempt).
    shot(page, tour, name, page.locator("#timeline > p").first, until=runs.nth(2))


def test_subscriber_page_and_why_not(tour: Tour, page: Page) -> None:
    _open(page, tour, f"/admin/subscribers/subscriber/{_subscriber_pk(tour, 'margaret')}/change/")
    for section in ("runs", "messages", "preferences"):
        expect(page.locator(f"#subscriber-{section}")).to_be_visible()
    expect(page.locator("#subscriber-messages")).to_contain_text("in_app")
    page.locator("#subscriber-runs").evaluate("(s) => s.scrollIntoView({block: 'start'})")
    shot(page, tour, "console-subscriber.png")

    page.get_by_role("link", name="Why not?").click()
    page.select_option("#id_workflow", label=page.locator("#id_workflow option", has_text=TOUR).inner_text())
    page.fill("#id_payload", json.dumps(PAYLOADS[0]))
    page.get_by_role("button", name="Dry run").click()
    result = page.locator("#why-not-result")
    expect(result).to_contain_text("email is off for category comments")
    expect(result).to_contain_text("would wait")
    shot(page, tour, "console-why-not.png", result)


def test_workflow_diff_and_test_run(tour: Tour, page: Page) -> None:
    _open(page, tour, f"/admin/workflows/workflow/{_workflow_pk(tour, TOUR)}/editor/")
    page.locator("#wf-diff-form").get_by_role("button", name="Compare selected versions").click()
    expect(page.locator(".ce-diff")).to_contain_text("between version 1 and version 2")
    shot(page, tour, "console-workflow-diff.png", page.locator(".ce-diff"))

    page.go_back()
    page.fill("#id_test_subscriber", "ada")
    page.fill("#id_test_payload", json.dumps(PAYLOADS[1]))
    page.click("#wf-test-trigger")
    timeline = page.locator("#wf-test-result .wf-test-timeline")
    expect(timeline.locator(".clarion-run h3")).to_contain_text("waiting", timeout=45_000)  # version 2 waits 5 min
    expect(timeline.locator("table.clarion-decisions")).to_contain_text("the in-app message was put")
    shot(page, tour, "console-workflow-test-run.png", page.locator("#wf-test"))


def test_api_keys(tour: Tour, page: Page) -> None:
    rows = tour.demo.sqlite("SELECT id FROM tenancy_environment WHERE slug = ?", tour.demo.demo["environment_slug"])
    _open(page, tour, f"/admin/tenancy/environment/{rows[0][0]}/change/")
    heading = page.get_by_role("heading", name="API keys")
    expect(heading).to_be_visible()
    expect(page.get_by_role("link", name="Create an API key")).to_be_visible()
    heading.evaluate("(h) => h.scrollIntoView({block: 'start'})")
    shot(page, tour, "console-settings-api-keys.png")


def test_savings_report(tour: Tour, page: Page) -> None:
    _open(page, tour, "/admin/analytics/savings/")
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    shot(page, tour, "console-savings.png")


def test_read_only_trace_row(tour: Tour, page: Page) -> None:
    """A sent email's page: the email in its sandboxed frame, its delivery attempt, nothing to edit."""
    rows = tour.demo.sqlite(
        "SELECT m.id FROM delivery_message m JOIN subscribers_subscriber s ON s.id = m.subscriber_id "
        "WHERE s.subscriber_id = 'grace' AND m.channel = 'email' AND m.status = 'sent' ORDER BY m.id LIMIT 1"
    )
    assert rows, "no sent email for grace"
    _open(page, tour, f"/admin/delivery/message/{rows[0][0]}/change/")
    expect(page.locator("iframe[sandbox]")).to_be_visible()
    expect(page.locator("#attempts_log-group")).to_contain_text("Success")
    expect(page.locator("[name=_save], [name=_continue]")).to_have_count(0)
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.locator("iframe[sandbox]").evaluate("(frame) => frame.scrollIntoView({block: 'center'})")
    shot(page, tour, "console-trace-readonly.png")
