"""Admin: masked credentials, test send, message list filters with attempts inline, resend."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME

from apps.delivery.models import DeliveryAttempt, Integration, Message
from tests.delivery.conftest import Reply
from tests.factories import IntegrationFactory, SubscriberFactory

pytestmark = pytest.mark.django_db

SECRET = "SG.do-not-show-me-9f3c"


def change_form_data(integration: Integration, **overrides: Any) -> dict[str, Any]:
    data = {
        "environment": integration.environment_id,
        "channel": integration.channel,
        "provider": integration.provider,
        "name": integration.name,
        "credentials": json.dumps({"api_key": "••••9f3c", "webhook_secret": "••••"}),
        "settings": json.dumps(integration.settings),
        "priority": integration.priority,
        "active": "on",
        "retries": integration.retries,
        "rate_limit": "",
    }
    data.update(overrides)
    return data


def test_credentials_are_masked_and_kept_when_unchanged(admin_client: Any, tenant: Any) -> None:
    integration = IntegrationFactory(
        environment=tenant.environment,
        provider="sendgrid",
        credentials={"api_key": SECRET, "webhook_secret": "u:p"},
    )
    url = f"/admin/delivery/integration/{integration.pk}/change/"
    page = admin_client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert SECRET not in html and "u:p" not in html and "••••9f3c" in html
    assert f"/api/v1/webhooks/email/{integration.webhook_key}/tracking" in html

    response = admin_client.post(url, change_form_data(integration, priority=3))
    assert response.status_code == 302, response.content.decode()[:2000]
    integration.refresh_from_db()
    assert integration.credentials == {"api_key": SECRET, "webhook_secret": "u:p"}
    assert integration.priority == 3

    replaced = change_form_data(integration, credentials=json.dumps({"api_key": "SG.new-key-value"}))
    assert admin_client.post(url, replaced).status_code == 302
    integration.refresh_from_db()
    assert integration.credentials == {"api_key": "SG.new-key-value"}


def test_admin_rejects_unknown_provider_and_missing_credentials(admin_client: Any, tenant: Any) -> None:
    integration = IntegrationFactory(environment=tenant.environment, provider="sendgrid", credentials={"api_key": "k"})
    url = f"/admin/delivery/integration/{integration.pk}/change/"
    response = admin_client.post(url, change_form_data(integration, provider="nope"))
    assert response.status_code == 200 and "Unknown email provider" in response.content.decode()
    response = admin_client.post(url, change_form_data(integration, credentials="{}"))
    assert response.status_code == 200 and "Missing: api_key" in response.content.decode()


def test_send_test_message_action(admin_client: Any, tenant: Any, fake_server: Any) -> None:
    gateway = fake_server([Reply(body={"id": "t-1"})])
    integration = IntegrationFactory(
        environment=tenant.environment, channel="sms", provider="http", credentials={"url": gateway.url}
    )
    form = admin_client.post(
        "/admin/delivery/integration/", {"action": "send_test_message", ACTION_CHECKBOX_NAME: [integration.pk]}
    )
    assert form.status_code == 200 and b'name="recipient"' in form.content

    done = admin_client.post(
        "/admin/delivery/integration/",
        {
            "action": "send_test_message",
            ACTION_CHECKBOX_NAME: [integration.pk],
            "apply": "Send",
            "recipient": "+15550009999",
        },
        follow=True,
    )
    assert done.status_code == 200
    assert "sent" in done.content.decode()
    (request,) = gateway.requests
    assert request.json()["to"] == "+15550009999"
    message = Message.objects.get()
    assert message.run_id is None and message.status == "sent" and message.data["test"] is True


def test_message_list_filters_and_attempts_inline(admin_client: Any, tenant: Any) -> None:
    from tests.workflows.conftest import make_workflow

    env = tenant.environment
    make_workflow(env, "welcome", [{"id": "hook", "type": "webhook"}])
    wanted = Message.objects.create(
        environment=env, step_id="m", channel="email", recipient="a@x.test", status="failed", provider="postmark",
        data={"workflow": "welcome"},
    )  # fmt: skip
    Message.objects.create(
        environment=env, step_id="m", channel="sms", recipient="+1555", status="sent", data={"workflow": "other"}
    )
    DeliveryAttempt.objects.create(message=wanted, provider="postmark", status="failed", error="HTTP 500 boom")
    for query in ({"status__exact": "failed"}, {"channel__exact": "email"}, {"provider__exact": "postmark"},
                  {"workflow": "welcome"}):  # fmt: skip
        page = admin_client.get("/admin/delivery/message/", query)
        assert page.status_code == 200
        assert "a@x.test" in page.content.decode(), query
        assert "+1555" not in page.content.decode(), query
    detail = admin_client.get(f"/admin/delivery/message/{wanted.pk}/change/")
    assert detail.status_code == 200 and "HTTP 500 boom" in detail.content.decode()


def test_workflow_filter_offers_the_workflows_of_recent_messages(admin_client: Any, tenant: Any) -> None:
    env = tenant.environment
    for workflow in ("welcome", "digest", "welcome"):
        Message.objects.create(
            environment=env, step_id="m", channel="email", recipient="a@x.test", data={"workflow": workflow}
        )
    Message.objects.create(environment=env, step_id="m", channel="email", recipient="b@x.test", data={})

    html = admin_client.get("/admin/delivery/message/").content.decode()

    assert html.count('href="?workflow=welcome"') == 1 and 'href="?workflow=digest"' in html


def test_resend_action_queues_a_copy(
    admin_client: Any, tenant: Any, mailoutbox: Any, django_capture_on_commit_callbacks: Any
) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment, subscriber_id="u1")
    original = Message.objects.create(
        environment=tenant.environment, step_id="m", channel="email", subscriber=subscriber,
        recipient="u1@example.com", subject="Hello", body="<p>Hi</p>", status="failed", error="boom",
    )  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/delivery/message/", {"action": "resend", ACTION_CHECKBOX_NAME: [original.pk]}, follow=True
        )
    assert response.status_code == 200
    copy = Message.objects.exclude(pk=original.pk).get()
    assert copy.status == "sent" and copy.data["resend_of"] == original.pk
    assert [m.to for m in mailoutbox] == [["u1@example.com"]]
    original.refresh_from_db()
    assert original.status == "failed"


def test_reset_circuit_action(admin_client: Any, tenant: Any) -> None:
    from django.utils import timezone

    integration = IntegrationFactory(
        environment=tenant.environment, provider="smtp", circuit_failures=5, circuit_open_until=timezone.now()
    )
    admin_client.post(
        "/admin/delivery/integration/", {"action": "reset_circuit", ACTION_CHECKBOX_NAME: [integration.pk]}
    )
    integration.refresh_from_db()
    assert integration.circuit_failures == 0 and integration.circuit_open_until is None
