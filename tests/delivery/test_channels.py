"""Each channel's providers against fake services: Web Push and chat on loopback HTTP, the signed
webhook on loopback, FCM and Twilio (SDKs with fixed hosts) through ``responses``."""

from __future__ import annotations

import base64
import json
import os
from typing import Any
from urllib.parse import parse_qs

import http_ece
import pytest
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from apps.delivery.models import Message, Suppression
from apps.delivery.providers.base import idempotency_key
from apps.delivery.providers.webhook import SIGNATURE_HEADER, verify
from apps.delivery.selectors import reachable_channels
from apps.delivery.services import message_send_now
from apps.delivery.tasks import deliver_messages
from apps.events.services import TriggerRequest, event_trigger
from apps.subscribers.models import Device
from tests.delivery.conftest import Reply
from tests.factories import IntegrationFactory, SubscriberFactory
from tests.workflows.conftest import make_workflow, published_template

pytestmark = pytest.mark.django_db


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def queued(env: Any, channel: str, subscriber: Any, **fields: Any) -> Message:
    return Message.objects.create(
        environment=env,
        step_id="s",
        channel=channel,
        subscriber=subscriber,
        recipient=fields.pop("recipient", subscriber.subscriber_id),
        **fields,
    )


# --- Web Push ---------------------------------------------------------------------------------------


class PushSubscriber:
    """A browser's side of a push subscription: its keys, and decryption of what arrives."""

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        public = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.keys = {"p256dh": b64url(public), "auth": b64url(self.auth)}

    def decrypt(self, body: bytes) -> dict[str, Any]:
        plain = http_ece.decrypt(body, private_key=self.private_key, auth_secret=self.auth, version="aes128gcm")
        return json.loads(plain)


def vapid_private_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return b64url(key.private_numbers().private_value.to_bytes(32, "big"))


def test_web_push_encrypts_signs_and_removes_gone_subscriptions(tenant, fake_server):
    env = tenant.environment
    browser = PushSubscriber()
    push_service = fake_server(
        handler=lambda r: Reply(status=410, body={}) if r.path.endswith("/gone") else Reply(status=201, body={})
    )
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1")
    live = Device.objects.create(
        environment=env,
        subscriber=subscriber,
        provider="webpush",
        token=f"{push_service.url}/push/live",
        keys=browser.keys,
    )
    gone = Device.objects.create(
        environment=env,
        subscriber=subscriber,
        provider="webpush",
        token=f"{push_service.url}/push/gone",
        keys=browser.keys,
    )
    IntegrationFactory(
        environment=env,
        channel="push",
        provider="webpush",
        credentials={"vapid_private_key": vapid_private_key(), "vapid_subject": "mailto:ops@acme.test"},
    )
    message = queued(env, "push", subscriber, subject="Build done", body="main is green", data={"action_url": "/b/1"})

    deliver_messages([message.pk])

    message.refresh_from_db()
    assert message.status == "sent", message.error
    live_request = next(r for r in push_service.requests if r.path == "/push/live")
    assert live_request.headers["Content-Encoding"] == "aes128gcm"
    assert live_request.headers["Authorization"].startswith("vapid t=")
    assert live_request.headers["Topic"] == f"clarion-{message.pk}"  # a resend replaces an undelivered copy
    assert browser.decrypt(live_request.body) == {
        "title": "Build done",
        "body": "main is green",
        "message_id": str(message.pk),
        "url": "/b/1",
    }
    assert list(Device.objects.values_list("pk", flat=True)) == [live.pk]  # the 410 one is removed
    assert not Device.objects.filter(pk=gone.pk).exists()


def test_web_push_all_subscriptions_gone_fails_and_push_becomes_unreachable(tenant, fake_server):
    env = tenant.environment
    push_service = fake_server([Reply(status=404, body={})])
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1")
    Device.objects.create(
        environment=env,
        subscriber=subscriber,
        provider="webpush",
        token=f"{push_service.url}/push/x",
        keys=PushSubscriber().keys,
    )
    IntegrationFactory(
        environment=env,
        channel="push",
        provider="webpush",
        credentials={"vapid_private_key": vapid_private_key(), "vapid_subject": "mailto:ops@acme.test"},
    )
    assert "push" in reachable_channels(subscribers=[subscriber])[subscriber.pk]
    message = queued(env, "push", subscriber, subject="t", body="b")

    deliver_messages([message.pk])

    message.refresh_from_db()
    assert message.status == "failed" and "gone" in message.error
    assert not Device.objects.exists()
    assert "push" not in reachable_channels(subscribers=[subscriber])[subscriber.pk]


