"""Every HTTP email provider through its real Anymail backend, pointed at a fake ESP on loopback.

Each ESP's API URL is an Anymail setting, so the integration's credentials point the real
backend (payload building, auth, response parsing) at a local server; Amazon SES goes through
boto3 with an ``endpoint_url``.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import unquote_plus

import pytest

from apps.delivery.models import Message
from apps.delivery.services import message_send_now
from tests.delivery.conftest import Received, Reply
from tests.factories import IntegrationFactory

pytestmark = pytest.mark.django_db


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# provider, credentials (url filled in), success reply, expected path, auth check, expected message id
CASES: list[tuple[str, dict[str, Any], Reply, str, Any, Any]] = [
    (
        "sendgrid",
        {"api_key": "SG.key"},
        Reply(status=202, body=b""),
        "/mail/send",
        lambda r: r.headers["Authorization"] == "Bearer SG.key",
        lambda message_id: len(message_id) == 36,  # Anymail's own id, echoed back by SendGrid webhooks
    ),
    (
        "resend",
        {"api_key": "re_key"},
        Reply(body={"id": "4ef9a417-02e9-4d39-ad75-9611e0fcc33c"}),
        "/emails",
        lambda r: r.headers["Authorization"] == "Bearer re_key",
        lambda message_id: message_id == "4ef9a417-02e9-4d39-ad75-9611e0fcc33c",
    ),
    (
        "brevo",
        {"api_key": "xkeysib-key"},
        Reply(status=201, body={"messageId": "<202611241000.123@smtp-relay.mailin.fr>"}),
        "/smtp/email",
        lambda r: r.headers["api-key"] == "xkeysib-key",
        lambda message_id: message_id == "<202611241000.123@smtp-relay.mailin.fr>",
    ),
    (
        "mailgun",
        {"api_key": "mg-key"},
        Reply(body={"id": "<20261124.1@acme.test>", "message": "Queued. Thank you."}),
        "/acme.test/messages",
        lambda r: r.headers["Authorization"] == basic("api", "mg-key"),
        lambda message_id: message_id == "<20261124.1@acme.test>",
    ),
    (
        "postmark",
        {"server_token": "pm-token"},
        Reply(body={"To": "ada@example.com", "MessageID": "b7bc2f4a-e38e", "ErrorCode": 0, "Message": "OK"}),
        "/email",
        lambda r: r.headers["X-Postmark-Server-Token"] == "pm-token",
        lambda message_id: message_id == "b7bc2f4a-e38e",
    ),
]


def send(tenant: Any) -> Message:
    return message_send_now(
        environment_id=tenant.environment.pk,
        channel="email",
        recipient="ada@example.com",
        subject="Hello",
        body="<p>Hi Ada</p>",
    )


@pytest.mark.parametrize(
    ("provider", "credentials", "reply", "path", "auth_ok", "id_ok"), CASES, ids=[c[0] for c in CASES]
)
def test_esp_send_and_retry(tenant, fake_server, provider, credentials, reply, path, auth_ok, id_ok):
    server = fake_server([Reply(status=503, body={"message": "unavailable"}), reply])
    IntegrationFactory(
        environment=tenant.environment,
        provider=provider,
        credentials={**credentials, "api_url": f"{server.url}/"},
        settings={"from_email": "Acme <hello@acme.test>"},
    )

    message = send(tenant)

    assert message.status == "sent", message.error
    assert id_ok(message.provider_message_id), message.provider_message_id
    first, second = server.requests
    assert first.path == second.path == path
    received: Received = second
    assert auth_ok(received)
    body = unquote_plus(received.body.decode())  # JSON, or form-encoded (Mailgun)
    assert "ada@example.com" in body and "Hi Ada" in body
    failed, succeeded = message.attempts_log.order_by("id")
    assert (failed.status, failed.response_code, failed.error_kind, failed.retryable) == (
        "failed",
        503,
        "server_error",
        True,
    )
    assert succeeded.status == "success"


@pytest.mark.parametrize("provider", [c[0] for c in CASES])
def test_esp_unauthorized_is_terminal(tenant, fake_server, provider):
    server = fake_server([Reply(status=401, body={"message": "invalid key", "ErrorCode": 10})])
    credentials = next(c[1] for c in CASES if c[0] == provider)
    IntegrationFactory(
        environment=tenant.environment,
        provider=provider,
        credentials={**credentials, "api_url": f"{server.url}/"},
        settings={"from_email": "hello@acme.test"},
    )
    message = send(tenant)
    assert message.status == "failed"
    assert len(server.requests) == 1
    assert message.attempts_log.get().error_kind == "auth"


def test_amazon_ses_through_boto3(tenant, fake_server):
    server = fake_server([Reply(body={"MessageId": "0100018c-ses-1"})])
    IntegrationFactory(
        environment=tenant.environment,
        provider="ses",
        credentials={
            "access_key_id": "AKIAEXAMPLE",
            "secret_access_key": "secret",
            "region": "eu-west-1",
            "client_params": {"endpoint_url": server.url},
        },
        settings={"from_email": "hello@acme.test"},
    )

    message = send(tenant)

    assert message.status == "sent", message.error
    assert message.provider_message_id == "0100018c-ses-1"
    (request,) = server.requests
    assert request.path == "/v2/email/outbound-emails"
    assert request.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/")
    assert "/eu-west-1/ses/" in request.headers["Authorization"]
    assert request.json()["Destination"]["ToAddresses"] == ["ada@example.com"]
