from __future__ import annotations

from typing import Any

import pytest

from apps.core.errors import ApiError, Unprocessable
from apps.preferences.models import Category, Preference
from apps.preferences.services import category_upsert, preferences_update
from tests.assertions import assert_error
from tests.factories import CategoryFactory, SubscriberFactory
from tests.preferences.factories import PreferenceFactory

pytestmark = pytest.mark.django_db

CATEGORIES = "/api/v1/categories"


def prefs_url(subscriber_id: str) -> str:
    return f"/api/v1/subscribers/{subscriber_id}/preferences"


# --- categories ----------------------------------------------------------------------------


def test_category_crud(api: Any, tenant: Any) -> None:
    body = {"name": "Billing", "critical": True, "default_channels": {"sms": False}, "order": 3}
    response = api.put(f"{CATEGORIES}/billing", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json() == {
        "key": "billing",
        "name": "Billing",
        "description": "",
        "critical": True,
        "default_channels": {"sms": False},
        "order": 3,
        "digest_schedule": "daily 09:00",
        "digest_templates": {},
        "in_doubt_policy": "auto",
        "created_at": response.json()["created_at"],
    }
    # PUT replaces: fields left out go back to their defaults.
    response = api.put(f"{CATEGORIES}/billing", {"name": "Invoices"}, format="json")
    assert response.status_code == 200
    assert response.json()["critical"] is False
    assert response.json()["default_channels"] == {}
    assert api.get(f"{CATEGORIES}/billing").json()["name"] == "Invoices"
    assert api.delete(f"{CATEGORIES}/billing").status_code == 204
    assert_error(api.get(f"{CATEGORIES}/billing"), 404, "not_found")
    assert not Category.objects.exists()


@pytest.mark.parametrize(
    ("key", "body", "field"),
    [
        ("billing", {}, "name"),
        ("billing", {"name": "B", "default_channels": {"fax": True}}, "default_channels"),
        ("billing", {"name": "B", "default_channels": {"email": "yes"}}, "default_channels"),
        ("billing", {"name": "B", "order": -1}, "order"),
        ("not a slug", {"name": "B"}, "key"),
        ("a.b", {"name": "B"}, "key"),
    ],
)
def test_category_validation(api: Any, key: str, body: dict[str, Any], field: str) -> None:
    error = assert_error(api.put(f"{CATEGORIES}/{key}", body, format="json"), 400, "validation_error")
    assert field in error["details"]
    assert not Category.objects.exists()


def test_category_list_is_paginated_with_constant_queries(
    api: Any, tenant: Any, other_tenant: Any, django_assert_num_queries: Any
) -> None:
    for i in range(5):
        CategoryFactory(environment=tenant.environment, key=f"c{i}")
    CategoryFactory(environment=other_tenant.environment, key="theirs")
    with django_assert_num_queries(2):  # API key + page
        first = api.get(CATEGORIES, {"limit": 3}).json()
    assert [c["key"] for c in first["data"]] == ["c0", "c1", "c2"]
    second = api.get(CATEGORIES, {"limit": 3, "cursor": first["next_cursor"]}).json()
    assert [c["key"] for c in second["data"]] == ["c3", "c4"]
    CategoryFactory.create_batch(20, environment=tenant.environment)
    with django_assert_num_queries(2):
        assert len(api.get(CATEGORIES).json()["data"]) == 25


def test_other_environment_cannot_touch_a_category(tenant: Any, other_tenant: Any) -> None:
    category = CategoryFactory(environment=tenant.environment, key="billing", name="Mine")
    theirs = other_tenant.client
    assert_error(theirs.get(f"{CATEGORIES}/billing"), 404, "not_found")
    assert_error(theirs.delete(f"{CATEGORIES}/billing"), 404, "not_found")
    assert theirs.get(CATEGORIES).json()["data"] == []
    assert theirs.put(f"{CATEGORIES}/billing", {"name": "Theirs"}, format="json").status_code == 201
    category.refresh_from_db()
    assert category.name == "Mine"


def test_category_digest_settings(api: Any, tenant: Any) -> None:
    body = {"name": "Social", "digest_schedule": "weekdays 18:00", "digest_templates": {"email": "social-digest"}}
    response = api.put(f"{CATEGORIES}/social", body, format="json")
    assert response.status_code == 201, response.content
    assert (response.json()["digest_schedule"], response.json()["digest_templates"]) == (
        "weekdays 18:00",
        {"email": "social-digest"},
    )
    error = assert_error(
        api.put(f"{CATEGORIES}/social", {"name": "S", "digest_schedule": "sometimes"}, format="json"),
        422,
        "invalid_category",
    )
    assert "digest_schedule" in error["details"]
    error = assert_error(
        api.put(f"{CATEGORIES}/social", {"name": "S", "digest_templates": {"fax": "x"}}, format="json"),
        422,
        "invalid_category",
    )
    assert "digest_templates" in error["details"]
    assert Category.objects.get(key="social").digest_schedule == "weekdays 18:00"  # unchanged by the failures


# --- subscriber preferences ----------------------------------------------------------------


def test_get_preferences(api: Any, tenant: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment, subscriber_id="u1")
    CategoryFactory(environment=tenant.environment, key="billing", name="Billing", default_channels={"sms": False})
    PreferenceFactory(subscriber=subscriber, channel="chat", enabled=False)
    response = api.get(prefs_url("u1"))
    assert response.status_code == 200
    body = response.json()
    assert body["channels"] == {"in_app": True, "email": True, "sms": True, "push": True, "chat": False}
    assert body["categories"] == [
        {
            "key": "billing",
            "name": "Billing",
            "description": "",
            "critical": False,
            "channels": {"in_app": True, "email": True, "sms": False, "push": True, "chat": False},
            "frequency": "instant",
        }
    ]
    assert body["unsubscribed"] is False


def test_patch_preferences_returns_the_new_state(api: Any, tenant: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment, subscriber_id="user@example.com")
    CategoryFactory(environment=tenant.environment, key="billing")
    CategoryFactory(environment=tenant.environment, key="comments")
    response = api.patch(
        prefs_url("user@example.com"),
        {"channels": {"sms": False}, "categories": {"billing": {"email": False}, "comments": {"push": False}}},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["channels"]["sms"] is False
    by_key = {c["key"]: c["channels"] for c in body["categories"]}
    assert by_key["billing"]["email"] is False
    assert by_key["billing"]["sms"] is False  # the global switch wins
    assert by_key["comments"]["push"] is False
    assert by_key["comments"]["email"] is True
    assert Preference.objects.filter(subscriber=subscriber).count() == 3

    # Turning back on updates rows; it does not add new ones.
    body = api.patch(prefs_url("user@example.com"), {"channels": {"sms": True}}, format="json").json()
    assert body["channels"]["sms"] is True
    assert Preference.objects.filter(subscriber=subscriber).count() == 3
    assert Preference.objects.get(subscriber=subscriber, category__isnull=True, channel="sms").enabled is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"channels": {"fax": False}}, "channels"),
        ({"channels": {"email": "off"}}, "channels"),
        ({"categories": {"billing": {"pigeon": False}}}, "categories"),
        ({"categories": ["billing"]}, "categories"),
        ({}, "non_field_errors"),
    ],
)
def test_patch_validation_errors(api: Any, tenant: Any, body: dict[str, Any], field: str) -> None:
    SubscriberFactory(environment=tenant.environment, subscriber_id="u1")
    CategoryFactory(environment=tenant.environment, key="billing")
    error = assert_error(api.patch(prefs_url("u1"), body, format="json"), 400, "validation_error")
    assert field in error["details"]
    assert not Preference.objects.exists()