def test_push_step_of_a_workflow_reaches_the_subscribers_browser(
    tenant, fake_server, django_capture_on_commit_callbacks
):
    env = tenant.environment
    browser = PushSubscriber()
    push_service = fake_server([Reply(status=201, body={})])
    published_template(env, "ping", "push", title_en="Hi {{ subscriber.first_name }}", body_en="{{ payload.text }}")
    make_workflow(env, "ping", [{"id": "push", "type": "push", "template": "ping"}])
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1", first_name="Ada")
    Device.objects.create(
        environment=env, subscriber=subscriber, provider="webpush", token=f"{push_service.url}/p", keys=browser.keys
    )
    IntegrationFactory(
        environment=env,
        channel="push",
        provider="webpush",
        credentials={"vapid_private_key": vapid_private_key(), "vapid_subject": "mailto:ops@acme.test"},
    )
    with django_capture_on_commit_callbacks(execute=True):
        event_trigger(environment=env, request=TriggerRequest("ping", ["u1"], {"text": "Your build passed"}))

    message = Message.objects.get(channel="push")
    assert message.status == "sent", message.error
    assert message.recipient == "u1"
    (request,) = push_service.requests
    payload = browser.decrypt(request.body)
    assert payload["title"] == "Hi Ada" and payload["body"] == "Your build passed"


# --- FCM ----------------------------------------------------------------------------------------------

FCM_URL = "https://fcm.googleapis.com/v1/projects/demo-project/messages:send"


def service_account() -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": "demo-project",
        "private_key_id": "key-1",
        "private_key": pem,
        "client_email": "clarion@demo-project.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


def fcm_integration(env: Any) -> Any:
    return IntegrationFactory(
        environment=env, channel="push", provider="fcm", credentials={"service_account": service_account()}
    )


@responses.activate
def test_fcm_sends_http_v1_and_removes_unregistered_tokens(tenant):
    env = tenant.environment
    responses.post("https://oauth2.googleapis.com/token", json={"access_token": "ya29.t", "expires_in": 3600})
    sent: list[dict[str, Any]] = []

    def fcm(request: Any) -> tuple[int, dict[str, str], str]:
        body = json.loads(request.body)
        sent.append({"body": body, "auth": request.headers["Authorization"]})
        if body["message"]["token"] == "dead-token":
            error = {
                "error": {
                    "code": 404,
                    "message": "Requested entity was not found.",
                    "status": "NOT_FOUND",
                    "details": [
                        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}
                    ],
                }
            }
            return 404, {}, json.dumps(error)
        return 200, {}, json.dumps({"name": "projects/demo-project/messages/0:42"})

    responses.add_callback(responses.POST, FCM_URL, callback=fcm, content_type="application/json")
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1")
    Device.objects.create(environment=env, subscriber=subscriber, provider="fcm", token="live-token")
    Device.objects.create(environment=env, subscriber=subscriber, provider="fcm", token="dead-token")
    IntegrationFactory(
        environment=env, channel="push", provider="fcm", credentials={"service_account": service_account()}
    )
    message = queued(env, "push", subscriber, subject="Hi", body="There", data={"action_url": "https://a.test/x"})

    deliver_messages([message.pk])

    message.refresh_from_db()
    assert message.status == "sent", message.error
    assert message.provider_message_id == "projects/demo-project/messages/0:42"
    assert sent[0]["auth"] == "Bearer ya29.t"
    assert sent[0]["body"]["message"] == {
        "token": "live-token",
        "notification": {"title": "Hi", "body": "There"},
        "data": {"message_id": str(message.pk), "url": "https://a.test/x"},
    }
    assert list(Device.objects.values_list("token", flat=True)) == ["live-token"]


