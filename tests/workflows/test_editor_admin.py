"""The workflow editor in the admin: forms per step type, structural edits, validation at the
step and field, publish with a note, history, diff, rollback, permissions, escaping, queries."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.services import workflow_publish, workflow_upsert
from tests.workflows.conftest import published_template
from tests.workflows.editor_forms import card_html, form_pairs

EMAIL_STEP = {"id": "mail", "type": "email", "template": "comment-email", "if": "not steps.inbox.read"}
ONE_OF_EACH: list[list[dict[str, Any]]] = [
    [{"id": "inbox", "type": "in_app", "template": "comment-in-app", "name": "Tell them in the app"}, EMAIL_STEP],
    [{"id": "text", "type": "sms", "template": "t-sms"}, {"id": "p", "type": "push", "template": "t-push"}],
    [{"id": "c", "type": "chat", "template": "t-chat"}, {"id": "hook", "type": "webhook"}],
    [{"id": "w1", "type": "delay", "for": "10m"}, {"id": "w2", "type": "delay", "until": "payload.starts_at"}],
    [{"id": "w3", "type": "delay", "until_next": "daily 09:00", "timezone": "Europe/Paris"}],
    [{"id": "d", "type": "digest", "window": "1h", "key": "payload.post_id", "lookback": "5m", "max_events": 20}],
    [{"id": "d2", "type": "digest", "schedule": "daily 09:00"}],
    [{"id": "cap", "type": "throttle", "limit": 3, "window": "1d", "key": "payload.topic"}],
    [
        {
            "id": "reach",
            "type": "escalate",
            "stop_on": "clicked",
            "channels": [
                {"channel": "in_app", "template": "comment-in-app"},
                {"channel": "email", "template": "comment-email", "after": "1h"},
            ],
        }
    ],
    [{"id": "stop", "type": "exit", "reason": "done"}],
    [
        {
            "id": "route",
            "type": "branch",
            "branches": [
                {"if": "payload.vip", "name": "VIP", "steps": [{"id": "vip-mail", "type": "email", "template": "e"}]},
                {"if": "payload.spam", "end": True, "steps": []},
            ],
            "else": [{"id": "later", "type": "delay", "for": "1h"}, {"id": "m", "type": "in_app", "template": "i"}],
        }
    ],
]


def editor_url(workflow: Workflow) -> str:
    return reverse("admin:workflows_workflow_editor", args=[workflow.pk])


def draft(tenant: Any, steps: list[dict[str, Any]], key: str = "flow") -> Workflow:
    workflow, _ = workflow_upsert(environment=tenant.environment, key=key, name=key, steps=steps)
    return workflow


def submit(client: Client, workflow: Workflow, page: str, **extra: str) -> Any:
    return client.post(editor_url(workflow), {**form_pairs(page), **extra})


@pytest.fixture
def templates(tenant: Any) -> None:
    published_template(tenant.environment, "comment-in-app", "in_app", title_en="New comment on {{ payload.post }}")
    published_template(tenant.environment, "comment-email", "email", subject_en="Re: {{ payload.post }}")


@pytest.mark.parametrize("steps", ONE_OF_EACH, ids=lambda steps: "+".join(step["type"] for step in steps))
def test_each_step_type_form_round_trips_to_what_the_api_stores(admin_client: Any, tenant: Any, steps: Any) -> None:
    response = tenant.client.put("/api/v1/workflows/flow", {"name": "Flow", "steps": steps}, format="json")
    assert response.status_code in (200, 201), response.content
    workflow = Workflow.objects.get(environment=tenant.environment, key="flow")
    stored = workflow.draft_steps

    page = admin_client.get(editor_url(workflow)).content.decode()
    response = submit(admin_client, workflow, page, _action="save")

    assert response.status_code == 302, response.content.decode()[:2000]
    workflow.refresh_from_db()
    assert workflow.draft_steps == stored == steps


def test_the_page_has_a_form_per_step_type_with_help_and_the_diagram(
    admin_client: Any, tenant: Any, templates: Any
) -> None:
    workflow = draft(tenant, [{"id": "inbox", "type": "in_app", "template": "comment-in-app"}, *ONE_OF_EACH[3]])
    page = admin_client.get(editor_url(workflow)).content.decode()

    assert 'name="steps[0].template"' in page and 'name="steps[1].for"' in page and 'name="steps[2].until"' in page
    assert "A duration: 30s, 10m, 1h, 2d" in page  # field help
    assert 'data-preview="New comment on {{ payload.post }} — {{ payload.message }}"' in page  # the preview...
    assert ">comment-email · email<" not in page  # ...and only templates of the step's channel
    assert "<svg" in page and 'data-step="steps[1]"' in page
    assert "clarion/admin/workflow-editor.js" in page and "cdn" not in page.lower()


def test_add_move_and_remove_steps_without_javascript(admin_client: Any, tenant: Any) -> None:
    workflow = draft(tenant, [{"id": "a", "type": "delay", "for": "1m"}, {"id": "b", "type": "delay", "for": "2m"}])
    page = admin_client.get(editor_url(workflow)).content.decode()

    page = submit(admin_client, workflow, page, **{"_op": "add:steps", "add_type:steps": "branch"}).content.decode()
    page = submit(
        admin_client,
        workflow,
        page,
        **{"_op": "add:steps[2].branches[0].steps", "add_type:steps[2].branches[0].steps": "sms"},
    ).content.decode()
    page = submit(admin_client, workflow, page, _op="up:steps[1]").content.decode()
    page = submit(admin_client, workflow, page, _op="remove:steps[1]").content.decode()
    pairs = form_pairs(page)

    assert [pairs[f"steps[{index}].id"] for index in range(2)] == ["b", "branch-1"]
    assert pairs["steps[1].branches[0].steps[0].id"] == "sms-1"
    assert "steps[2].id" not in pairs
    workflow.refresh_from_db()
    assert [step["id"] for step in workflow.draft_steps] == ["a", "b"]  # nothing saved by the edits


def test_structural_edit_fragment_for_javascript(admin_client: Any, tenant: Any) -> None:
    workflow = draft(tenant, [{"id": "a", "type": "delay", "for": "1m"}])
    pairs = form_pairs(admin_client.get(editor_url(workflow)).content.decode())

    response = admin_client.post(
        editor_url(workflow), {**pairs, "_op": "add:steps", "add_type:steps": "escalate", "_fragment": "1"}
    )
    html = response.content.decode()

    assert response.status_code == 200 and "<html" not in html
    assert 'name="steps[1].channels[0].channel"' in html and 'value="a"' in html


def test_publish_with_a_note_creates_a_version(admin_client: Any, tenant: Any, templates: Any) -> None:
    workflow = draft(tenant, [])
    page = admin_client.get(editor_url(workflow)).content.decode()
    page = submit(admin_client, workflow, page, **{"_op": "add:steps", "add_type:steps": "in_app"}).content.decode()
    pairs = {**form_pairs(page), "steps[0].template": "comment-in-app", "note": "First version", "_action": "publish"}

    response = admin_client.post(editor_url(workflow), pairs)

    assert response.status_code == 302
    version = WorkflowVersion.objects.get(workflow=workflow)
    assert (version.number, version.note, version.created_by.username) == (1, "First version", "admin")
    assert version.steps == [{"id": "in_app-1", "type": "in_app", "template": "comment-in-app"}]
    workflow.refresh_from_db()
    assert workflow.published_version == version
    assert LogEntry.objects.get(object_id=str(workflow.pk)).get_change_message() == "Published version 1. First version"
    page = admin_client.get(editor_url(workflow)).content.decode()
    assert "First version" in page and "<strong>published</strong>" in page


def test_save_draft_does_not_publish(admin_client: Any, tenant: Any) -> None:
    workflow = draft(tenant, [{"id": "a", "type": "delay", "for": "1m"}])
    pairs = {**form_pairs(admin_client.get(editor_url(workflow)).content.decode()), "steps[0].for": "5m"}

    admin_client.post(editor_url(workflow), {**pairs, "_action": "save"})

    workflow.refresh_from_db()
    assert workflow.draft_steps == [{"id": "a", "type": "delay", "for": "5m"}]
    assert not workflow.versions.exists()


def test_an_error_in_a_nested_step_lands_on_that_step_and_field(admin_client: Any, tenant: Any) -> None:
    steps = ONE_OF_EACH[-1]
    workflow = draft(tenant, steps)
    pairs = form_pairs(admin_client.get(editor_url(workflow)).content.decode())
    pairs.update({"steps[0].branches[0].steps[0].template": "", "steps[0].else[0].for": "ten", "_action": "save"})

    response = admin_client.post(editor_url(workflow), pairs)
    page = response.content.decode()

    assert response.status_code == 200
    nested = card_html(page, "steps[0].branches[0].steps[0]")
    assert 'data-error-for="steps[0].branches[0].steps[0].template"' in nested
    assert "required: the key of a template" in nested
    assert "wf-card-error" in page[: page.index('data-path="steps[0].branches[0].steps[0]"')][-400:]
    other = card_html(page, "steps[0].else[0]")
    assert 'data-error-for="steps[0].else[0].for"' in other
    outer = page[page.index('data-path="steps[0]"') : page.index('data-path="steps[0].branches[0].steps[0]"')]
    assert "data-error-for" not in outer  # the branch itself is fine
    assert 'data-error="true"' in page and 'data-step="steps[0].else[0]"' in page  # marked in the diagram too
    assert 'value="ten"' in page  # the edit is kept
    workflow.refresh_from_db()
    assert workflow.draft_steps == steps


def test_a_step_level_error_and_a_duplicate_id(admin_client: Any, tenant: Any) -> None:
    workflow = draft(tenant, [{"id": "a", "type": "delay", "for": "1m"}, {"id": "b", "type": "delay", "for": "2m"}])
    pairs = form_pairs(admin_client.get(editor_url(workflow)).content.decode())
    pairs.update({"steps[1].id": "a", "steps[0].until": "payload.at", "_action": "publish"})

    page = admin_client.post(editor_url(workflow), pairs).content.decode()

    assert "a delay needs exactly one of" in card_html(page, "steps[0]")
    assert "duplicate step id" in card_html(page, "steps[1]")
    assert 'data-error-for="steps[1].id"' in page
    assert not workflow.versions.exists()


def test_a_missing_template_at_publish_lands_on_its_template_field(
    admin_client: Any, tenant: Any, templates: Any
) -> None:
    steps = [
        {"id": "inbox", "type": "in_app", "template": "comment-in-app"},
        {"id": "m", "type": "email", "template": "gone"},
    ]
    workflow = draft(tenant, steps)
    pairs = {**form_pairs(admin_client.get(editor_url(workflow)).content.decode()), "_action": "publish"}

    page = admin_client.post(editor_url(workflow), pairs).content.decode()

    assert "no template &#x27;gone&#x27; in this environment" in card_html(page, "steps[1]")
    assert 'data-error-for="steps[1].template"' in page
    assert "gone (not in this environment)" in page
    assert not workflow.versions.exists()


def publish_versions(tenant: Any, templates: Any) -> Workflow:
    workflow = draft(tenant, [{"id": "inbox", "type": "in_app", "template": "comment-in-app"}])
    workflow_publish(workflow=workflow, note="one")
    workflow_upsert(
        environment=tenant.environment,
        key=workflow.key,
        steps=[{"id": "inbox", "type": "in_app", "template": "comment-in-app"}, EMAIL_STEP],
    )
    workflow.refresh_from_db()
    workflow_publish(workflow=workflow, note="two")
    return workflow


def test_diff_between_versions(admin_client: Any, tenant: Any, templates: Any) -> None:
    workflow = publish_versions(tenant, templates)

    response = admin_client.get(reverse("admin:workflows_workflow_diff", args=[workflow.pk]), {"a": "2", "b": "1"})
    page = response.content.decode()

    assert response.status_code == 200
    assert "1 field changed between version 1 and version 2" in page
    assert "comment-email" in page and 'class="diff"' in page
    missing = admin_client.get(reverse("admin:workflows_workflow_diff", args=[workflow.pk]), {"a": "1", "b": "9"})
    assert missing.status_code == 302


def test_rollback_publishes_a_new_version_equal_to_the_old_one(admin_client: Any, tenant: Any, templates: Any) -> None:
    workflow = publish_versions(tenant, templates)
    old = workflow.versions.get(number=1)

    response = admin_client.post(reverse("admin:workflows_workflow_rollback", args=[workflow.pk, 1]))

    assert response.status_code == 302
    workflow.refresh_from_db()
    new = workflow.published_version
    assert new is not None and new.number == 3 and new.note == "Rollback to version 1"
    assert (new.steps, new.category_key, new.payload_schema) == (old.steps, old.category_key, old.payload_schema)
    assert workflow.draft_steps == old.steps
    assert admin_client.get(reverse("admin:workflows_workflow_rollback", args=[workflow.pk, 1])).status_code == 405
    admin_client.post(reverse("admin:workflows_workflow_rollback", args=[workflow.pk, 9]))
    assert workflow.versions.count() == 3


def test_staff_without_change_permission_can_look_but_not_publish(tenant: Any, templates: Any) -> None:
    workflow = publish_versions(tenant, templates)
    viewer = User.objects.create_user("viewer", password="pw-viewer-1", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_workflow", content_type__app_label="workflows"))
    client = Client()
    client.force_login(viewer)

    page = client.get(editor_url(workflow)).content.decode()
    assert "<svg" in page and 'value="publish"' not in page and "Roll back" not in page
    pairs = form_pairs(page)
    assert client.post(editor_url(workflow), {**pairs, "_action": "publish", "note": "x"}).status_code == 403
    assert client.post(reverse("admin:workflows_workflow_rollback", args=[workflow.pk, 1])).status_code == 403
    assert workflow.versions.count() == 2

    outsider = User.objects.create_user("outsider", password="pw-outsider-1", is_staff=True)
    client.force_login(outsider)
    assert client.get(editor_url(workflow)).status_code in (403, 404)
    anonymous = Client()
    assert anonymous.get(editor_url(workflow)).status_code == 302  # to the login page


def test_posts_need_the_csrf_token(tenant: Any) -> None:
    workflow = draft(tenant, [{"id": "a", "type": "delay", "for": "1m"}])
    admin = User.objects.create_superuser("root", password="pw-root-1")
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)

    response = client.post(editor_url(workflow), {"steps[0].id": "a", "steps[0].type": "exit", "_action": "save"})

    assert response.status_code == 403
    workflow.refresh_from_db()
    assert workflow.draft_steps[0]["type"] == "delay"


def test_user_strings_are_escaped_in_the_page_and_the_diagram(admin_client: Any, tenant: Any) -> None:
    hostile = '<script>alert("x")</script>'
    workflow = draft(tenant, [{"id": "a", "type": "delay", "for": "1m", "name": hostile, "if": 'payload.x == "<b>"'}])
    pairs = form_pairs(admin_client.get(editor_url(workflow)).content.decode())
    pairs.update({"steps[0].id": hostile, "steps[0].for": '"><script>alert(2)</script>', "_action": "save"})

    page = admin_client.post(editor_url(workflow), pairs).content.decode()

    assert "<script>alert" not in page and '"><script' not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert form_pairs(page)["steps[0].name"] == hostile  # and it round-trips unchanged
    svg = admin_client.post(reverse("admin:workflows_workflow_diagram", args=[workflow.pk]), pairs)
    assert svg["Content-Type"].startswith("image/svg+xml")
    assert "<script" not in svg.content.decode() and "&lt;script&gt;" in svg.content.decode()


def test_diagram_endpoint_draws_the_posted_steps(admin_client: Any, tenant: Any) -> None:
    workflow = draft(tenant, [{"id": "a", "type": "delay", "for": "1m"}])
    url = reverse("admin:workflows_workflow_diagram", args=[workflow.pk])

    response = admin_client.post(
        url,
        {
            "steps[0].id": "x",
            "steps[0].type": "sms",
            "steps[1].id": "y",
            "steps[1].type": "delay",
            "steps[1].for": "nope",
        },
    )

    svg = response.content.decode()
    assert response.status_code == 200 and svg.startswith("<svg")
    assert "sms · x" in svg and 'data-step="steps[1]" data-error="true"' in svg
    assert admin_client.get(url).status_code == 405


def test_templates_offered_are_the_workflows_environment_only(
    admin_client: Any, tenant: Any, other_tenant: Any
) -> None:
    published_template(tenant.environment, "ours", "email", subject_en="Ours")
    published_template(other_tenant.environment, "theirs", "email", subject_en="Theirs")
    workflow = draft(tenant, [{"id": "m", "type": "email", "template": "ours"}])

    page = admin_client.get(editor_url(workflow)).content.decode()

    assert 'value="ours"' in page and "theirs" not in page


def test_editor_page_queries_do_not_grow_with_steps(
    admin_client: Any, tenant: Any, templates: Any, django_assert_max_num_queries: Any
) -> None:
    small = draft(tenant, [{"id": "a", "type": "in_app", "template": "comment-in-app"}], key="small")
    workflow_publish(workflow=small)
    many = [{"id": f"s{index}", "type": "email", "template": "comment-email"} for index in range(20)]
    many.append(
        {
            "id": "route",
            "type": "branch",
            "branches": [
                {"if": "payload.vip", "steps": [{"id": "vip", "type": "in_app", "template": "comment-in-app"}]}
            ],
            "else": [
                {"id": "later", "type": "delay", "for": "1h"},
                {"id": "nudge", "type": "email", "template": "comment-email"},
            ],
        }
    )
    large = draft(tenant, many, key="large")
    for _ in range(3):
        workflow_publish(workflow=large)
    admin_client.get(editor_url(small))  # warm the session and content types

    with django_assert_max_num_queries(50) as baseline:
        admin_client.get(editor_url(small))
    with django_assert_max_num_queries(len(baseline.captured_queries)) as counted:
        response = admin_client.get(editor_url(large))
    # session, user, the workflow, its environment (and project, for its name), its templates, its
    # versions, the subscribers the "Test this workflow" form suggests
    assert len(counted.captured_queries) == len(baseline.captured_queries) <= 8
    assert response.status_code == 200
    assert len(re.findall(r'class="wf-card ', response.content.decode())) == 24


def test_a_new_step_type_gets_a_form_from_the_registry(admin_client: Any, tenant: Any, monkeypatch: Any) -> None:
    from apps.workflows.steps import base

    class Pause(base.StepType):
        types = ("pause",)
        fields = frozenset({"minutes", "label"})

    pause = Pause()
    monkeypatch.setitem(base._REGISTRY, "pause", pause)
    monkeypatch.setattr(base, "_ORDER", [*base._ORDER, pause])
    steps = [{"id": "hold", "type": "pause", "minutes": 5, "label": "a moment"}]
    workflow = draft(tenant, steps)

    page = admin_client.get(editor_url(workflow)).content.decode()
    assert 'name="steps[0].minutes"' in page and 'name="steps[0].label"' in page
    assert '<option value="pause">pause</option>' in page  # offered in "add a step"
    assert submit(admin_client, workflow, page, _action="save").status_code == 302
    workflow.refresh_from_db()
    assert workflow.draft_steps == steps


def test_an_old_version_loads_into_the_form(admin_client: Any, tenant: Any, templates: Any) -> None:
    workflow = publish_versions(tenant, templates)

    page = admin_client.get(editor_url(workflow), {"from_version": "1"}).content.decode()

    assert "editing a copy of version 1" in page
    pairs = form_pairs(page)
    assert pairs["steps[0].id"] == "inbox" and "steps[1].id" not in pairs
    workflow.refresh_from_db()
    assert len(workflow.draft_steps) == 2  # loading saves nothing


def test_crafted_input_names_are_refused_quietly(admin_client: Any, tenant: Any) -> None:
    workflow = draft(tenant, [{"id": "a", "type": "delay", "for": "1m"}])
    deep = "steps[0]" + ".branches[0].steps[0]" * 400 + ".id"
    data = {
        "steps[0].id": "a",
        "steps[0].type": "delay",
        "steps[0].for": "2m",
        deep: "x",
        "steps[99999].id": "far",
        "steps[0]..for": "1s",
        "steps[0].for.x": "nested",
        "_action": "save",
    }

    body, form = urlencode(data), "application/x-www-form-urlencoded"

    response = admin_client.post(editor_url(workflow), body, content_type=form)

    assert response.status_code == 302
    workflow.refresh_from_db()
    assert workflow.draft_steps == [{"id": "a", "type": "delay", "for": "2m"}]
    svg = admin_client.post(reverse("admin:workflows_workflow_diagram", args=[workflow.pk]), body, content_type=form)
    assert svg.status_code == 200


def test_rollback_to_a_version_whose_template_is_gone_is_refused(admin_client: Any, tenant: Any) -> None:
    published_template(tenant.environment, "comment-in-app", "in_app")
    old_mail = published_template(tenant.environment, "old-mail", "email")
    workflow = draft(tenant, [{"id": "m", "type": "email", "template": "old-mail"}])
    workflow_publish(workflow=workflow)
    workflow_upsert(
        environment=tenant.environment,
        key=workflow.key,
        steps=[{"id": "i", "type": "in_app", "template": "comment-in-app"}],
    )
    workflow.refresh_from_db()
    workflow_publish(workflow=workflow)
    old_mail.delete()  # no longer used by the published version

    response = admin_client.post(reverse("admin:workflows_workflow_rollback", args=[workflow.pk, 1]), follow=True)

    assert "Could not roll back: Some steps use templates that do not fit." in response.content.decode()
    workflow.refresh_from_db()
    assert workflow.versions.count() == 2 and workflow.published_version.number == 2
    assert workflow.draft_steps[0]["id"] == "i"  # the draft is untouched too
