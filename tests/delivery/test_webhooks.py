"""Inbound status webhooks: Anymail tracking (Postmark, Mailgun) and Twilio status callbacks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from twilio.request_validator import RequestValidator

from apps.delivery.models import Message, MessageEvent, Suppression
from apps.delivery.selectors import reachable_channels
from apps.delivery.services import message_deliver
from tests.factories import IntegrationFactory, SubscriberFactory

pytestmark = pytest.mark.django_db


def basic_auth(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


@pytest.fixture
def postmark(tenant: Any) -> Any:
    return IntegrationFactory(
        environment=tenant.environment,
        provider="postmark",
        credentials={"server_token": "pm", "webhook_secret": "hook:s3cret"},
    )


@pytest.fixture
def sent_email(tenant: Any, postmark: Any) -> Message:
    subscriber = SubscriberFactory(environment=tenant.environment, subscriber_id="u1", email="ada@example.com")
    return Message.objects.create(
        environment=tenant.environment,
        step_id="mail",
        channel="email",
        subscriber=subscriber,
        recipient="ada@example.com",
        status=Message.Status.SENT,
        provider="postmark",
        integration=postmark,
        provider_message_id="pm-0001",
    )


def post_postmark(integration: Any, event: dict[str, Any], auth: str | None = "hook:s3cret") -> Any:
    headers = {"HTTP_AUTHORIZATION": basic_auth(auth)} if auth else {}
    return Client().post(
        reverse("delivery-webhook-email-tracking", kwargs={"key": integration.webhook_key}),
        data=json.dumps(event),
        content_type="application/json",
        **headers,
    )


DELIVERY = {
    "RecordType": "Delivery",
    "MessageID": "pm-0001",
    "Recipient": "ada@example.com",
    "DeliveredAt": "2026-11-24T10:00:00Z",
    "Details": "smtp;250 2.0.0 OK",
}
OPEN = {
    "RecordType": "Open",
    "MessageID": "pm-0001",
    "Recipient": "ada@example.com",
    "ReceivedAt": "2026-11-24T10:05:00Z",
    "FirstOpen": True,
}
HARD_BOUNCE = {
    "RecordType": "Bounce",
    "ID": 4323372036854775807,
    "Type": "HardBounce",
    "TypeCode": 1,
    "MessageID": "pm-0001",
    "Email": "ada@example.com",
    "BouncedAt": "2026-11-24T10:00:00Z",
    "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
    "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
}


@pytest.mark.parametrize("auth", [None, "hook:wrong", "other:s3cret"])
def test_tracking_webhook_rejects_missing_or_wrong_secret(sent_email, postmark, auth):
    response = post_postmark(postmark, DELIVERY, auth=auth)
    assert response.status_code == (401 if auth is None else 403)
    if auth is None:
        assert response["WWW-Authenticate"].startswith("Basic ")
    assert not MessageEvent.objects.exists()
    sent_email.refresh_from_db()
    assert sent_email.status == "sent"


def test_tracking_webhook_without_a_configured_secret_is_refused(tenant, sent_email):
    open_integration = IntegrationFactory(environment=tenant.environment, provider="postmark", credentials={})
    response = post_postmark(open_integration, DELIVERY, auth=None)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "webhook_not_secured"


def test_unknown_webhook_key_is_404(sent_email):
    response = Client().post(
        reverse("delivery-webhook-email-tracking", kwargs={"key": "nope"}), data="{}", content_type="application/json"
    )
    assert response.status_code == 404


def test_delivery_then_open_moves_forward_and_keeps_raw_payload(sent_email, postmark):
    assert post_postmark(postmark, DELIVERY).status_code == 200
    sent_email.refresh_from_db()
    assert sent_email.status == "delivered"
    assert sent_email.delivered_at.isoformat() == "2026-11-24T10:00:00+00:00"

    assert post_postmark(postmark, OPEN).status_code == 200
    sent_email.refresh_from_db()
    assert sent_email.status == "opened" and sent_email.opened_at is not None
    events = list(MessageEvent.objects.order_by("id"))
    assert [(e.event_type, e.status, e.applied) for e in events] == [
        ("delivered", "delivered", True),
        ("opened", "opened", True),
    ]
    assert events[0].payload == DELIVERY and events[0].message_id == sent_email.pk


def test_duplicate_callback_is_stored_once(sent_email, postmark):
    for _ in range(3):
        assert post_postmark(postmark, HARD_BOUNCE).status_code == 200
    assert MessageEvent.objects.count() == 1
    assert Suppression.objects.count() == 1


def test_out_of_order_callbacks_never_move_backwards(sent_email, postmark):
    post_postmark(postmark, OPEN)  # the open arrives first
    post_postmark(postmark, DELIVERY)  # then the (earlier) delivery
    sent_email.refresh_from_db()
    assert sent_email.status == "opened"
    assert sent_email.delivered_at is not None  # still recorded
    late = MessageEvent.objects.get(event_type="delivered")
    assert late.applied is False


def test_terminal_status_is_not_left(sent_email, postmark):
    post_postmark(postmark, HARD_BOUNCE)
    post_postmark(postmark, DELIVERY)
    post_postmark(postmark, OPEN)
    sent_email.refresh_from_db()
    assert sent_email.status == "bounced"
    assert "550 5.1.1" in sent_email.error


def test_hard_bounce_makes_the_address_unreachable(sent_email, postmark, tenant):
    subscriber = sent_email.subscriber
    assert "email" in reachable_channels(subscribers=[subscriber])[subscriber.pk]

    post_postmark(postmark, HARD_BOUNCE)

    sent_email.refresh_from_db()
    assert sent_email.status == "bounced"
    suppression = Suppression.objects.get()
    assert (suppression.channel, suppression.address, suppression.reason) == ("email", "ada@example.com", "bounced")
    assert "email" not in reachable_channels(subscribers=[subscriber])[subscriber.pk]
    # A later message to the same address is not sent.
    later = Message.objects.create(
        environment=tenant.environment, step_id="m", channel="email", recipient="Ada@Example.com", subject="x"
    )
    message_deliver(message_id=later.pk)
    later.refresh_from_db()
    assert later.status == "failed" and "inactive (bounced)" in later.error
    # A new address for the subscriber is reachable again.
    subscriber.email = "ada@new.example.com"
    assert "email" in reachable_channels(subscribers=[subscriber])[subscriber.pk]


def test_soft_bounce_does_not_suppress(sent_email, postmark):
    post_postmark(postmark, {**HARD_BOUNCE, "ID": 2, "Type": "SoftBounce", "TypeCode": 4096})
    assert not Suppression.objects.exists()


def test_callback_before_the_send_is_recorded_is_applied_after(tenant, postmark):
    """A fast provider may call back before the worker has saved the provider's message id."""
    post_postmark(postmark, {**DELIVERY, "MessageID": "pm-early"})
    event = MessageEvent.objects.get()
    assert event.message_id is None

    from apps.delivery.providers.base import SendResult
    from apps.delivery.services.sending import _finish_sent
    from apps.delivery.services.statuses import _apply_early_events

    message = Message.objects.create(
        environment=tenant.environment, step_id="m", channel="email", recipient="a@b.c", status="sending"
    )
    _finish_sent(message, postmark, "postmark", SendResult(provider_message_id="pm-early"))
    _apply_early_events(message)

    message.refresh_from_db()
    assert message.status == "delivered"
    event.refresh_from_db()
    assert event.message_id == message.pk and event.applied