@responses.activate
def test_fcm_quota_exceeded_is_retried(tenant):
    env = tenant.environment
    responses.post("https://oauth2.googleapis.com/token", json={"access_token": "ya29.t", "expires_in": 3600})
    quota = {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED",
                       "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                                    "errorCode": "QUOTA_EXCEEDED"}]}}  # fmt: skip
    responses.post(FCM_URL, json=quota, status=429)
    responses.post(FCM_URL, json={"name": "projects/demo-project/messages/2"})
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1")
    Device.objects.create(environment=env, subscriber=subscriber, provider="fcm", token="t1")
    IntegrationFactory(
        environment=env, channel="push", provider="fcm", credentials={"service_account": service_account()}
    )
    message = queued(env, "push", subscriber, subject="Hi", body="There")

    deliver_messages([message.pk])

    message.refresh_from_db()
    assert message.status == "sent"
    first, second = message.attempts_log.order_by("id")
    assert (first.error_kind, first.response_code, first.retryable) == ("rate_limited", 429, True)
    assert second.status == "success"


# --- chat -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["slack", "discord", "msteams"])
def test_chat_posts_to_the_subscribers_webhook_or_the_integrations(tenant, fake_server, provider):
    env = tenant.environment
    chat = fake_server([Reply(status=200, body="ok")])
    with_own = SubscriberFactory(environment=env, subscriber_id="u1")
    without = SubscriberFactory(environment=env, subscriber_id="u2")
    Device.objects.create(environment=env, subscriber=with_own, provider=provider, token=f"{chat.url}/personal")
    IntegrationFactory(
        environment=env, channel="chat", provider=provider, credentials={"webhook_url": f"{chat.url}/team"}
    )
    m1 = queued(env, "chat", with_own, subject="Deploy", body="v2 is live", data={"action_url": "https://a.test"})
    m2 = queued(env, "chat", without, subject="", body="plain text")

    deliver_messages([m1.pk, m2.pk])

    assert [r.path for r in chat.requests] == ["/personal", "/team"]
    first, second = (r.json() for r in chat.requests)
    if provider == "slack":
        assert first["text"] == "Deploy\nv2 is live"
        assert first["blocks"][0]["text"]["text"] == "Deploy"
        assert first["blocks"][-1]["elements"][0]["url"] == "https://a.test"
        assert second == {
            "text": "plain text",
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "plain text"}}],
            "metadata": {"event_type": "clarion_notification", "event_payload": {"clarion_message_id": str(m2.pk)}},
        }
    elif provider == "discord":
        assert first["embeds"] == [{"title": "Deploy", "description": "v2 is live", "url": "https://a.test"}]
        assert second["content"] == "plain text"
    else:
        card = first["attachments"][0]
        assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
        assert [b["text"] for b in card["content"]["body"]] == ["Deploy", "v2 is live"]
        assert card["content"]["actions"][0]["url"] == "https://a.test"
    assert Message.objects.filter(status="sent").count() == 2
    reach = reachable_channels(subscribers=[with_own, without])
    assert "chat" in reach[with_own.pk] and "chat" in reach[without.pk]


def test_chat_without_any_webhook_is_unreachable(tenant):
    env = tenant.environment
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1")
    IntegrationFactory(environment=env, channel="chat", provider="slack", credentials={})
    assert "chat" not in reachable_channels(subscribers=[subscriber])[subscriber.pk]


def test_revoked_chat_webhook_is_removed(tenant, fake_server):
    env = tenant.environment
    slack = fake_server([Reply(status=404, body="no_service")])
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1")
    Device.objects.create(environment=env, subscriber=subscriber, provider="slack", token=f"{slack.url}/revoked")
    IntegrationFactory(environment=env, channel="chat", provider="slack", credentials={})
    message = queued(env, "chat", subscriber, body="hello")

    deliver_messages([message.pk])

    message.refresh_from_db()
    assert message.status == "failed"
    assert not Device.objects.exists()


def test_slack_429_retry_after_is_retried(tenant, fake_server):
    env = tenant.environment
    slack = fake_server([Reply(status=429, body="rate_limited", headers={"Retry-After": "0"}), Reply(body="ok")])
    IntegrationFactory(environment=env, channel="chat", provider="slack", credentials={"webhook_url": slack.url})
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1")
    message = queued(env, "chat", subscriber, body="hello")
    deliver_messages([message.pk])
    message.refresh_from_db()
    assert message.status == "sent" and len(slack.requests) == 2


# --- signed webhook channel ---------------------------------------------------------------------------


def test_webhook_channel_posts_signed_payload_from_a_workflow(tenant, fake_server, django_capture_on_commit_callbacks):
    env = tenant.environment
    receiver = fake_server([Reply(status=204, body=b"")])
    IntegrationFactory(
        environment=env,
        channel="webhook",
        provider="webhook",
        credentials={"url": f"{receiver.url}/hooks/clarion", "secret": "whsec_test"},
        settings={"headers": {"X-Team": "growth"}},
    )
    make_workflow(env, "order-shipped", [{"id": "hook", "type": "webhook"}])
    SubscriberFactory(environment=env, subscriber_id="u1")
    with django_capture_on_commit_callbacks(execute=True):
        event_trigger(
            environment=env,
            request=TriggerRequest("order-shipped", ["u1"], {"order": 42}, transaction_id="tx-1"),
        )

    message = Message.objects.get(channel="webhook")
    assert message.status == "sent", message.error
    (request,) = receiver.requests
    assert verify("whsec_test", request.body, request.headers[SIGNATURE_HEADER])
    assert not verify("wrong-secret", request.body, request.headers[SIGNATURE_HEADER])
    assert not verify("whsec_test", request.body + b" ", request.headers[SIGNATURE_HEADER])
    t, s = request.headers[SIGNATURE_HEADER].split(",")
    assert t.startswith("t=") and s.startswith("s=") and len(s) == 2 + 64
    assert request.headers["X-Team"] == "growth"
    assert request.headers["Idempotency-Key"] == idempotency_key(message)
    body = request.json()
    assert body["subscriber_id"] == "u1" and body["workflow"] == "order-shipped"
    assert body["transaction_id"] == "tx-1" and body["payload"] == {"order": 42}