def test_patch_unknown_category_is_422(api: Any, tenant: Any) -> None:
    SubscriberFactory(environment=tenant.environment, subscriber_id="u1")
    error = assert_error(
        api.patch(prefs_url("u1"), {"categories": {"nope": {"email": False}}}, format="json"), 422, "unknown_category"
    )
    assert "nope" in error["message"]
    assert error["details"] == {"categories": ["nope"]}


def test_patch_cannot_turn_off_a_critical_category(api: Any, tenant: Any) -> None:
    SubscriberFactory(environment=tenant.environment, subscriber_id="u1")
    CategoryFactory(environment=tenant.environment, key="security", critical=True)
    error = assert_error(
        api.patch(
            prefs_url("u1"),
            {"channels": {"sms": False}, "categories": {"security": {"email": False}}},
            format="json",
        ),
        422,
        "critical_category",
    )
    assert error["details"] == {"category": "security", "channels": ["email"]}
    assert not Preference.objects.exists()  # nothing half-written
    # Turning it on is harmless.
    assert api.patch(prefs_url("u1"), {"categories": {"security": {"email": True}}}, format="json").status_code == 200


def test_preferences_of_unknown_subscriber_404(api: Any) -> None:
    assert_error(api.get(prefs_url("ghost")), 404, "not_found")
    assert_error(api.patch(prefs_url("ghost"), {"channels": {"email": False}}, format="json"), 404, "not_found")


