"""Two of issue #17's proofs in a real Chromium.

* **A trace row that cannot be edited.** As an operator (a superuser), open each trace table's row
  in the admin — an event, a run, a step decision (on its run), a message, a delivery attempt and
  a provider callback (on their message), a preference change — and find no add button, no field
  to type in, no save or delete; then POST a forged change to the page with the session's CSRF
  token: 403, and the row in the database is what it was. Against pytest-django's ``live_server``
  with ``tests/admin_trace.py``'s trace (an event walked by the engine, the rows it does not write
  by itself added to it).
* **Finding a skipped message from the activity list and reading its reason.** In the demo
  installation (uvicorn + the worker), through the real API: a subscriber without an email
  address gets a workflow (in-app, then email) once, then turns in-app off for the category and
  gets it again. In the Activity list, search the subscriber, filter "skipped only": only the
  second event is left; its timeline says why each message was not sent, in words and as the
  machine code.

Selectors are Django's own names and ids, roles, labels, text, URLs and the ids and classes of
Clarion's own templates, so they hold whatever the admin's theme.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import pytest
from django.db.models import Model
from django.urls import reverse

from tests.admin_trace import Trace
from tests.admin_trace import trace_fixture as trace_fixture
from tests.e2e.conftest import DemoSystem, under_ci
from tests.workflows.conftest import comment_workflow as comment_workflow

try:
    from playwright.sync_api import Page, expect
except ImportError:  # a dev dependency; without it `make test` must still collect this folder
    if under_ci():
        raise
    pytest.skip("the playwright package is not installed", allow_module_level=True)

pytestmark = pytest.mark.e2e

USERNAME, PASSWORD = "e2e-operator", "e2e-operator-password"
# The admin's own submit names: Save, Save and continue editing, Save and add another, Save as new.
SAVE_BUTTONS = "[name=_save], [name=_continue], [name=_addanother], [name=_saveasnew]"
EDITABLE = "input:not([type=hidden]), textarea, select, [contenteditable=''], [contenteditable=true]"


# --- A trace row that cannot be edited ----------------------------------------------------------


@dataclass(frozen=True)
class TraceRow:
    """Where an operator finds a row of one trace table, and what a forged edit of it posts."""

    row: str  # the Trace attribute holding the row (None: the run's first step decision)
    page: str  # the Trace attribute whose change page shows it
    inline: str = ""  # the inline formset's prefix when the row is shown on its parent's page
    shows: str = ""  # text of the row on the page


TRACE_ROWS = {
    "event": TraceRow(row="event", page="event", shows="t-admin"),
    "run": TraceRow(row="run", page="run", shows="waiting"),
    "step run": TraceRow(row="step_run", page="run", inline="step_runs", shows="inbox"),
    "message": TraceRow(row="email", page="email", shows="u1@example.com"),
    "delivery attempt": TraceRow(row="attempt", page="email", inline="attempts_log", shows="HTTP 500"),
    "provider callback": TraceRow(row="callback", page="email", inline="events", shows="bounced"),
    "preference history": TraceRow(row="preference_change", page="preference_change", shows="server API"),
}


def _row(trace: Trace, name: str) -> Model:
    if name == "step_run":
        return trace.run.step_runs.order_by("id")[0]
    row: Model = getattr(trace, name)
    return row


def _stored(obj: Model) -> dict[str, Any]:
    return type(obj)._default_manager.filter(pk=obj.pk).values().get()


def _admin_url(model: type[Model], view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def _forged(row: Model, spec: TraceRow) -> dict[str, str]:
    """What an edit of ``row`` would post: each of its fields changed (on the row's own page), or
    the parent's inline formset with the row in it changed."""
    values = {name: value for name, value in _stored(row).items() if name != "id"}
    if not spec.inline:
        return {name: "forged" for name in values}
    prefix = spec.inline
    data = {f"{prefix}-TOTAL_FORMS": "2", f"{prefix}-INITIAL_FORMS": "1", f"{prefix}-0-id": str(row.pk)}
    for name in values:
        data[f"{prefix}-0-{name.removesuffix('_id')}"] = "forged"
        data[f"{prefix}-1-{name.removesuffix('_id')}"] = "forged"  # and a new row beside it
    return data


@pytest.fixture
def operator(orm_beside_playwright: None, live_server: Any, django_user_model: Any, trace: Trace) -> str:
    django_user_model.objects.create_superuser(USERNAME, "operator@example.com", PASSWORD)
    return str(live_server.url)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("table", list(TRACE_ROWS))
def test_a_trace_row_cannot_be_edited(operator: str, trace: Trace, page: Page, table: str) -> None:
    spec = TRACE_ROWS[table]
    row, shown = _row(trace, spec.row), getattr(trace, spec.page)
    model = type(shown)
    change_url = _admin_url(model, "change", shown.pk)
    before, rows_before = _stored(row), type(row)._default_manager.count()

    page.goto(f"{operator}/admin/login/?next={_admin_url(model, 'changelist')}")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: "/admin/login/" not in url)

    # The list: no add button, no bulk delete; the row is there, a link to its page.
    add_url = _admin_url(model, "add")
    expect(page.locator(f'a[href="{add_url}"]')).to_have_count(0)
    expect(page.locator("option[value=delete_selected]")).to_have_count(0)
    page.locator(f'a[href^="{change_url}"]').first.click()
    page.wait_for_url(re.compile(re.escape(change_url)))

    # The page: the row, and nothing to type in, save, add or delete.
    where = page.locator(f"#{spec.inline}-group") if spec.inline else page.locator(f"#{model._meta.model_name}_form")
    expect(where).to_be_visible()
    expect(where).to_contain_text(spec.shows)
    expect(page.locator(f"#{model._meta.model_name}_form").locator(EDITABLE)).to_have_count(0)
    expect(page.locator(SAVE_BUTTONS)).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile(r"^Save"))).to_have_count(0)
    expect(page.locator(f'a[href="{add_url}"]')).to_have_count(0)
    # (the admin's inline script writes an "Add another" row and hides it when no row may be added)
    expect(page.get_by_text(re.compile(r"^\s*Add another", re.IGNORECASE)).filter(visible=True)).to_have_count(0)
    expect(page.locator(f'a[href="{_admin_url(model, "delete", shown.pk)}"]')).to_have_count(0)
    expect(page.get_by_role("link", name="Delete", exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="Delete", exact=True)).to_have_count(0)

    # A forged edit posted with the operator's session and CSRF token: refused, nothing written.
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    forged: dict[str, str | float | bool] = {"csrfmiddlewaretoken": token, **_forged(row, spec)}
    response = page.request.post(operator + change_url, form=forged, headers={"Referer": operator + change_url})
    assert response.status == 403, (response.status, response.text()[:500])
    assert "CSRF" not in response.text()  # refused as a trace row, not for a bad token
    assert page.request.get(operator + add_url).status == 403
    assert _stored(row) == before
    assert type(row)._default_manager.count() == rows_before  # and none added beside it