def test_webhook_signature_rejects_old_timestamps():
    from apps.delivery.providers.webhook import sign

    header = sign("s3cret", b"{}", timestamp=1_000_000)
    assert verify("s3cret", b"{}", header, now=1_000_100)
    assert not verify("s3cret", b"{}", header, now=1_000_000 + 301)


# --- Twilio ------------------------------------------------------------------------------------------

TWILIO_URL = "https://api.twilio.com/2010-04-01/Accounts/AC123/Messages.json"


def twilio_integration(env: Any, **kwargs: Any) -> Any:
    return IntegrationFactory(
        environment=env,
        channel="sms",
        provider="twilio",
        credentials={"account_sid": "AC123", "auth_token": "tw-token"},
        settings={"from_number": "+15550001111"},
        **kwargs,
    )


@responses.activate
def test_twilio_sends_with_status_callback(tenant, settings):
    settings.PUBLIC_URL = "https://clarion.example.com"
    env = tenant.environment
    responses.post(TWILIO_URL, json={"sid": "SM0001", "status": "queued"}, status=201)
    integration = twilio_integration(env)

    message = message_send_now(environment_id=env.pk, channel="sms", recipient="+15557654321", body="Hello")

    assert message.status == "sent" and message.provider_message_id == "SM0001"
    form = parse_qs(responses.calls[0].request.body)
    assert form["To"] == ["+15557654321"] and form["From"] == ["+15550001111"] and form["Body"] == ["Hello"]
    assert form["StatusCallback"] == [
        f"https://clarion.example.com/api/v1/webhooks/twilio/{integration.webhook_key}/status"
        f"?clarion_message_id={message.pk}"
    ]
    assert responses.calls[0].request.headers["Authorization"].startswith("Basic ")


@responses.activate
def test_twilio_invalid_number_fails_and_marks_the_number_inactive(tenant):
    env = tenant.environment
    responses.post(
        TWILIO_URL,
        json={"code": 21211, "message": "The 'To' number +1555 is not a valid phone number.", "status": 400},
        status=400,
    )
    twilio_integration(env, retries=3)
    subscriber = SubscriberFactory(environment=env, subscriber_id="u1", phone="+1555")

    message = message_send_now(
        environment_id=env.pk, channel="sms", recipient="+1555", body="Hello", subscriber_id=subscriber.pk
    )

    assert message.status == "failed" and "21211" in message.error
    assert len(responses.calls) == 1  # terminal: not retried
    assert Suppression.objects.get().reason == "invalid_address"
    assert "sms" not in reachable_channels(subscribers=[subscriber])[subscriber.pk]


@responses.activate
def test_twilio_server_error_fails_over_to_http_gateway(tenant, fake_server):
    env = tenant.environment
    responses.add_passthru("http://127.0.0.1")
    responses.post(TWILIO_URL, json={"code": 20500, "message": "Internal Server Error", "status": 500}, status=500)
    gateway = fake_server([Reply(body={"id": "gw-1"})])
    twilio_integration(env, priority=0, retries=0)
    IntegrationFactory(environment=env, channel="sms", provider="http", priority=1, credentials={"url": gateway.url})

    message = message_send_now(environment_id=env.pk, channel="sms", recipient="+15557654321", body="Hello")

    assert message.status == "sent" and message.provider_message_id == "gw-1"
    assert list(message.attempts_log.values_list("provider", "status", "response_code")) == [
        ("twilio", "failed", 500),
        ("http", "success", 200),
    ]


def test_vapid_key_as_pem_is_accepted():
    from py_vapid import Vapid

    from apps.delivery.providers.webpush import vapid_key

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    raw = vapid_key(pem)
    assert Vapid.from_string(raw).private_key.private_numbers() == key.private_numbers()
    assert vapid_key(f" {raw}\n") == raw
