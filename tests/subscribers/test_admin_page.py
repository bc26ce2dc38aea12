"""The console's subscriber page (recent runs and messages, effective preferences, suppressions,
devices, quiet hours, the inbox) and its "Why not?" dry run: content, query counts, permissions,
escaping, form validation."""

from __future__ import annotations

from datetime import time
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from apps.core.channels import CHANNELS
from apps.delivery.models import Message, Suppression
from apps.events.models import Event
from apps.inbox.models import InboxMessage
from apps.preferences.models import SUBSCRIBER_CHANNELS, Preference, QuietHours
from apps.preferences.selectors import resolve_preferences, subscriber_preference_table
from apps.subscribers.models import Device, Subscriber
from apps.workflows.models import Run, StepRun, Workflow
from tests.core.test_csp import assert_safe_page
from tests.factories import CategoryFactory, SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db

PAYLOAD = '{"post_title": "Hello", "comment": "First!"}'


def page_url(subscriber: Subscriber) -> str:
    return reverse("admin:subscribers_subscriber_change", args=[subscriber.pk])


def why_not_url(subscriber: Subscriber) -> str:
    return reverse("admin:subscribers_subscriber_why_not", args=[subscriber.pk])


def history(subscriber: Subscriber, workflow: Workflow, count: int, start: int = 0) -> None:
    """``count`` runs, each with an email message and an in-app message, written directly."""
    version = workflow.published_version
    assert version is not None
    for index in range(start, start + count):
        event = Event.objects.create(
            environment_id=subscriber.environment_id,
            transaction_id=f"tx-{subscriber.pk}-{index}",
            workflow=workflow,
            workflow_version=version,
            payload={},
        )
        run = Run.objects.create(
            environment_id=subscriber.environment_id,
            event=event,
            workflow_version=version,
            subscriber=subscriber,
            status=Run.Status.COMPLETED,
        )
        Message.objects.create(
            environment_id=subscriber.environment_id,
            run=run,
            step_id="mail",
            channel="email",
            subscriber=subscriber,
            recipient=subscriber.email,
            subject=f"Subject {index}",
        )
        InboxMessage.objects.create(
            environment_id=subscriber.environment_id, subscriber=subscriber, title=f"Inbox title {index}"
        )


@pytest.fixture
def person(tenant: Any) -> Subscriber:
    env = tenant.environment
    subscriber = SubscriberFactory(
        environment=env, subscriber_id="ada", email="Ada@Example.com", phone="+15550001111", timezone="Europe/Paris"
    )
    billing = CategoryFactory(environment=env, key="billing", name="Billing")
    CategoryFactory(environment=env, key="security", name="Security", critical=True)
    Preference.objects.create(environment=env, subscriber=subscriber, category=billing, channel="email", enabled=False)
    Preference.objects.create(environment=env, subscriber=subscriber, category=None, channel="sms", enabled=False)
    Suppression.objects.create(environment=env, channel="email", address="ada@example.com", reason="bounced")
    Suppression.objects.create(environment=env, channel="email", address="someone@else.com", reason="complained")
    Device.objects.create(environment=env, subscriber=subscriber, provider="fcm", token="tok", name="Pixel 8")
    QuietHours.objects.create(environment=env, subscriber=subscriber, start=time(22, 0), end=time(7, 0))
    return subscriber


def test_the_page_shows_every_section(admin_client: Any, person: Subscriber, comment_workflow: Workflow) -> None:
    history(person, comment_workflow, 25)
    response = admin_client.get(page_url(person))
    assert_safe_page(response)
    html = response.content.decode()
    run = Run.objects.filter(subscriber=person).order_by("-id").first()
    message = Message.objects.filter(subscriber=person).order_by("-id").first()
    assert run is not None and message is not None
    assert f'href="{reverse("admin:workflows_run_change", args=[run.pk])}"' in html
    assert f'href="{reverse("admin:delivery_message_change", args=[message.pk])}"' in html
    assert "Recent runs (last 20, newest first)" in html and "Recent messages (last 20, newest first)" in html
    assert html.count(">run ") == 40  # 20 run rows, and the run of each of the 20 messages
    assert "Subject 24" in html and "Subject 4<" not in html
    # preferences: category × channel, each with the rule that decides it
    assert "the subscriber&#x27;s own choice for this category" in html  # billing email off
    assert "critical category: always sent, whatever the subscriber chose" in html
    assert "the subscriber turned sms off for every category" in html
    assert "<strong>no address</strong>" in html  # email is suppressed: not reachable
    # suppressions: this subscriber's address only
    assert "ada@example.com" in html and "someone@else.com" not in html
    assert "Pixel 8" in html
    assert "22:00–07:00" in html and "Europe/Paris" in html
    # the inbox: the widget's first page of 20
    assert "Inbox title 24" in html and "Inbox title 4<" not in html
    assert "25 in the inbox" in html and "25 unread" in html
    assert f'href="{why_not_url(person)}"' in html