def test_preference_routes_are_not_swallowed_by_subscriber_routes(api: Any, tenant: Any) -> None:
    SubscriberFactory(environment=tenant.environment, subscriber_id="u1")
    assert "channels" in api.get(prefs_url("u1")).json()
    assert api.get("/api/v1/subscribers/u1").json()["subscriber_id"] == "u1"


def test_get_preferences_query_count(api: Any, tenant: Any, django_assert_num_queries: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment, subscriber_id="u1")
    for i in range(10):
        category = CategoryFactory(environment=tenant.environment, key=f"c{i}")
        PreferenceFactory(subscriber=subscriber, category=category, channel="email", enabled=False)
    with django_assert_num_queries(5):  # API key, subscriber, preferences, frequencies, categories
        assert len(api.get(prefs_url("u1")).json()["categories"]) == 10


def test_other_environment_cannot_read_or_change_preferences(tenant: Any, other_tenant: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment, subscriber_id="u1")
    CategoryFactory(environment=tenant.environment, key="billing")
    theirs = other_tenant.client
    assert_error(theirs.get(prefs_url("u1")), 404, "not_found")
    assert_error(theirs.patch(prefs_url("u1"), {"channels": {"email": False}}, format="json"), 404, "not_found")
    # Their own subscriber cannot reference our category either.
    SubscriberFactory(environment=other_tenant.environment, subscriber_id="u1")
    assert_error(
        theirs.patch(prefs_url("u1"), {"categories": {"billing": {"email": False}}}, format="json"),
        422,
        "unknown_category",
    )
    assert not Preference.objects.filter(subscriber=subscriber).exists()
    assert not Preference.objects.exists()


# --- services directly ---------------------------------------------------------------------


def test_preferences_update_writes_environment_and_is_idempotent(tenant: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment)
    category = CategoryFactory(environment=tenant.environment, key="billing")
    for _ in range(2):
        preferences_update(subscriber=subscriber, channels={"email": False}, categories={"billing": {"sms": False}})
    rows = list(Preference.objects.filter(subscriber=subscriber).order_by("channel"))
    expected = [(None, "email", False), (category.pk, "sms", False)]
    assert [(r.category_id, r.channel, r.enabled) for r in rows] == expected
    assert all(r.environment_id == tenant.environment.pk for r in rows)


def test_preferences_update_rejects_unknown_channel(tenant: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment)
    with pytest.raises(ApiError) as info:
        preferences_update(subscriber=subscriber, channels={"fax": False}, categories=None)
    assert (info.value.status_code, info.value.error_code) == (400, "unknown_channel")


def test_preferences_update_critical_is_422(tenant: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment)
    CategoryFactory(environment=tenant.environment, key="security", critical=True)
    with pytest.raises(Unprocessable) as info:
        preferences_update(subscriber=subscriber, channels=None, categories={"security": {"email": False}})
    assert info.value.error_code == "critical_category"


def test_category_upsert_validates_default_channels(tenant: Any) -> None:
    with pytest.raises(ApiError):
        category_upsert(environment=tenant.environment, key="k", name="K", default_channels={"fax": True})
    category, created = category_upsert(environment=tenant.environment, key="k", name="K", critical=True)
    assert created and category.critical
    category, created = category_upsert(environment=tenant.environment, key="k", name="K2")
    assert not created and not category.critical and category.name == "K2"
