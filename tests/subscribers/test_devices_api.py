"""/api/v1/subscribers/{id}/devices: push tokens and chat webhooks."""

from __future__ import annotations

from typing import Any

import pytest

from apps.subscribers.models import Device
from tests.assertions import assert_error
from tests.factories import SubscriberFactory

pytestmark = pytest.mark.django_db

WEBPUSH = {
    "provider": "webpush",
    "token": "https://updates.push.services.mozilla.com/wpush/v2/gAAAA",
    "keys": {
        "p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM",
        "auth": "tBHItJI5svbpez7KI4CCXg",
    },
}


@pytest.fixture
def subscriber(tenant: Any) -> Any:
    return SubscriberFactory(environment=tenant.environment, subscriber_id="ada@example.com")


def url(subscriber_id: str = "ada@example.com") -> str:
    return f"/api/v1/subscribers/{subscriber_id}/devices"


def test_register_list_and_delete(api, subscriber):
    created = api.post(url(), {"provider": "fcm", "token": "fcm-token-1", "name": "Pixel"}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["provider"] == "fcm" and body["channel"] == "push" and body["token"] == "fcm-token-1"
    assert body["name"] == "Pixel"

    web = api.post(url(), WEBPUSH, format="json")
    assert web.status_code == 201
    assert "keys" not in web.json()
    assert Device.objects.get(provider="webpush").keys == WEBPUSH["keys"]

    listed = api.get(url()).json()["data"]
    assert [d["provider"] for d in listed] == ["fcm", "webpush"]

    assert api.delete(f"{url()}/{body['id']}").status_code == 204
    assert list(Device.objects.values_list("provider", flat=True)) == ["webpush"]


def test_registering_again_is_idempotent_and_moves_the_token(api, tenant, subscriber):
    first = api.post(url(), {"provider": "fcm", "token": "shared-device"}, format="json")
    again = api.post(url(), {"provider": "fcm", "token": "shared-device", "name": "renamed"}, format="json")
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.json()["name"] == "renamed"

    SubscriberFactory(environment=tenant.environment, subscriber_id="bob")
    moved = api.post(url("bob"), {"provider": "fcm", "token": "shared-device"}, format="json")
    assert moved.status_code == 200
    assert Device.objects.get().subscriber.subscriber_id == "bob"


def test_chat_webhook_device(api, subscriber):
    response = api.post(url(), {"provider": "slack", "token": "https://hooks.slack.com/services/T/B/X"}, format="json")
    assert response.status_code == 201 and response.json()["channel"] == "chat"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"provider": "apns", "token": "x"}, "provider"),
        ({"provider": "fcm"}, "token"),
        ({"provider": "webpush", "token": "https://push.example/1"}, "keys"),
        ({"provider": "webpush", "token": "not a url", "keys": WEBPUSH["keys"]}, "token"),
        ({"provider": "discord", "token": "nope"}, "token"),
        ({"provider": "slack", "token": "http://hooks.slack.com/services/T/B/X"}, "token"),
    ],
)
def test_validation(api, subscriber, body, field):
    error = assert_error(api.post(url(), body, format="json"), 400, "validation_error")
    assert field in error["details"]


def test_unknown_subscriber_and_other_environment(api, other_tenant):
    assert_error(api.post(url("ghost"), {"provider": "fcm", "token": "t"}, format="json"), 404, "not_found")
    foreign = SubscriberFactory(environment=other_tenant.environment, subscriber_id="ada@example.com")
    device = Device.objects.create(environment=other_tenant.environment, subscriber=foreign, provider="fcm", token="t")
    assert_error(api.get(url()), 404, "not_found")  # same id, other environment: not ours
    assert_error(api.delete(f"{url()}/{device.pk}"), 404, "not_found")
    assert Device.objects.filter(pk=device.pk).exists()


def test_cannot_delete_another_subscribers_device(api, tenant, subscriber):
    other = SubscriberFactory(environment=tenant.environment, subscriber_id="bob")
    device = Device.objects.create(environment=tenant.environment, subscriber=other, provider="fcm", token="t")
    assert_error(api.delete(f"{url()}/{device.pk}"), 404, "not_found")
    assert Device.objects.filter(pk=device.pk).exists()


def test_deleting_the_subscriber_deletes_its_devices(api, subscriber):
    api.post(url(), {"provider": "fcm", "token": "t"}, format="json")
    assert api.delete("/api/v1/subscribers/ada@example.com").status_code == 204
    assert not Device.objects.exists()
