"""Server API additions: frequencies and "unsubscribed" in PATCH, bulk set, history, links, workflow defaults."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.preferences.models import CategoryFrequency, Preference, PreferenceChange
from apps.preferences.services import preferences_update
from apps.workflows.models import Workflow
from tests.assertions import assert_error
from tests.factories import CategoryFactory, SubscriberFactory

pytestmark = pytest.mark.django_db

BULK = "/api/v1/preferences/bulk"


def test_patch_frequencies_and_unsubscribed(api: Any, tenant: Any) -> None:
    SubscriberFactory(environment=tenant.environment, subscriber_id="u1")
    CategoryFactory(environment=tenant.environment, key="comments")
    CategoryFactory(environment=tenant.environment, key="security", critical=True)
    body = api.patch(
        "/api/v1/subscribers/u1/preferences",
        {"frequencies": {"comments": "weekly"}, "unsubscribed": True},
        format="json",
    ).json()
    assert body["unsubscribed"] is True
    by_key = {c["key"]: c for c in body["categories"]}
    assert by_key["comments"]["frequency"] == "weekly"
    assert not any(by_key["comments"]["channels"].values())
    assert all(by_key["security"]["channels"].values())
    body = api.patch("/api/v1/subscribers/u1/preferences", {"unsubscribed": False}, format="json").json()
    assert body["unsubscribed"] is False

    error = assert_error(
        api.patch("/api/v1/subscribers/u1/preferences", {"frequencies": {"security": "daily"}}, format="json"),
        422,
        "critical_category",
    )
    assert error["details"] == {"category": "security", "frequency": "daily"}
    error = assert_error(
        api.patch("/api/v1/subscribers/u1/preferences", {"frequencies": {"comments": "hourly"}}, format="json"),
        400,
        "validation_error",
    )
    assert "frequencies" in error["details"]


def test_history_records_source_and_what_changed(api: Any, tenant: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment, subscriber_id="u1")
    CategoryFactory(environment=tenant.environment, key="billing", default_channels={"sms": False})
    api.patch(
        "/api/v1/subscribers/u1/preferences",
        {"channels": {"push": False}, "categories": {"billing": {"sms": True, "email": True}}},
        format="json",
    )
    preferences_update(subscriber=subscriber, frequencies={"billing": "daily"}, source="inbox")
    api.put("/api/v1/subscribers/u1/quiet-hours", {"start": "22:00", "end": "06:30"}, format="json")
    api.delete("/api/v1/subscribers/u1/quiet-hours")
    response = api.get("/api/v1/subscribers/u1/preferences/history")
    assert response.status_code == 200
    rows = response.json()["data"]
    assert [r["source"] for r in rows] == ["api", "api", "inbox", "api"]  # newest first
    first = rows[-1]["changes"]
    # billing email was already on by default: stored, but not a change worth recording
    assert first == [
        {"kind": "channel", "category": None, "channel": "push", "from": True, "to": False},
        {"kind": "category", "category": "billing", "channel": "sms", "from": False, "to": True},
    ]
    assert rows[-2]["changes"] == [
        {"kind": "frequency", "category": "billing", "channel": None, "from": "instant", "to": "daily"}
    ]
    assert rows[1]["changes"][0]["to"]["start"] == "22:00"
    assert rows[0]["changes"][0]["to"] is None
    assert_error(api.get("/api/v1/subscribers/ghost/preferences/history"), 404, "not_found")


def test_other_environment_cannot_read_history(tenant: Any, other_tenant: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment, subscriber_id="u1")
    preferences_update(subscriber=subscriber, channels={"email": False})
    assert_error(other_tenant.client.get("/api/v1/subscribers/u1/preferences/history"), 404, "not_found")


def _bulk(api: Any, tenant: Any, count: int) -> tuple[Any, list[Any], int]:
    """Bulk-set ``count`` fresh subscribers (one with an existing row); returns (response, subscribers, queries)."""
    env = tenant.environment
    subscribers = SubscriberFactory.create_batch(count, environment=env)
    preferences_update(subscriber=subscribers[0], channels={"sms": False})  # an existing row gets updated
    items = [
        {
            "subscriber_id": s.subscriber_id,
            "channels": {"sms": True},
            "categories": {"comments": {"email": False}},
            "frequencies": {"billing": "weekly"},
        }
        for s in subscribers
    ]
    with CaptureQueriesContext(connection) as queries:
        response = api.post(BULK, {"items": items}, format="json")
    assert response.status_code == 200, response.content
    return response, subscribers, len(queries)


def test_bulk_sets_subscribers_in_a_fixed_number_of_queries(api: Any, tenant: Any) -> None:
    CategoryFactory(environment=tenant.environment, key="comments")
    CategoryFactory(environment=tenant.environment, key="billing")
    # API key, subscribers, categories, savepoint, locked rows (preferences, frequencies), updates,
    # inserts, history: the same for 40 subscribers as for 80 (small enough for one SQLite batch).
    _, _, small = _bulk(api, tenant, 40)
    _, _, large = _bulk(api, tenant, 80)
    assert small == large <= 14


def test_bulk_sets_1000_subscribers(api: Any, tenant: Any) -> None:
    CategoryFactory(environment=tenant.environment, key="comments")
    CategoryFactory(environment=tenant.environment, key="billing")
    response, subscribers, queries = _bulk(api, tenant, 1000)
    if connection.vendor == "postgresql":
        assert queries <= 14  # SQLite splits big statements into batches of 999 parameters
    data = response.json()["data"]
    assert len(data) == 1000
    assert data[0] == {"subscriber_id": subscribers[0].subscriber_id, "changes": 3}
    assert data[1]["changes"] == 2  # sms was already on
    assert Preference.objects.filter(category__key="comments", channel="email", enabled=False).count() == 1000
    assert Preference.objects.get(subscriber=subscribers[0], channel="sms").enabled is True
    assert CategoryFrequency.objects.filter(frequency="weekly").count() == 1000
    assert PreferenceChange.objects.filter(source="api").count() == 1001


def test_bulk_is_all_or_nothing(api: Any, tenant: Any, other_tenant: Any) -> None:
    env = tenant.environment
    CategoryFactory(environment=env, key="comments")
    SubscriberFactory(environment=env, subscriber_id="a")
    SubscriberFactory(environment=other_tenant.environment, subscriber_id="theirs")
    ok = {"subscriber_id": "a", "channels": {"email": False}}
    error = assert_error(
        api.post(BULK, {"items": [ok, {"subscriber_id": "theirs", "channels": {"email": False}}]}, format="json"),
        422,
        "unknown_subscriber",
    )
    assert error["details"] == {"subscriber_ids": ["theirs"]}
    assert_error(
        api.post(
            BULK, {"items": [ok, {"subscriber_id": "a", "categories": {"nope": {"email": False}}}]}, format="json"
        ),
        400,
        "duplicate_subscriber",
    )
    assert_error(
        api.post(
            BULK,
            {"items": [ok, {"subscriber_id": "b", "categories": {"nope": {"email": False}}}]},
            format="json",
        ),
        422,
        "unknown_subscriber",
    )
    SubscriberFactory(environment=env, subscriber_id="b")
    assert_error(
        api.post(
            BULK, {"items": [ok, {"subscriber_id": "b", "categories": {"nope": {"email": False}}}]}, format="json"
        ),
        422,
        "unknown_category",
    )
    assert_error(api.post(BULK, {"items": []}, format="json"), 400, "validation_error")
    too_many = [{"subscriber_id": f"s{i}", "unsubscribed": True} for i in range(1001)]
    assert_error(api.post(BULK, {"items": too_many}, format="json"), 400, "validation_error")
    assert_error(api.post(BULK, {"items": [{"subscriber_id": "a"}]}, format="json"), 400, "validation_error")
    assert not Preference.objects.exists()
    assert not PreferenceChange.objects.exists()


def test_preference_links(api: Any, tenant: Any, settings: Any) -> None:
    settings.PUBLIC_URL = "https://notify.example.com"
    SubscriberFactory(environment=tenant.environment, subscriber_id="u1")
    CategoryFactory(environment=tenant.environment, key="comments")
    CategoryFactory(environment=tenant.environment, key="security", critical=True)
    body = api.get("/api/v1/subscribers/u1/preference-links", {"category": "comments"}).json()
    assert body["preferences_url"].startswith("https://notify.example.com/preferences/")
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert body["headers"]["List-Unsubscribe"] == f"<{body['unsubscribe_url']}>"
    critical = api.get("/api/v1/subscribers/u1/preference-links", {"category": "security"}).json()
    assert critical["unsubscribe_url"] is None
    assert_error(api.get("/api/v1/subscribers/u1/preference-links", {"category": "nope"}), 404, "not_found")


def test_workflow_preferences_api(api: Any, tenant: Any, other_tenant: Any) -> None:
    Workflow.objects.create(environment=tenant.environment, key="otp", name="OTP")
    url = "/api/v1/workflows/otp/preferences"
    assert api.get(url).json() == {"default_channels": {}}
    response = api.put(url, {"default_channels": {"sms": True, "email": False}}, format="json")
    assert response.status_code == 200
    assert api.get(url).json() == {"default_channels": {"sms": True, "email": False}}
    assert_error(api.put(url, {"default_channels": {"fax": True}}, format="json"), 400, "validation_error")
    assert api.put(url, {"default_channels": {}}, format="json").json() == {"default_channels": {}}
    assert other_tenant.client.get(url).status_code == 404