def test_each_section_is_a_fixed_number_of_queries(
    admin_client: Any, person: Subscriber, comment_workflow: Workflow
) -> None:
    history(person, comment_workflow, 3)
    admin_client.get(page_url(person))  # warm the session and the content types
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(page_url(person)).status_code == 200
    history(person, comment_workflow, 27, start=3)
    CategoryFactory(environment=person.environment, key="extra")
    with CaptureQueriesContext(connection) as many:
        assert admin_client.get(page_url(person)).status_code == 200
    assert len(few) == len(many)
    assert len(many) <= 17, [q["sql"] for q in many]


def test_the_preference_table_is_resolve_preferences(person: Subscriber) -> None:
    """Every cell agrees with the engine's resolve_preferences for that category."""
    rows = subscriber_preference_table(subscriber=person, channels=SUBSCRIBER_CHANNELS)
    assert [row.category.key if row.category else None for row in rows] == [None, "billing", "security"]
    for row in rows:
        engine = resolve_preferences(
            environment=person.environment_id,
            subscriber_ids=[person.pk],
            category=row.category,
            channels=SUBSCRIBER_CHANNELS,
        )[person.pk]
        assert row.resolutions == engine
    billing = rows[1].resolutions
    assert (billing["email"].allowed, billing["email"].reason) == (False, "subscriber_category")
    assert (billing["sms"].allowed, billing["sms"].reason) == (False, "subscriber_channel")
    assert (rows[2].resolutions["sms"].allowed, rows[2].resolutions["sms"].reason) == (True, "critical")


def test_values_are_escaped(admin_client: Any, tenant: Any, comment_workflow: Workflow) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment, first_name="<script>alert(1)</script>")
    InboxMessage.objects.create(
        environment=tenant.environment, subscriber=subscriber, title='<img src=x onerror="alert(2)">'
    )
    response = admin_client.get(page_url(subscriber))
    assert_safe_page(response)
    html = response.content.decode()
    assert "<script>alert(1)" not in html and "<img src=x" not in html
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in html

    Workflow.objects.filter(pk=comment_workflow.pk).update(name="<b>bold</b>")
    response = admin_client.post(
        why_not_url(subscriber),
        {"workflow": comment_workflow.pk, "payload": '{"post_title": "<script>alert(3)</script>", "comment": "x"}'},
    )
    assert_safe_page(response)
    html = response.content.decode()
    assert "<script>alert(3)" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in html  # the payload, back in its textarea
    assert "comment-created — &lt;b&gt;bold&lt;/b&gt; (v1)" in html
    assert response.context["result"] is not None


def test_why_not_shows_each_step_and_writes_nothing(admin_client: Any, tenant: Any, comment_workflow: Workflow) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment, email="")
    page = admin_client.get(why_not_url(subscriber))
    assert_safe_page(page)
    assert "comment-created — comment-created (v1)" in page.content.decode()
    before = [model.objects.count() for model in (Event, Run, StepRun, Message, InboxMessage)]

    response = admin_client.post(why_not_url(subscriber), {"workflow": comment_workflow.pk, "payload": PAYLOAD})
    assert_safe_page(response)
    html = response.content.decode()
    rows = html.split('id="why-not-result"')[1]
    assert rows.index("an in-app message would be put in the inbox") < rows.index("waits until")
    assert "after the wait, at" in rows
    assert "the subscriber has no email address" in rows and "<code>no_address</code>" in rows
    assert "The run would complete." in rows
    assert [model.objects.count() for model in (Event, Run, StepRun, Message, InboxMessage)] == before


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ("{not json", "Not valid JSON: Expecting property name enclosed in double quotes (line 1, column 2)."),
        ("[1, 2]", "The payload must be a JSON object"),
        ('"text"', "The payload must be a JSON object"),
        ("[" * 100_000 + "]" * 100_000, "Not valid JSON"),
    ],
)
def test_why_not_refuses_bad_json_with_a_form_error(
    admin_client: Any, tenant: Any, comment_workflow: Workflow, payload: str, error: str
) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment)
    response = admin_client.post(why_not_url(subscriber), {"workflow": comment_workflow.pk, "payload": payload})
    assert response.status_code == 200
    assert error in response.content.decode()
    assert response.context["result"] is None


