"""The admin workflow editor in a real Chromium against a real Clarion (uvicorn + qcluster): build a
workflow with an in-app step, a delay, a branch holding an email step, watch the diagram follow,
hit a validation error at its field, publish with a note, see the version and the diagram, check
that the API serves exactly what was built; then publish a change, compare, and roll back.
``CLARION_E2E_SCREENSHOTS=docs/img`` (re)writes the screenshot for docs/console.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

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

WORKFLOW = "e2e-editor-flow"


@pytest.fixture(scope="module")
def clarion_demo(chromium_executable: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoSystem]:
    """As the shared fixture, on a port of its own (in CLARION_E2E_PORTS when set)."""
    var_dir = tmp_path_factory.mktemp("clarion-e2e-workflow-editor")
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


def add_step(page: Page, list_path: str, type_name: str) -> None:
    page.select_option(f'select[name="add_type:{list_path}"]', type_name)
    page.click(f'button[name="_op"][value="add:{list_path}"]')


def test_build_publish_see_the_diagram_and_roll_back(clarion_demo: DemoSystem, page: Page, tmp_path: Path) -> None:
    demo = clarion_demo
    created = demo.system.api("PUT", f"/api/v1/workflows/{WORKFLOW}", {"name": "Editor flow", "steps": []})
    assert created.status_code in (200, 201), created.text

    page.goto(demo.url("/admin/login/?next=/admin/workflows/workflow/"))
    page.fill("#id_username", demo.demo["admin_username"])
    page.fill("#id_password", demo.demo["admin_password"])
    page.get_by_role("button", name="Log in").click()
    page.click(f"text={WORKFLOW}")
    page.click("text=Open the workflow editor")
    expect(page.locator("#wf-diagram svg")).to_have_attribute("aria-label", f"Workflow {WORKFLOW}: 0 steps")

    # in-app, then a delay, then a branch whose first branch sends an email: added in the page
    add_step(page, "steps", "in_app")
    page.select_option('[name="steps[0].template"]', "comment-in-app")
    expect(page.locator('[data-preview-for="wf-steps-0--template"]')).not_to_be_empty()
    add_step(page, "steps", "delay")
    add_step(page, "steps", "branch")
    page.fill('[name="steps[2].branches[0].if"]', "payload.urgent")
    add_step(page, "steps[2].branches[0].steps", "email")
    page.select_option('[name="steps[2].branches[0].steps[0].template"]', "comment-email")
    page.fill('[name="steps[0].id"]', "inbox")

    diagram = page.locator("#wf-diagram svg")
    expect(diagram.locator('[data-step="steps[2].branches[0].steps[0]"]')).to_contain_text("email · email-1")
    expect(diagram.locator('[data-step="steps[0]"]')).to_contain_text("in_app · inbox")
    expect(diagram.locator('[data-step="steps[1]"][data-error="true"]')).to_have_count(1)  # the delay has no time yet

    # Publishing now is refused, with the error on the delay's field; nothing is lost.
    page.fill("#id_note", "First build")
    page.click("#wf-publish")
    expect(page.locator(".messagelist")).to_contain_text("Not published")
    expect(page.locator('[data-path="steps[1]"] .wf-error').first).to_contain_text("a delay needs exactly one of")
    expect(page.locator('[name="steps[0].id"]')).to_have_value("inbox")

    page.fill('[name="steps[1].for"]', "10m")
    expect(diagram.locator('[data-error="true"]')).to_have_count(0)
    page.fill("#id_note", "First build")
    page.click("#wf-publish")
    expect(page.locator(".messagelist")).to_contain_text(f"Published: {WORKFLOW} version 1")
    expect(page.locator(".wf-history tr.wf-published")).to_contain_text("First build")
    expect(page.locator("#wf-diagram svg")).to_have_attribute("aria-label", f"Workflow {WORKFLOW}: 3 steps")
    expect(page.locator('#wf-diagram [data-step="steps[2].branches[0].steps[0]"]')).to_be_visible()
    folder = Path(os.environ.get("CLARION_E2E_SCREENSHOTS") or tmp_path)  # docs/img for the docs
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / "workflow-editor.png"), full_page=False)

    published = demo.system.api("GET", f"/api/v1/workflows/{WORKFLOW}").json()["published_version"]
    assert published["steps"] == [
        {"id": "inbox", "type": "in_app", "template": "comment-in-app"},
        {"id": "delay-1", "type": "delay", "for": "10m"},
        {
            "id": "branch-1",
            "type": "branch",
            "branches": [
                {"if": "payload.urgent", "steps": [{"id": "email-1", "type": "email", "template": "comment-email"}]}
            ],
        },
    ]

    # A second version without the delay, then roll back to the first: a third version equal to it.
    page.click('button[name="_op"][value="remove:steps[1]"]')
    expect(page.locator('[data-path="steps[1]"] > .wf-card-head .wf-card-type')).to_have_text("branch")
    expect(diagram.locator('[data-step="steps[2]"]')).to_have_count(0)
    page.fill("#id_note", "No wait")
    page.click("#wf-publish")
    expect(page.locator(".messagelist")).to_contain_text(f"Published: {WORKFLOW} version 2")
    page.click('#wf-diff-form button[type="submit"]:has-text("Compare")')
    expect(page.locator(".ce-diff")).to_contain_text("1 field changed between version 1 and version 2")
    page.go_back()
    page.click('button[form="wf-rollback-1"]')
    expect(page.locator(".messagelist")).to_contain_text("version 3 (a copy of version 1) is now published")
    expect(page.locator(".wf-history tr.wf-published")).to_contain_text("Rollback to version 1")
    rolled_back = demo.system.api("GET", f"/api/v1/workflows/{WORKFLOW}").json()["published_version"]
    assert rolled_back["number"] == 3 and rolled_back["steps"] == published["steps"]
    assert not [line for line in demo.console if line.startswith("[pageerror]")]
