"""The workflow editor's "Test this workflow" in a real Chromium against a real Clarion (uvicorn +
qcluster): a payload that is not an object is refused on the form; then a real trigger for the demo
subscriber, whose timeline fills in on the page (the worker walks the run) until the run completes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import DemoSystem, e2e_port, under_ci
from tests.system.conftest import _manage, _process_env, running_system

try:
    from playwright.sync_api import Page, expect
except ImportError:  # a dev dependency; without it `make test` must still collect this folder
    if under_ci():
        raise
    pytest.skip("the playwright package is not installed", allow_module_level=True)

pytestmark = pytest.mark.e2e

WORKFLOW = "e2e-test-run"
STEPS = [
    {"id": "inbox", "type": "in_app", "template": "comment-in-app"},
    {
        "id": "route",
        "type": "branch",
        "branches": [
            {"if": "payload.urgent", "steps": [{"id": "again", "type": "in_app", "template": "comment-in-app"}]}
        ],
    },
]


@pytest.fixture(scope="module")
def clarion_demo(chromium_executable: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoSystem]:
    """As the shared fixture, on a port of its own (in CLARION_E2E_PORTS when set)."""
    var_dir = tmp_path_factory.mktemp("clarion-e2e-workflow-test-run")
    port = e2e_port()  # CLARION_E2E_PORTS=low-high keeps it in a range on a shared machine
    env = _process_env(var_dir, port)
    _manage(env, "migrate", "--noinput")
    _manage(env, "migrate", "--database", "channels", "--noinput")
    _manage(env, "seed_demo")
    demo = json.loads((var_dir / "demo.json").read_text())
    with running_system(
        mode="embedded",
        env=env,
        var_dir=var_dir,
        port=port,
        environment={"slug": demo["environment_slug"]},
        keys=demo,
    ) as system:
        yield DemoSystem(system=system, demo=demo)


def test_trigger_from_the_editor_and_watch_the_run_complete(clarion_demo: DemoSystem, page: Page) -> None:
    demo = clarion_demo
    created = demo.system.api(
        "PUT", f"/api/v1/workflows/{WORKFLOW}", {"name": "Test run", "steps": STEPS, "publish": True}
    )
    assert created.status_code in (200, 201), created.text
    assert created.json()["published_version"] is not None

    page.goto(demo.url("/admin/login/?next=/admin/workflows/workflow/"))
    page.fill("#id_username", demo.demo["admin_username"])
    page.fill("#id_password", demo.demo["admin_password"])
    page.get_by_role("button", name="Log in").click()
    page.click(f"text={WORKFLOW}")
    page.click("text=Open the workflow editor")

    panel = page.locator("#wf-test")
    expect(panel.locator("#id_test_payload")).to_have_value("{}")
    page.fill("#id_test_subscriber", demo.subscriber_id)
    page.fill("#id_test_payload", "[1, 2]")
    page.click("#wf-test-trigger")
    expect(page.locator("#wf-test-errors")).to_contain_text("The payload must be a JSON object")
    expect(page.locator("#id_test_subscriber")).to_have_value(demo.subscriber_id)

    page.fill(
        "#id_test_payload",
        json.dumps({"post_title": "<b>Hi</b>", "comment": "<img src=x onerror=window.pwned=1>", "urgent": True}),
    )
    page.click("#wf-test-trigger")
    timeline = page.locator("#wf-test-result .wf-test-timeline")
    expect(timeline).to_have_count(1)
    # no reload: the panel fetches the timeline again while the worker walks the run
    expect(timeline.locator(".clarion-run h3")).to_contain_text("completed", timeout=45_000)
    expect(timeline).to_have_attribute("data-live", "0")
    decisions = timeline.locator("table.clarion-decisions")
    expect(decisions).to_contain_text("the in-app message was put in the subscriber's inbox")
    expect(decisions).to_contain_text("again")  # the urgent branch's step ran
    expect(timeline.locator(".clarion-message")).to_have_count(2)

    page.click("#wf-test-result .wf-test-event a")
    expect(page.locator("#timeline .clarion-run h3")).to_contain_text("completed")
    assert page.evaluate("window.pwned") is None  # the payload is shown, never run
    assert not [line for line in demo.console if line.startswith("[pageerror]")]