# --- Finding a skipped message from the activity list ----------------------------------------------

SKIP_WORKFLOW = "e2e-skip-reasons"
SKIP_STEPS = [
    {"id": "inbox", "type": "in_app", "template": "comment-in-app"},
    {"id": "mail", "type": "email", "template": "comment-email"},
]
PAYLOAD = {"post_title": "Release notes", "comment": "Shipped.", "author": "Grace"}


def _wait_run(demo: DemoSystem, transaction_id: str, timeout: float = 45.0) -> dict[str, Any]:
    """The event as the API answers it, once its one run has completed (the worker walks it)."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = demo.system.api("GET", f"/api/v1/events/{transaction_id}")
        body = response.json() if response.status_code == 200 else {}
        if [run.get("status") for run in body.get("runs", [])] == ["completed"]:
            return body
        time.sleep(0.3)
    raise AssertionError(f"{transaction_id}: no completed run after {timeout:.0f} s: {body}\n{demo.logs()}")


def skipped_event(demo: DemoSystem) -> tuple[str, str, str]:
    """Through the real API: a subscriber without an email address gets ``SKIP_WORKFLOW`` once
    (in-app sent, email skipped), turns in-app off for "comments", and gets it again (both
    skipped). Returns (subscriber id, the first transaction id, the skipped one)."""
    created = demo.system.api(
        "PUT",
        f"/api/v1/workflows/{SKIP_WORKFLOW}",
        {"name": "Skip reasons", "category": "comments", "steps": SKIP_STEPS, "publish": True},
    )
    assert created.status_code in (200, 201), created.text
    subscriber = f"e2e-no-email-{uuid.uuid4().hex[:8]}"
    added = demo.system.api("PUT", f"/api/v1/subscribers/{subscriber}", {"first_name": "Noor", "locale": "en"})
    assert added.status_code in (200, 201), added.text

    def trigger() -> str:
        body = {"workflow": SKIP_WORKFLOW, "to": [subscriber], "payload": PAYLOAD}
        response = demo.system.api("POST", "/api/v1/events/trigger", body)
        assert response.status_code == 202, response.text
        return str(response.json()["transaction_id"])

    reached = trigger()
    _wait_run(demo, reached)
    opted_out = demo.system.api(
        "PATCH", f"/api/v1/subscribers/{subscriber}/preferences", {"categories": {"comments": {"in_app": False}}}
    )
    assert opted_out.status_code == 200, opted_out.text
    skipped = trigger()
    _wait_run(demo, skipped)
    return subscriber, reached, skipped


def test_find_a_skipped_message_from_the_activity_list_and_read_its_reason(
    clarion_demo: DemoSystem, page: Page
) -> None:
    demo = clarion_demo
    subscriber, reached, skipped = skipped_event(demo)

    demo.log_in(page, "/admin/events/event/")
    search = page.locator("input[name=q]")
    search.fill(subscriber)
    search.press("Enter")
    events = page.locator("#result_list")
    expect(events.get_by_role("link", name=skipped, exact=True)).to_be_visible()
    expect(events.get_by_role("link", name=reached, exact=True)).to_be_visible()

    # The outcome filter is the list's own link (wherever the theme puts its filters), keeping the search.
    choice = page.locator("a[href*='outcome=skipped']").first
    href = choice.get_attribute("href")
    assert href and f"q={subscriber}" in href, href
    expect(choice).to_contain_text("skipped only")
    page.goto(urljoin(page.url, href))
    expect(events.get_by_role("link", name=skipped, exact=True)).to_be_visible()
    expect(events.get_by_role("link", name=reached, exact=True)).to_have_count(0)  # a message reached them
    events.get_by_role("link", name=skipped, exact=True).click()

    run = page.locator("#timeline .clarion-run")
    expect(run).to_have_count(1)
    expect(run.locator("h3")).to_contain_text(subscriber)
    expect(run.locator("h3")).to_contain_text("completed")
    expect(run.locator(".clarion-message")).to_have_count(0)
    decisions = run.locator("table.clarion-decisions tbody tr")
    expect(decisions).to_have_count(2)
    in_app, email = decisions.nth(0), decisions.nth(1)
    for row, step, code, words in (
        (in_app, "inbox", "preference", "in_app is off for category comments"),
        (email, "mail", "no_address", "the subscriber has no email address"),
    ):
        expect(row.locator("td").nth(1)).to_have_text(step)
        expect(row.locator("td").nth(3)).to_have_text("skipped")
        expect(row.locator("td").nth(4)).to_have_text(code)  # the machine-readable code, as the API gives it
        expect(row.locator("td").nth(5)).to_have_text(words)  # the reason in plain words
    assert not [line for line in demo.console if line.startswith("[pageerror]")]
