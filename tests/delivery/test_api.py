"""/api/v1/integrations: credentials go in and never come out; scoped to the caller's environment."""

from __future__ import annotations

from typing import Any

import pytest

from apps.delivery.models import Integration
from tests.assertions import assert_error
from tests.factories import IntegrationFactory

pytestmark = pytest.mark.django_db

SECRET = "SG.very-secret-api-key-1234"


def create(api: Any, **body: Any) -> Any:
    payload = {
        "channel": "email",
        "provider": "sendgrid",
        "name": "Primary",
        "credentials": {"api_key": SECRET, "webhook_secret": "hook:pw"},
        "settings": {"from_email": "Acme <hi@acme.test>"},
        **body,
    }
    return api.post("/api/v1/integrations", payload, format="json")


def test_create_never_returns_credentials(api, tenant, settings):
    settings.PUBLIC_URL = "https://clarion.example.com"
    response = create(api, priority=1, rate_limit=5, retries=1)
    assert response.status_code == 201, response.content
    body = response.json()
    assert SECRET not in response.content.decode() and "hook:pw" not in response.content.decode()
    assert "credentials" not in body
    assert body["credentials_set"] == ["api_key", "webhook_secret"]
    assert body["priority"] == 1 and body["rate_limit"] == 5 and body["retries"] == 1 and body["active"] is True
    integration = Integration.objects.get(pk=body["id"])
    assert integration.environment == tenant.environment and integration.credentials["api_key"] == SECRET
    assert body["webhook_urls"] == {
        "tracking": f"https://clarion.example.com/api/v1/webhooks/email/{integration.webhook_key}/tracking"
    }

    listed = api.get("/api/v1/integrations").json()["data"]
    assert [i["id"] for i in listed] == [body["id"]] and SECRET not in str(listed)
    assert SECRET not in api.get(f"/api/v1/integrations/{body['id']}").content.decode()


def test_twilio_integration_lists_its_status_callback_url(api):
    response = create(
        api, channel="sms", provider="twilio", credentials={"account_sid": "AC1", "auth_token": "t"}, settings={}
    )
    assert response.status_code == 201
    assert set(response.json()["webhook_urls"]) == {"status_callback"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"provider": "carrier-pigeon"}, "provider"),
        ({"channel": "sms", "provider": "sendgrid"}, "provider"),
        ({"credentials": {}}, "credentials"),
        ({"channel": "in_app"}, "channel"),
        ({"rate_limit": 0}, "rate_limit"),
        ({"retries": 99}, "retries"),
    ],
)
def test_create_validates(api, body, field):
    error = assert_error(create(api, **body), 400, "validation_error")
    assert field in error["details"]


def test_update_merges_credentials_and_closes_circuit(api, tenant):
    integration = IntegrationFactory(
        environment=tenant.environment,
        provider="sendgrid",
        credentials={"api_key": SECRET, "webhook_secret": "a:b"},
        circuit_failures=7,
    )
    response = api.patch(
        f"/api/v1/integrations/{integration.pk}",
        {"credentials": {"api_key": "SG.new", "webhook_secret": None}, "priority": 5, "active": False},
        format="json",
    )
    assert response.status_code == 200, response.content
    integration.refresh_from_db()
    assert integration.credentials == {"api_key": "SG.new"}
    assert integration.priority == 5 and integration.active is False and integration.circuit_failures == 0
    assert response.json()["credentials_set"] == ["api_key"]


def test_update_cannot_drop_a_required_credential(api, tenant):
    integration = IntegrationFactory(environment=tenant.environment, provider="sendgrid", credentials={"api_key": "k"})
    response = api.patch(f"/api/v1/integrations/{integration.pk}", {"credentials": {"api_key": None}}, format="json")
    assert_error(response, 400, "validation_error")


def test_other_environments_integrations_are_invisible(api, other_tenant):
    foreign = IntegrationFactory(
        environment=other_tenant.environment, provider="sendgrid", credentials={"api_key": "k"}
    )
    assert api.get("/api/v1/integrations").json()["data"] == []
    assert_error(api.get(f"/api/v1/integrations/{foreign.pk}"), 404, "not_found")
    assert_error(api.patch(f"/api/v1/integrations/{foreign.pk}", {"priority": 1}, format="json"), 404, "not_found")
    assert_error(api.delete(f"/api/v1/integrations/{foreign.pk}"), 404, "not_found")
    assert Integration.objects.filter(pk=foreign.pk).exists()