def test_events_of_other_environments_do_not_touch_a_message(sent_email, other_tenant):
    foreign = IntegrationFactory(
        environment=other_tenant.environment,
        provider="postmark",
        credentials={"server_token": "x", "webhook_secret": "u:p"},
    )
    assert post_postmark(foreign, DELIVERY, auth="u:p").status_code == 200
    sent_email.refresh_from_db()
    assert sent_email.status == "sent"
    assert MessageEvent.objects.get().message_id is None


def test_mailgun_signed_webhook(tenant):
    integration = IntegrationFactory(
        environment=tenant.environment,
        provider="mailgun",
        credentials={"api_key": "key-1", "webhook_signing_key": "signing-key", "webhook_secret": "hook:pw"},
    )
    message = Message.objects.create(
        environment=tenant.environment,
        step_id="m",
        channel="email",
        recipient="bob@example.com",
        status="sent",
        provider_message_id="<20261124.1@mg.example.com>",  # as Anymail returns it on send
    )
    timestamp, token = str(int(time.time())), "a" * 50

    def body(signature: str) -> str:
        return json.dumps(
            {
                "signature": {"timestamp": timestamp, "token": token, "signature": signature},
                "event-data": {
                    "event": "delivered",
                    "timestamp": float(timestamp),
                    "id": "evt-1",
                    "recipient": "bob@example.com",
                    "message": {"headers": {"message-id": "20261124.1@mg.example.com"}},
                },
            }
        )

    url = reverse("delivery-webhook-email-tracking", kwargs={"key": integration.webhook_key})
    auth = {"HTTP_AUTHORIZATION": basic_auth("hook:pw")}
    bad = Client().post(url, data=body("0" * 64), content_type="application/json", **auth)
    assert bad.status_code == 403 and not MessageEvent.objects.exists()

    good_signature = hmac.new(b"signing-key", f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    good = Client().post(url, data=body(good_signature), content_type="application/json", **auth)
    assert good.status_code == 200
    message.refresh_from_db()
    assert message.status == "delivered"


# --- Twilio ------------------------------------------------------------------------------------------


@pytest.fixture
def twilio(tenant: Any) -> Any:
    return IntegrationFactory(
        environment=tenant.environment,
        channel="sms",
        provider="twilio",
        credentials={"account_sid": "AC123", "auth_token": "tw-token"},
        settings={"from_number": "+15550001111"},
    )


@pytest.fixture
def sent_sms(tenant: Any, twilio: Any) -> Message:
    subscriber = SubscriberFactory(environment=tenant.environment, subscriber_id="u2", phone="+15557654321")
    return Message.objects.create(
        environment=tenant.environment,
        step_id="text",
        channel="sms",
        subscriber=subscriber,
        recipient="+15557654321",
        status=Message.Status.SENT,
        provider="twilio",
        integration=twilio,
        provider_message_id="SM0001",
    )


def post_twilio(integration: Any, params: dict[str, str], *, token: str = "tw-token", signature: str | None = None):
    path = reverse("delivery-webhook-twilio-status", kwargs={"key": integration.webhook_key})
    url = f"http://testserver{path}"
    form = {"AccountSid": "AC123", "To": "+15557654321", "From": "+15550001111", **params}
    if signature is None:
        signature = RequestValidator(token).compute_signature(url, form)
    return Client().post(path, data=form, HTTP_X_TWILIO_SIGNATURE=signature)


@pytest.mark.parametrize("case", ["missing", "wrong_token", "tampered"])
def test_twilio_callback_with_bad_signature_is_rejected(sent_sms, twilio, case):
    params = {"MessageSid": "SM0001", "MessageStatus": "delivered"}
    if case == "missing":
        response = post_twilio(twilio, params, signature="")
    elif case == "wrong_token":
        response = post_twilio(twilio, params, token="not-the-token")
    else:
        path = reverse("delivery-webhook-twilio-status", kwargs={"key": twilio.webhook_key})
        form = {"AccountSid": "AC123", "To": "+15557654321", "From": "+15550001111", **params}
        signature = RequestValidator("tw-token").compute_signature(f"http://testserver{path}", form)
        form["MessageStatus"] = "failed"  # changed after signing
        response = Client().post(path, data=form, HTTP_X_TWILIO_SIGNATURE=signature)
    assert response.status_code == 403
    assert not MessageEvent.objects.exists()
    sent_sms.refresh_from_db()
    assert sent_sms.status == "sent"


def test_twilio_callback_signed_for_the_public_url(sent_sms, twilio, settings):
    settings.PUBLIC_URL = "https://clarion.example.com"
    path = reverse("delivery-webhook-twilio-status", kwargs={"key": twilio.webhook_key})
    form = {"AccountSid": "AC123", "MessageSid": "SM0001", "MessageStatus": "delivered"}
    signature = RequestValidator("tw-token").compute_signature(f"https://clarion.example.com{path}", form)
    assert Client().post(path, data=form, HTTP_X_TWILIO_SIGNATURE=signature).status_code == 204
    sent_sms.refresh_from_db()
    assert sent_sms.status == "delivered"


def test_twilio_status_lifecycle_with_duplicates_and_late_callbacks(sent_sms, twilio):
    for status in ["sent", "delivered", "delivered", "sent", "queued"]:
        assert post_twilio(twilio, {"MessageSid": "SM0001", "MessageStatus": status}).status_code == 204
    sent_sms.refresh_from_db()
    assert sent_sms.status == "delivered"
    rows = list(MessageEvent.objects.order_by("id").values_list("event_type", "applied"))
    # The second "delivered" and the second "sent" are duplicates: stored once each.
    assert rows == [("sent", False), ("delivered", True), ("queued", False)]
    assert MessageEvent.objects.get(event_type="delivered").payload["MessageSid"] == "SM0001"


def test_twilio_undelivered_invalid_number_marks_number_inactive(sent_sms, twilio):
    response = post_twilio(twilio, {"MessageSid": "SM0001", "MessageStatus": "undelivered", "ErrorCode": "30006"})
    assert response.status_code == 204
    sent_sms.refresh_from_db()
    assert sent_sms.status == "failed" and "30006" in sent_sms.error
    assert Suppression.objects.get().address == "+15557654321"
    assert "sms" not in reachable_channels(subscribers=[sent_sms.subscriber])[sent_sms.subscriber_id]


def test_twilio_failure_after_delivery_is_ignored(sent_sms, twilio):
    post_twilio(twilio, {"MessageSid": "SM0001", "MessageStatus": "delivered"})
    post_twilio(twilio, {"MessageSid": "SM0001", "MessageStatus": "failed", "ErrorCode": "30008"})
    sent_sms.refresh_from_db()
    assert sent_sms.status == "delivered"


def test_twilio_callback_for_another_account_is_rejected(sent_sms, twilio):
    response = post_twilio(twilio, {"MessageSid": "SM0001", "MessageStatus": "delivered", "AccountSid": "ACother"})
    assert response.status_code == 403


def test_twilio_callback_without_a_status_is_400(sent_sms, twilio):
    response = post_twilio(twilio, {"MessageSid": "SM0001"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


def test_malformed_payload_is_400(postmark):
    response = Client().post(
        reverse("delivery-webhook-email-tracking", kwargs={"key": postmark.webhook_key}),
        data="not json",
        content_type="application/json",
        HTTP_AUTHORIZATION=basic_auth("hook:s3cret"),
    )
    assert response.status_code == 400
    assert not MessageEvent.objects.exists()


# --- Amazon SES (SNS) ---------------------------------------------------------------------------


def sns_post(integration: Any, ses_event: dict[str, Any], *, sns_id: str, auth: str | None) -> Any:
    body = {
        "Type": "Notification",
        "MessageId": sns_id,
        "TopicArn": "arn:aws:sns:eu-west-1:123456789012:ses-events",
        "Message": json.dumps(ses_event),
        "Timestamp": "2026-11-24T10:00:00.000Z",
    }
    headers = {"HTTP_X_AMZ_SNS_MESSAGE_TYPE": "Notification", "HTTP_X_AMZ_SNS_MESSAGE_ID": sns_id}
    if auth:
        headers["HTTP_AUTHORIZATION"] = basic_auth(auth)
    return Client().post(
        reverse("delivery-webhook-email-tracking", kwargs={"key": integration.webhook_key}),
        data=json.dumps(body),
        content_type="text/plain; charset=UTF-8",
        **headers,
    )


def ses_bounce(bounce_type: str) -> dict[str, Any]:
    return {
        "eventType": "Bounce",
        "mail": {"messageId": "ses-0001", "destination": ["ada@example.com"], "timestamp": "2026-11-24T09:59:00Z"},
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": "ada@example.com", "diagnosticCode": "smtp; 550 5.1.1 unknown"}],
            "timestamp": "2026-11-24T10:00:00Z",
        },
    }


@pytest.mark.parametrize(("bounce_type", "suppressed"), [("Permanent", True), ("Transient", False)])
def test_amazon_ses_sns_bounce(tenant, bounce_type, suppressed):
    integration = IntegrationFactory(
        environment=tenant.environment,
        provider="ses",
        credentials={
            "access_key_id": "AKIA",
            "secret_access_key": "s",
            "region": "eu-west-1",
            "webhook_secret": "sns:pw",
        },
    )
    message = Message.objects.create(
        environment=tenant.environment, step_id="m", channel="email", recipient="ada@example.com", status="sent",
        provider="ses", provider_message_id="ses-0001",
    )  # fmt: skip

    challenge = sns_post(integration, ses_bounce(bounce_type), sns_id="sns-1", auth=None)
    assert challenge.status_code == 401 and challenge["WWW-Authenticate"].startswith("Basic")
    assert sns_post(integration, ses_bounce(bounce_type), sns_id="sns-1", auth="sns:pw").status_code == 200

    message.refresh_from_db()
    assert message.status == "bounced"
    assert "550 5.1.1" in message.error
    assert Suppression.objects.filter(address="ada@example.com").exists() is suppressed
