"""An integration's page: "Send a test message" to what the operator types (recorded, errors as
messages), the inbound webhook URLs to copy, staff permissions."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from apps.delivery.models import Integration, Message
from tests.delivery.conftest import Reply
from tests.factories import IntegrationFactory

pytestmark = pytest.mark.django_db

SECRET = "SG.do-not-show-me-9f3c"


def send_test_url(integration: Integration) -> str:
    return reverse("admin:delivery_integration_send_test", args=[integration.pk])


def change_url(integration: Integration) -> str:
    return reverse("admin:delivery_integration_change", args=[integration.pk])


def history(integration: Integration) -> list[str]:
    entries = LogEntry.objects.filter(object_id=str(integration.pk), content_type__model="integration")
    return [entry.get_change_message() for entry in entries.order_by("pk")]


@pytest.fixture
def smtp_loopback() -> Iterator[tuple[int, list[list[str]]]]:
    """A real SMTP server on 127.0.0.1: (port, the recipients of each email it accepted)."""
    from aiosmtpd.controller import Controller

    received: list[list[str]] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(list(envelope.rcpt_tos))
            return "250 Message accepted"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, received
    finally:
        controller.stop()


def test_send_test_email_from_the_integration_page(
    admin_client: Any, tenant: Any, smtp_loopback: tuple[int, list[list[str]]]
) -> None:
    port, received = smtp_loopback
    integration = IntegrationFactory(
        environment=tenant.environment,
        channel="email",
        provider="smtp",
        credentials={"host": "127.0.0.1", "port": port},
        settings={"from_email": "Acme <hi@acme.test>"},
    )
    page = admin_client.get(change_url(integration)).content.decode()
    assert f'href="{send_test_url(integration)}"' in page
    form = admin_client.get(send_test_url(integration))
    assert form.status_code == 200 and 'name="recipient"' in form.content.decode()

    done = admin_client.post(send_test_url(integration), {"recipient": "ops@example.com"}, follow=True)
    assert done.redirect_chain[-1][0] == change_url(integration)
    message = Message.objects.get()
    assert f"test message {message.pk} sent" in done.content.decode()
    assert received == [["ops@example.com"]]
    assert (message.run_id, message.status, message.data["test"]) == (None, "sent", True)
    assert history(integration) == [f"Sent test message {message.pk} (sent)."]


def test_send_test_sms_through_a_loopback_gateway(admin_client: Any, tenant: Any, fake_server: Any) -> None:
    gateway = fake_server([Reply(body={"id": "t-1"})])
    integration = IntegrationFactory(
        environment=tenant.environment, channel="sms", provider="http", credentials={"url": gateway.url}
    )
    admin_client.post(send_test_url(integration), {"recipient": "+15550009999"})
    (request,) = gateway.requests
    assert request.json()["to"] == "+15550009999"
    assert Message.objects.get().status == "sent"


def test_a_failing_provider_is_a_message_not_a_500(admin_client: Any, tenant: Any, fake_server: Any) -> None:
    gateway = fake_server([Reply(status=500, body={"error": "down"})] * 10)
    integration = IntegrationFactory(
        environment=tenant.environment, channel="sms", provider="http", credentials={"url": gateway.url}, retries=0
    )
    done = admin_client.post(send_test_url(integration), {"recipient": "+15550009999"}, follow=True)
    assert done.status_code == 200
    message = Message.objects.get()
    assert message.status != "sent"
    assert f"test message {message.pk} {message.status}" in done.content.decode()
    assert history(integration) == [f"Sent test message {message.pk} ({message.status})."]


def test_an_exception_in_the_send_is_a_message_not_a_500(
    admin_client: Any, tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    integration = IntegrationFactory(environment=tenant.environment, channel="email", provider="smtp")

    def explode(**kwargs: Any) -> Message:
        raise RuntimeError(f"connection refused; password={SECRET}")

    monkeypatch.setattr("apps.delivery.admin.integration_send_test", explode)
    done = admin_client.post(send_test_url(integration), {"recipient": "ops@example.com"}, follow=True)
    assert done.status_code == 200
    page = done.content.decode()
    assert "the test send failed (RuntimeError)" in page and SECRET not in page
    assert history(integration) == ["Test send failed (RuntimeError)."]


def test_a_missing_address_is_refused_with_a_message(admin_client: Any, tenant: Any, mailoutbox: Any) -> None:
    integration = IntegrationFactory(environment=tenant.environment, channel="email", provider="smtp")
    done = admin_client.post(send_test_url(integration), {"recipient": "  "}, follow=True)
    assert "give an email address" in done.content.decode()
    assert not Message.objects.exists() and not mailoutbox and history(integration) == []


def test_push_test_needs_a_subscriber_of_the_same_environment(admin_client: Any, tenant: Any) -> None:
    integration = IntegrationFactory(environment=tenant.environment, channel="push", provider="fcm")
    done = admin_client.post(send_test_url(integration), {"recipient": "<b>nobody</b>"}, follow=True)
    page = done.content.decode()
    assert "no subscriber" in page and "<b>nobody</b>" not in page  # escaped
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    ("channel", "provider", "name", "route"),
    [
        ("email", "sendgrid", "tracking", "delivery-webhook-email-tracking"),
        ("email", "postmark", "tracking", "delivery-webhook-email-tracking"),
        ("sms", "twilio", "status_callback", "delivery-webhook-twilio-status"),
        ("sms", "twilio", "inbound_messages", "delivery-webhook-twilio-inbound"),
    ],
)
def test_webhook_urls_are_listed_with_a_copy_button(
    admin_client: Any, tenant: Any, settings: Any, channel: str, provider: str, name: str, route: str
) -> None:
    settings.PUBLIC_URL = "https://clarion.example.com"
    integration = IntegrationFactory(
        environment=tenant.environment, channel=channel, provider=provider, credentials={"api_key": SECRET}
    )
    url = "https://clarion.example.com" + reverse(route, kwargs={"key": integration.webhook_key})
    assert integration.webhook_key in url
    page = admin_client.get(change_url(integration)).content.decode()
    assert f"{name}: <code>{url}</code>" in page  # visible text
    assert f'data-copy="{url}"' in page and "clarion/admin/settings-forms.js" in page
    assert SECRET not in page


def test_no_webhook_urls_for_a_provider_without_callbacks(admin_client: Any, tenant: Any) -> None:
    integration = IntegrationFactory(environment=tenant.environment, channel="email", provider="smtp")
    page = admin_client.get(change_url(integration)).content.decode()
    assert "clarion-copy" not in page


def test_permissions(tenant: Any, mailoutbox: Any) -> None:
    integration = IntegrationFactory(
        environment=tenant.environment, channel="email", provider="sendgrid", credentials={"api_key": SECRET}
    )
    user = User.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename="view_integration"))
    viewer = Client()
    viewer.force_login(user)

    page = viewer.get(change_url(integration))
    assert page.status_code == 200
    assert send_test_url(integration) not in page.content.decode()
    assert SECRET not in page.content.decode() and "9f3c" in page.content.decode()  # masked for viewers too
    assert viewer.get(send_test_url(integration)).status_code == 403
    assert viewer.post(send_test_url(integration), {"recipient": "ops@example.com"}).status_code == 403
    listing = viewer.get("/admin/delivery/integration/").content.decode()
    assert "send_test_message" not in listing and "reset_circuit" not in listing
    viewer.post(
        "/admin/delivery/integration/",
        {"action": "send_test_message", ACTION_CHECKBOX_NAME: [integration.pk], "apply": "1", "recipient": "a@b.c"},
    )
    assert Client().post(send_test_url(integration), {"recipient": "ops@example.com"}).status_code == 302  # login
    assert not mailoutbox and not Message.objects.exists()


def test_send_test_needs_the_csrf_token_and_a_real_integration(
    admin_client: Any, admin_user: Any, tenant: Any, mailoutbox: Any
) -> None:
    integration = IntegrationFactory(environment=tenant.environment, channel="email", provider="smtp")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(admin_user)
    assert strict.post(send_test_url(integration), {"recipient": "ops@example.com"}).status_code == 403
    assert admin_client.get(reverse("admin:delivery_integration_send_test", args=[999999])).status_code == 404
    assert not mailoutbox
