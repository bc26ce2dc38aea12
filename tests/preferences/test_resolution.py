"""resolve_preferences: the order of rules, and one query for any number of subscribers."""

from __future__ import annotations

from typing import Any

import pytest

from apps.preferences.selectors import resolve_preferences, subscriber_preferences
from tests.factories import CategoryFactory, SubscriberFactory
from tests.preferences.factories import PreferenceFactory

pytestmark = pytest.mark.django_db


def resolve(subscriber: Any, category: Any, channels: list[str]) -> dict[str, Any]:
    return resolve_preferences(
        environment=subscriber.environment, subscriber_ids=[subscriber.pk], category=category, channels=channels
    )[subscriber.pk]


def test_nothing_stored_means_on(tenant: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment)
    category = CategoryFactory(environment=tenant.environment)
    result = resolve(subscriber, category, ["email", "sms"])
    assert result["email"].allowed and result["sms"].allowed
    assert result["email"].reason == "category_default"
    no_category = resolve(subscriber, None, ["email"])["email"]
    assert (no_category.allowed, no_category.reason) == (True, "default")


def test_critical_category_bypasses_every_opt_out(tenant: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment)
    critical = CategoryFactory(environment=tenant.environment, critical=True, default_channels={"email": False})
    PreferenceFactory(subscriber=subscriber, channel="email", enabled=False)
    PreferenceFactory(subscriber=subscriber, category=critical, channel="email", enabled=False)
    result = resolve(subscriber, critical, ["email"])["email"]
    assert (result.allowed, result.reason) == (True, "critical")
    assert result.detail == {"channel": "email", "category": critical.key}


def test_global_channel_off_beats_category_on(tenant: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment)
    category = CategoryFactory(environment=tenant.environment)
    PreferenceFactory(subscriber=subscriber, channel="email", enabled=False)
    PreferenceFactory(subscriber=subscriber, category=category, channel="email", enabled=True)
    result = resolve(subscriber, category, ["email", "sms"])
    assert (result["email"].allowed, result["email"].reason) == (False, "subscriber_channel")
    assert result["sms"].allowed
    assert resolve(subscriber, None, ["email"])["email"].allowed is False


def test_global_channel_on_does_not_override_category_off(tenant: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment)
    category = CategoryFactory(environment=tenant.environment)
    PreferenceFactory(subscriber=subscriber, channel="email", enabled=True)
    PreferenceFactory(subscriber=subscriber, category=category, channel="email", enabled=False)
    result = resolve(subscriber, category, ["email"])["email"]
    assert (result.allowed, result.reason) == (False, "subscriber_category")


def test_subscriber_category_choice_beats_category_default(tenant: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment)
    category = CategoryFactory(environment=tenant.environment, default_channels={"email": False, "sms": True})
    PreferenceFactory(subscriber=subscriber, category=category, channel="email", enabled=True)
    PreferenceFactory(subscriber=subscriber, category=category, channel="sms", enabled=False)
    result = resolve(subscriber, category, ["email", "sms"])
    assert (result["email"].allowed, result["email"].reason) == (True, "subscriber_category")
    assert (result["sms"].allowed, result["sms"].reason) == (False, "subscriber_category")


def test_category_default_off(tenant: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment)
    category = CategoryFactory(environment=tenant.environment, default_channels={"sms": False})
    result = resolve(subscriber, category, ["sms", "email"])
    assert (result["sms"].allowed, result["sms"].reason) == (False, "category_default")
    assert (result["email"].allowed, result["email"].reason) == (True, "category_default")


def test_choices_for_another_category_do_not_apply(tenant: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment)
    billing = CategoryFactory(environment=tenant.environment, key="billing")
    comments = CategoryFactory(environment=tenant.environment, key="comments")
    PreferenceFactory(subscriber=subscriber, category=comments, channel="email", enabled=False)
    assert resolve(subscriber, billing, ["email"])["email"].allowed is True
    assert resolve(subscriber, comments, ["email"])["email"].allowed is False


def test_one_query_for_200_subscribers(tenant: Any, django_assert_num_queries: Any) -> None:
    env = tenant.environment
    category = CategoryFactory(environment=env, default_channels={"sms": False})
    subscribers = SubscriberFactory.create_batch(200, environment=env)
    for subscriber in subscribers[:50]:
        PreferenceFactory(subscriber=subscriber, channel="email", enabled=False)
    for subscriber in subscribers[50:100]:
        PreferenceFactory(subscriber=subscriber, category=category, channel="sms", enabled=True)

    with django_assert_num_queries(1):
        result = resolve_preferences(
            environment=env,
            subscriber_ids=[s.pk for s in subscribers],
            category=category,
            channels=["email", "sms", "in_app"],
        )
    assert len(result) == 200
    assert sum(not r["email"].allowed for r in result.values()) == 50
    assert sum(r["sms"].allowed for r in result.values()) == 50
    assert all(r["in_app"].allowed for r in result.values())


def test_critical_category_needs_no_query(tenant: Any, django_assert_num_queries: Any) -> None:
    critical = CategoryFactory(environment=tenant.environment, critical=True)
    subscribers = SubscriberFactory.create_batch(5, environment=tenant.environment)
    with django_assert_num_queries(0):
        result = resolve_preferences(
            environment=tenant.environment,
            subscriber_ids=[s.pk for s in subscribers],
            category=critical,
            channels=["email"],
        )
    assert all(r["email"].allowed for r in result.values())


def test_rows_of_another_environment_are_ignored(tenant: Any, other_tenant: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment)
    # A stray row written under the wrong environment must not influence resolution.
    PreferenceFactory(subscriber=subscriber, environment=other_tenant.environment, channel="email", enabled=False)
    assert resolve(subscriber, None, ["email"])["email"].allowed is True


def test_subscriber_preferences_shape(tenant: Any) -> None:
    subscriber = SubscriberFactory(environment=tenant.environment)
    CategoryFactory(environment=tenant.environment, key="b", order=2)
    billing = CategoryFactory(environment=tenant.environment, key="a", order=1, default_channels={"sms": False})
    PreferenceFactory(subscriber=subscriber, channel="push", enabled=False)
    PreferenceFactory(subscriber=subscriber, category=billing, channel="email", enabled=False)
    state = subscriber_preferences(subscriber=subscriber)
    assert state["channels"] == {"in_app": True, "email": True, "sms": True, "push": False, "chat": True}
    assert [c["key"] for c in state["categories"]] == ["a", "b"]
    assert state["categories"][0]["channels"] == {
        "in_app": True,
        "email": False,
        "sms": False,
        "push": False,
        "chat": True,
    }
