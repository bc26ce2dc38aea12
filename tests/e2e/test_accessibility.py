"""Accessibility of the operator console in a real Chromium: axe-core (vendored, ``vendor/axe.min.js``)
runs the WCAG 2 A and AA rules on each console page, built on a realistic trace (an event walked by
the engine with its run, an in-app and a failed email message, a failed delivery attempt and a bounce
callback; a subscriber with preferences and quiet hours; the workflow and its templates), in the
light and the dark theme (the admin follows the system's). A page passes with no violation of
impact ``critical`` or ``serious``; a failure lists each one (rule id, impact, the elements it
found and axe's help text).

axe is evaluated through the DevTools protocol (``page.evaluate``), which the pages' Content-Security-
Policy does not govern: nothing is added to the page's own scripts, and the app never serves the file.

Runs against pytest-django's ``live_server`` (``--liveserver 127.0.0.1:<port>`` to pin its port)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import time
from pathlib import Path
from typing import Any, Literal

import pytest
from django.urls import reverse

from apps.preferences.services import category_upsert, preferences_update, quiet_hours_set
from apps.templates.models import Template
from tests.admin_trace import Trace
from tests.admin_trace import trace_fixture as trace_fixture
from tests.e2e.conftest import under_ci
from tests.workflows.conftest import comment_workflow as comment_workflow

try:
    from playwright.sync_api import Page, expect
except ImportError:  # a dev dependency; without it `make test` must still collect this folder
    if under_ci():
        raise
    pytest.skip("the playwright package is not installed", allow_module_level=True)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
BLOCKING = {"critical", "serious"}
RUN_AXE = """
async () => {
  const result = await axe.run(document, {runOnly: {type: "tag", values: ["wcag2a", "wcag2aa"]}});
  return {
    version: axe.version,
    passes: result.passes.length,
    violations: result.violations.map((v) => ({
      id: v.id, impact: v.impact, help: v.help,
      targets: v.nodes.slice(0, 5).map((n) => `${n.target.join(" ")}  ${n.html.slice(0, 160)}`),
      count: v.nodes.length,
    })),
  };
}
"""
USERNAME, PASSWORD = "e2e-a11y", "e2e-a11y-password"


@pytest.fixture(scope="module")
def _orm_beside_playwright() -> Iterator[None]:
    """Playwright's sync API keeps an event loop in this thread, so Django refuses ORM calls here:
    this test's set-up and the database flush after it are plain synchronous code. Module scope:
    set before the database fixtures, undone after their teardown."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


@pytest.fixture
def console(_orm_beside_playwright: None, live_server: Any, django_user_model: Any, trace: Trace) -> dict[str, str]:
    """The live console with a staff account and the trace; maps each page's name to its path."""
    django_user_model.objects.create_superuser(USERNAME, "a11y@example.com", PASSWORD)
    subscriber = trace.run.subscriber
    environment = trace.event.environment
    category_upsert(environment=environment, key="comments", name="Comments", default_channels={"email": True})
    preferences_update(subscriber=subscriber, channels={"sms": False}, categories={"comments": {"email": False}})
    quiet_hours_set(subscriber=subscriber, start=time(22, 0), end=time(7, 0), timezone="Europe/Paris")
    templates = {t.channel: t.pk for t in Template.objects.filter(environment=environment)}
    return {
        "base": str(live_server.url),
        "home": reverse("admin:index"),
        "activity": reverse("admin:events_event_changelist"),
        "event": reverse("admin:events_event_change", args=[trace.event.pk]),
        "subscriber": reverse("admin:subscribers_subscriber_change", args=[subscriber.pk]),
        "workflow editor": reverse("admin:workflows_workflow_editor", args=[trace.event.workflow_id]),
        "template editor": reverse("admin:notification_templates_template_change", args=[templates["email"]]),
        "in-app template editor": reverse("admin:notification_templates_template_change", args=[templates["in_app"]]),
        "message": reverse("admin:delivery_message_change", args=[trace.email.pk]),
        "run": reverse("admin:workflows_run_change", args=[trace.run.pk]),
        "why not": reverse("admin:subscribers_subscriber_why_not", args=[subscriber.pk]),
        "savings report": reverse("analytics-savings"),
    }


def _log_in(page: Page, base: str) -> None:
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#site-name")).to_be_visible()


def _describe(violations: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"- {v['id']} ({v['impact']}, {v['count']} element(s)): {v['help']}\n    " + "\n    ".join(v["targets"])
        for v in violations
    )


@pytest.mark.parametrize(
    "name",
    [
        "home",
        "activity",
        "event",
        "message",
        "run",
        "why not",
        "subscriber",
        "workflow editor",
        "template editor",
        "in-app template editor",
        "savings report",
    ],
)
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_critical_or_serious_violation(
    console: dict[str, str], page: Page, name: str, scheme: Literal["light", "dark"]
) -> None:
    page.emulate_media(color_scheme=scheme)  # the admin follows the system's light or dark theme
    _log_in(page, console["base"])
    response = page.goto(console["base"] + console[name])
    assert response is not None and response.status == 200, f"{name}: {response and response.status}"
    page.wait_for_load_state("networkidle")
    if name == "why not":  # the page with a dry run's answer on it
        workflow = page.locator("#id_workflow option", has_text="comment-created").inner_text()
        page.select_option("#id_workflow", label=workflow)
        page.fill("#id_payload", '{"post_title": "Hello", "comment": "First!"}')
        page.click("input[type=submit][value='Dry run']")
        expect(page.locator("#why-not-result")).to_be_visible()
    if name.endswith("template editor"):  # the live preview dims itself while it renders: check the settled page
        expect(page.locator("#ce-preview")).to_have_attribute("data-state", "ok")

    page.evaluate(AXE.read_text(encoding="utf-8"))
    report = page.evaluate(RUN_AXE)

    assert report["version"] == "4.14.1"
    assert report["passes"] > 0  # axe really ran its rules on this page
    blocking = [v for v in report["violations"] if v["impact"] in BLOCKING]
    others = [v for v in report["violations"] if v["impact"] not in BLOCKING]
    print(f"{name} ({scheme}): {report['passes']} rules pass; minor/moderate left:\n{_describe(others) or '  none'}")
    assert not blocking, f"{name} ({console[name]}, {scheme}): axe finds\n{_describe(blocking)}"
