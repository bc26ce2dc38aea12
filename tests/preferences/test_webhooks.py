"""Twilio inbound messages: STOP / START keywords, verified by X-Twilio-Signature."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from twilio.request_validator import RequestValidator

from apps.preferences.models import PreferenceChange
from apps.preferences.selectors import resolve_preferences, subscriber_preferences
from tests.factories import CategoryFactory, IntegrationFactory, SubscriberFactory

pytestmark = pytest.mark.django_db

TOKEN = "tw-inbound-token"


@pytest.fixture
def twilio(tenant: Any) -> Any:
    return IntegrationFactory(
        environment=tenant.environment,
        channel="sms",
        provider="twilio",
        credentials={"account_sid": "AC123", "auth_token": TOKEN},
    )


def inbound(
    twilio: Any,
    body: str,
    sender: str = "+15551234567",
    *,
    token: str = TOKEN,
    tamper: bool = False,
    extra: dict[str, str] | None = None,
) -> Any:
    path = reverse("delivery-webhook-twilio-inbound", kwargs={"key": twilio.webhook_key})
    form = {"AccountSid": "AC123", "MessageSid": "SM1", "From": sender, "To": "+15550000000", "Body": body}
    form.update(extra or {})
    signature = RequestValidator(token).compute_signature(f"http://testserver{path}", form)
    if tamper:
        form["From"] = "+15559999999"
    return Client().post(path, data=form, HTTP_X_TWILIO_SIGNATURE=signature)


def sms_allowed(subscriber: Any) -> bool:
    return resolve_preferences(
        environment=subscriber.environment_id, subscriber_ids=[subscriber.pk], category=None, channels=["sms"]
    )[subscriber.pk]["sms"].allowed


@pytest.mark.parametrize("keyword", ["STOP", "stop", " Stop ", "STOPALL", "UNSUBSCRIBE", "cancel", "END", "quit."])
def test_stop_keywords_turn_sms_off(tenant: Any, twilio: Any, keyword: str) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment, phone="+1 (555) 123-4567")
    response = inbound(twilio, keyword)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/xml")
    assert b"<Response></Response>" in response.content  # Twilio's own opt-out handling replies
    assert sms_allowed(subscriber) is False
    change = PreferenceChange.objects.get(subscriber=subscriber)
    assert change.source == "sms"
    assert change.changes == [{"kind": "channel", "category": None, "channel": "sms", "from": True, "to": False}]


def test_start_turns_sms_back_on_and_other_texts_change_nothing(tenant: Any, twilio: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment, phone="+15551234567")
    CategoryFactory(environment=tenant.environment, key="billing")
    assert inbound(twilio, "STOP").status_code == 200
    assert inbound(twilio, "STOP").status_code == 200  # idempotent: recorded once
    assert inbound(twilio, "Please stop texting me at night").status_code == 200  # not a keyword
    assert sms_allowed(subscriber) is False
    assert inbound(twilio, "start").status_code == 200
    assert sms_allowed(subscriber) is True
    assert inbound(twilio, "UNSTOP").status_code == 200
    assert list(PreferenceChange.objects.filter(subscriber=subscriber).values_list("source", flat=True)) == [
        "sms",
        "sms",
    ]
    assert subscriber_preferences(subscriber=subscriber)["channels"]["sms"] is True


def test_only_that_number_in_that_environment(tenant: Any, other_tenant: Any, twilio: Any) -> None:
    mine = SubscriberFactory(environment=tenant.environment, phone="+15551234567")
    same_number_elsewhere = SubscriberFactory(environment=other_tenant.environment, phone="+15551234567")
    other_number = SubscriberFactory(environment=tenant.environment, phone="+15557654567")
    assert inbound(twilio, "STOP").status_code == 200
    assert sms_allowed(mine) is False
    assert sms_allowed(same_number_elsewhere) is True
    assert sms_allowed(other_number) is True
    assert inbound(twilio, "STOP", sender="+15550000001").status_code == 200  # nobody: nothing happens


@pytest.mark.parametrize("case", ["missing", "wrong_token", "tampered"])
def test_bad_signature_changes_nothing(tenant: Any, twilio: Any, case: str) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment, phone="+15559999999")
    if case == "missing":
        path = reverse("delivery-webhook-twilio-inbound", kwargs={"key": twilio.webhook_key})
        response = Client().post(path, data={"From": "+15559999999", "Body": "STOP"})
    elif case == "wrong_token":
        response = inbound(twilio, "STOP", sender="+15559999999", token="not-the-token")
    else:
        response = inbound(twilio, "STOP", tamper=True)  # From changed to +15559999999 after signing
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "invalid_signature"
    assert sms_allowed(subscriber) is True
    assert not PreferenceChange.objects.exists()


def test_unknown_webhook_key_and_get(twilio: Any) -> None:
    assert Client().post("/api/v1/webhooks/twilio/nope/inbound", {"Body": "STOP"}).status_code == 404
    path = reverse("delivery-webhook-twilio-inbound", kwargs={"key": twilio.webhook_key})
    assert Client().get(path).status_code == 405


def test_advanced_opt_out_type_decides_custom_keywords(tenant: Any, twilio: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment, phone="+15551234567")
    assert inbound(twilio, "ARRET", extra={"OptOutType": "STOP"}).status_code == 200
    assert sms_allowed(subscriber) is False
    assert inbound(twilio, "HELP", extra={"OptOutType": "HELP"}).status_code == 200  # help changes nothing
    assert sms_allowed(subscriber) is False
    assert inbound(twilio, "REPRENDRE", extra={"OptOutType": "START"}).status_code == 200
    assert sms_allowed(subscriber) is True