def test_delete_and_channel_filter(api, tenant):
    email = IntegrationFactory(environment=tenant.environment, provider="smtp", credentials={"host": "h"})
    sms = IntegrationFactory(environment=tenant.environment, channel="sms", provider="http", credentials={"url": "u"})
    assert [i["id"] for i in api.get("/api/v1/integrations?channel=sms").json()["data"]] == [sms.pk]
    assert api.delete(f"/api/v1/integrations/{email.pk}").status_code == 204
    assert list(Integration.objects.values_list("pk", flat=True)) == [sms.pk]


def test_requires_secret_key(anon_api):
    assert anon_api.get("/api/v1/integrations").status_code in (401, 403)


def test_list_query_count_is_flat(api, tenant, django_assert_num_queries):
    for n in range(5):
        IntegrationFactory(environment=tenant.environment, provider="smtp", credentials={"host": f"h{n}"})
    with django_assert_num_queries(2):  # API key + page
        api.get("/api/v1/integrations")


# --- /api/v1/messages ---------------------------------------------------------------------------


def test_messages_list_filters_and_detail_with_attempts_and_events(api, tenant, other_tenant):
    from apps.delivery.models import DeliveryAttempt, Message, MessageEvent
    from tests.factories import SubscriberFactory

    env = tenant.environment
    ada = SubscriberFactory(environment=env, subscriber_id="ada")
    sms = Message.objects.create(
        environment=env, step_id="text", channel="sms", subscriber=ada, recipient="+1555", status="delivered",
        provider="twilio", data={"workflow": "login", "transaction_id": "tx-9"},
    )  # fmt: skip
    Message.objects.create(environment=env, step_id="mail", channel="email", recipient="a@x.test", status="failed")
    Message.objects.create(environment=other_tenant.environment, step_id="x", channel="sms", recipient="+1")
    DeliveryAttempt.objects.create(message=sms, provider="twilio", status="failed", response_code=503, retryable=True)
    DeliveryAttempt.objects.create(message=sms, provider="twilio", status="success", response_code=201)
    MessageEvent.objects.create(
        environment=env, message=sms, provider="twilio", event_type="delivered", status="delivered",
        dedupe_key="SM1:delivered", payload={"MessageStatus": "delivered"}, applied=True,
    )  # fmt: skip

    listed = api.get("/api/v1/messages").json()["data"]
    assert [m["channel"] for m in listed] == ["email", "sms"]  # newest first, own environment only
    for query in ("status=delivered", "channel=sms", "subscriber_id=ada", "transaction_id=tx-9", "workflow=login",
                  "provider=twilio"):  # fmt: skip
        assert [m["id"] for m in api.get(f"/api/v1/messages?{query}").json()["data"]] == [sms.pk], query
    assert listed[1]["subscriber_id"] == "ada" and listed[1]["workflow"] == "login"

    detail = api.get(f"/api/v1/messages/{sms.pk}").json()
    assert [(a["status"], a["response_code"]) for a in detail["attempts_log"]] == [("failed", 503), ("success", 201)]
    assert detail["events"][0]["payload"] == {"MessageStatus": "delivered"}
    foreign = Message.objects.get(environment=other_tenant.environment)
    assert_error(api.get(f"/api/v1/messages/{foreign.pk}"), 404, "not_found")


def test_messages_list_query_count_is_flat(api, tenant, django_assert_num_queries):
    from apps.delivery.models import Message
    from tests.factories import SubscriberFactory

    for n in range(5):
        subscriber = SubscriberFactory(environment=tenant.environment)
        Message.objects.create(environment=tenant.environment, step_id="s", channel="sms", subscriber=subscriber,
                               recipient=f"+1{n}")  # fmt: skip
    with django_assert_num_queries(2):  # API key + page (subscribers joined)
        api.get("/api/v1/messages")