def test_why_not_bounds_the_payload(admin_client: Any, tenant: Any, comment_workflow: Workflow, settings: Any) -> None:
    settings.CLARION = {**settings.CLARION, "MAX_PAYLOAD_BYTES": 100}
    subscriber = SubscriberFactory(environment=tenant.environment)
    payload = '{"comment": "' + "x" * 200 + '"}'
    response = admin_client.post(why_not_url(subscriber), {"workflow": comment_workflow.pk, "payload": payload})
    assert "The payload is larger than 100 bytes." in response.content.decode()
    assert response.context["result"] is None


def test_why_not_reports_a_refused_trigger(admin_client: Any, tenant: Any, comment_workflow: Workflow) -> None:
    version = comment_workflow.published_version
    assert version is not None
    version.__class__.objects.filter(pk=version.pk).update(
        payload_schema={"type": "object", "required": ["post_title"]}
    )
    subscriber = SubscriberFactory(environment=tenant.environment)
    response = admin_client.post(why_not_url(subscriber), {"workflow": comment_workflow.pk, "payload": "{}"})
    html = response.content.decode()
    assert "does not match the schema of workflow" in html and "payload.post_title: is required" in html
    Workflow.objects.filter(pk=comment_workflow.pk).update(active=False)
    response = admin_client.post(why_not_url(subscriber), {"workflow": comment_workflow.pk, "payload": PAYLOAD})
    assert "is inactive: a trigger would be refused" in response.content.decode()


def test_why_not_offers_only_the_subscribers_environment(
    admin_client: Any, tenant: Any, other_tenant: Any, comment_workflow: Workflow
) -> None:
    published_template(other_tenant.environment, "their-email", "email")
    theirs = make_workflow(
        other_tenant.environment, "theirs", [{"id": "mail", "type": "email", "template": "their-email"}]
    )
    subscriber = SubscriberFactory(environment=tenant.environment)
    page = admin_client.get(why_not_url(subscriber)).content.decode()
    assert "comment-created" in page and "theirs" not in page
    response = admin_client.post(why_not_url(subscriber), {"workflow": theirs.pk, "payload": ""})
    assert "Select a valid choice" in response.content.decode()
    assert response.context["result"] is None


def _staff(name: str, *perms: str) -> Client:
    user = User.objects.create_user(name, password="pw-staff-1", is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label=app_label))
    client = Client()
    client.force_login(user)
    return client


def test_permissions(person: Subscriber, comment_workflow: Workflow) -> None:
    history(person, comment_workflow, 2)
    anonymous = Client().get(page_url(person))
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    assert Client().post(why_not_url(person), {"workflow": comment_workflow.pk}).status_code == 302

    nonstaff = User.objects.create_user("plain", password="pw-plain-1", is_staff=False)
    client = Client()
    client.force_login(nonstaff)
    assert client.get(why_not_url(person)).status_code == 302

    viewer = _staff("viewer", "subscribers.view_subscriber")
    html = viewer.get(page_url(person)).content.decode()
    assert "subscriber-runs" not in html and "subscriber-inbox" not in html and "Why not?" not in html
    assert viewer.get(why_not_url(person)).status_code == 403
    assert viewer.post(why_not_url(person), {"workflow": comment_workflow.pk}).status_code == 403

    operator = _staff("operator", "subscribers.view_subscriber", "workflows.view_workflow", "workflows.view_run")
    html = operator.get(page_url(person)).content.decode()
    assert "subscriber-runs" in html and "subscriber-messages" not in html and "Why not?" in html
    assert operator.post(why_not_url(person), {"workflow": comment_workflow.pk, "payload": PAYLOAD}).status_code == 200

    nobody = _staff("nobody", "workflows.view_workflow")
    assert nobody.get(why_not_url(person)).status_code == 403
    assert nobody.get(page_url(person)).status_code == 403


def test_why_not_needs_the_csrf_token(person: Subscriber, comment_workflow: Workflow) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw-root-1"))
    assert client.post(why_not_url(person), {"workflow": comment_workflow.pk}).status_code == 403
    page = client.get(why_not_url(person))
    token = page.context["csrf_token"]
    response = client.post(
        why_not_url(person), {"workflow": comment_workflow.pk, "payload": PAYLOAD, "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 200 and response.context["result"] is not None


def test_an_unknown_subscriber_is_a_404_and_the_add_page_has_no_sections(admin_client: Any, tenant: Any) -> None:
    assert admin_client.get(reverse("admin:subscribers_subscriber_why_not", args=[987654])).status_code == 404
    assert admin_client.get(reverse("admin:subscribers_subscriber_why_not", args=["not-a-pk"])).status_code == 404
    add = admin_client.get(reverse("admin:subscribers_subscriber_add"))
    assert add.status_code == 200 and "subscriber-page" not in add.content.decode()
    assert set(SUBSCRIBER_CHANNELS) <= set(CHANNELS)
