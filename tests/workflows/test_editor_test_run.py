"""The workflow editor's "Test this workflow": a real trigger of the published version for one
subscriber, recorded; the timeline fragment the panel refreshes; errors on the form; permissions,
CSRF, escaping and environment scoping."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from apps.events.models import Event
from apps.workflows.models import Run, Workflow
from apps.workflows.services import workflow_upsert
from apps.workflows.trial import payload_example
from tests.factories import EnvironmentFactory, SubscriberFactory
from tests.workflows.conftest import make_workflow

PAYLOAD = {"post_title": "Hello", "comment": "Nice post"}


def trigger_url(workflow: Workflow) -> str:
    return reverse("admin:workflows_workflow_test", args=[workflow.pk])


def timeline_url(workflow: Workflow, event: Event) -> str:
    return reverse("admin:workflows_workflow_test_timeline", args=[workflow.pk, event.pk])


def editor_url(workflow: Workflow) -> str:
    return reverse("admin:workflows_workflow_editor", args=[workflow.pk])


@pytest.fixture
def ada(tenant: Any) -> Any:
    return SubscriberFactory(environment=tenant.environment, subscriber_id="ada")


def trigger(
    client: Client, workflow: Workflow, subscriber_id: str = "ada", payload: Any = PAYLOAD, **extra: str
) -> Any:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return client.post(trigger_url(workflow), {"subscriber_id": subscriber_id, "payload": text, **extra})


def test_trigger_queues_a_real_event_records_it_and_lands_on_the_event_page(
    admin_client: Any, comment_workflow: Workflow, ada: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = trigger(admin_client, comment_workflow)

    event = Event.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:events_event_change", args=[event.pk])
    assert event.workflow == comment_workflow and event.environment == comment_workflow.environment
    assert event.workflow_version_id == comment_workflow.published_version_id
    assert event.payload == PAYLOAD and event.recipients == [{"subscriber_id": "ada"}]
    entry = LogEntry.objects.get(object_id=str(comment_workflow.pk))
    assert event.transaction_id in entry.get_change_message() and "ada" in entry.get_change_message()
    # the workers' path, after commit (eager in tests): the fan-out ran and the run made its decisions
    assert len(callbacks) >= 1
    run = Run.objects.get(event=event)
    assert run.subscriber == ada and run.status == Run.Status.WAITING


def test_the_fragment_shows_the_runs_decisions_and_stops_on_a_long_wait(
    admin_client: Any, comment_workflow: Workflow, ada: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        # the panel answers before the workers pick the event up (here: on commit, after the response)
        response = trigger(admin_client, comment_workflow, _fragment="1")

    assert response.status_code == 200
    panel = response.content.decode()
    event = Event.objects.get()
    assert 'id="wf-test"' in panel and event.transaction_id in panel
    assert reverse("admin:events_event_change", args=[event.pk]) in panel
    assert 'data-live="1"' in panel and "No runs (yet)." in panel
    assert timeline_url(comment_workflow, event) in panel

    # once processed: the decisions, from the event page's partial; waiting 10 minutes is not worth refreshing
    fragment = admin_client.get(timeline_url(comment_workflow, event))

    html = fragment.content.decode()
    assert fragment.status_code == 200
    assert "<td>inbox</td>" in html and "<td>delay</td>" in html and 'data-live="0"' in html
    assert "Cancel waiting runs" not in html and "<html" not in html


def test_an_event_not_yet_processed_is_live(admin_client: Any, comment_workflow: Workflow, ada: Any) -> None:
    version = comment_workflow.published_version
    assert version is not None
    event = Event.objects.create(  # accepted, its fan-out not run yet
        environment=comment_workflow.environment,
        transaction_id="t-pending",
        workflow=comment_workflow,
        workflow_version=version,
        payload=PAYLOAD,
        recipients=[{"subscriber_id": "ada"}],
    )

    html = admin_client.get(timeline_url(comment_workflow, event)).content.decode()

    assert 'data-live="1"' in html and "No runs (yet)." in html


def test_the_editor_prefills_the_payload_from_the_schema_example(admin_client: Any, tenant: Any, ada: Any) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "examples": [3]}}, "required": ["n"]}
    workflow, _ = workflow_upsert(
        environment=tenant.environment,
        key="counted",
        name="counted",
        steps=[{"id": "w", "type": "delay", "for": "1m"}],
        payload_schema=schema,
        publish=True,
    )

    page = admin_client.get(editor_url(workflow)).content.decode()

    assert 'id="wf-test-form"' in page and "&quot;n&quot;: 3" in page
    assert '<option value="ada">' in page
    assert payload_example({"examples": [{"a": 1}]}) == {"a": 1}
    assert payload_example({"type": "object"}) == {} == payload_example(None)


@pytest.mark.parametrize(
    ("subscriber_id", "payload", "message"),
    [
        ("nobody", PAYLOAD, "No subscriber &#x27;nobody&#x27;"),
        ("", PAYLOAD, "Choose a subscriber."),
        ("ada", "{not json", "The payload is not valid JSON"),
        ("ada", "[1, 2]", "The payload must be a JSON object"),
        ("ada", '{"x": "a\\u0000b"}', "NUL character"),
    ],
)
def test_bad_input_is_a_message_on_the_form(
    admin_client: Any, comment_workflow: Workflow, ada: Any, subscriber_id: str, payload: Any, message: str
) -> None:
    response = trigger(admin_client, comment_workflow, subscriber_id, payload)

    assert response.status_code == 200
    page = response.content.decode()
    assert message in page and 'id="wf-test-errors"' in page
    assert Event.objects.count() == 0 and not LogEntry.objects.exists()

    fragment = trigger(admin_client, comment_workflow, subscriber_id, payload, _fragment="1")
    assert fragment.status_code == 422 and message in fragment.content.decode()


def test_a_payload_failing_the_schema_names_the_field(admin_client: Any, tenant: Any, ada: Any) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    workflow, _ = workflow_upsert(
        environment=tenant.environment,
        key="counted",
        name="counted",
        steps=[{"id": "w", "type": "delay", "for": "1m"}],
        payload_schema=schema,
        publish=True,
    )

    page = trigger(admin_client, workflow, payload={"n": "three"}).content.decode()

    assert "does not match the schema" in page and "<code>payload.n</code>" in page
    assert Event.objects.count() == 0


def test_unpublished_and_inactive_workflows_are_refused(admin_client: Any, tenant: Any, ada: Any) -> None:
    workflow, _ = workflow_upsert(
        environment=tenant.environment, key="draft", name="draft", steps=[{"id": "w", "type": "delay", "for": "1m"}]
    )
    page = trigger(admin_client, workflow).content.decode()
    assert "no published version" in page and "Not published yet" in page

    published = make_workflow(tenant.environment, "off", [{"id": "w", "type": "delay", "for": "1m"}])
    published.active = False
    published.save(update_fields=["active"])
    page = trigger(admin_client, published).content.decode()
    assert "This workflow is inactive" in page
    assert Event.objects.count() == 0


def test_a_subscriber_of_another_environment_is_unknown_here(
    admin_client: Any, comment_workflow: Workflow, ada: Any
) -> None:
    SubscriberFactory(environment=EnvironmentFactory(), subscriber_id="bob")

    page = trigger(admin_client, comment_workflow, "bob").content.decode()

    assert "No subscriber &#x27;bob&#x27;" in page and Event.objects.count() == 0
    assert '<option value="bob">' not in page and '<option value="ada">' in page


def test_the_fragment_shows_only_events_of_this_workflow(
    admin_client: Any, comment_workflow: Workflow, ada: Any
) -> None:
    other = make_workflow(comment_workflow.environment, "other", [{"id": "w", "type": "delay", "for": "1m"}])
    trigger(admin_client, other)
    event = Event.objects.get()

    assert admin_client.get(timeline_url(comment_workflow, event)).status_code == 404
    assert admin_client.get(timeline_url(other, event)).status_code == 200
    assert admin_client.get(trigger_url(other)).status_code == 405
    assert admin_client.post(timeline_url(other, event)).status_code == 405


def _staff(*perms: tuple[str, str]) -> Client:
    user = User.objects.create_user("staffer", password="pw-staffer-1", is_staff=True)
    for app_label, codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label=app_label))
    client = Client()
    client.force_login(user)
    return client


def test_view_only_staff_may_watch_but_not_trigger(admin_client: Any, comment_workflow: Workflow, ada: Any) -> None:
    trigger(admin_client, comment_workflow)
    event = Event.objects.get()
    viewer = _staff(("workflows", "view_workflow"), ("events", "view_event"))

    assert trigger(viewer, comment_workflow).status_code == 403
    assert Event.objects.count() == 1
    page = viewer.get(editor_url(comment_workflow)).content.decode()
    assert 'id="wf-test-form"' not in page and "Testing needs the permission" in page
    assert viewer.get(timeline_url(comment_workflow, event)).status_code == 200


def test_watching_needs_the_event_view_permission(admin_client: Any, comment_workflow: Workflow, ada: Any) -> None:
    trigger(admin_client, comment_workflow)
    event = Event.objects.get()
    editor = _staff(("workflows", "view_workflow"), ("workflows", "change_workflow"))

    assert editor.get(timeline_url(comment_workflow, event)).status_code == 403
    assert trigger(editor, comment_workflow).status_code == 403
    assert Event.objects.count() == 1
    anonymous = Client()
    assert anonymous.get(timeline_url(comment_workflow, event)).status_code == 302  # to the login page
    assert trigger(anonymous, comment_workflow).status_code == 302
    assert Event.objects.count() == 1


def test_the_trigger_needs_the_csrf_token(comment_workflow: Workflow, ada: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.create_superuser("root", password="pw-root-1"))

    assert trigger(client, comment_workflow).status_code == 403
    assert Event.objects.count() == 0


def test_user_strings_are_escaped(admin_client: Any, comment_workflow: Workflow, ada: Any) -> None:
    hostile = '<script>alert("x")</script>'
    page = trigger(admin_client, comment_workflow, hostile, '{"x": "</textarea><script>alert(1)</script>').content
    html = page.decode()
    assert "<script>alert" not in html and "</textarea><script>" not in html

    SubscriberFactory(environment=comment_workflow.environment, subscriber_id=hostile)
    response = trigger(
        admin_client, comment_workflow, hostile, {"comment": hostile, "post_title": hostile}, _fragment="1"
    )
    html = response.content.decode()
    assert response.status_code == 200 and Event.objects.count() == 1
    assert "<script>alert" not in html and "&lt;script&gt;" in html


def test_the_refreshed_fragment_costs_a_fixed_number_of_queries(
    admin_client: Any,
    comment_workflow: Workflow,
    ada: Any,
    django_capture_on_commit_callbacks: Any,
    django_assert_max_num_queries: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        trigger(admin_client, comment_workflow)
    event = Event.objects.get()
    url = timeline_url(comment_workflow, event)
    admin_client.get(url)  # warm the session and content types

    # polled every 1.5 s: session, user, the workflow, the event, the timeline's six reads
    # (activity.event_timeline), the environment and its project (for its name)
    with django_assert_max_num_queries(12):
        response = admin_client.get(url)
    assert response.status_code == 200 and "<td>inbox</td>" in response.content.decode()
