"""resolve_preferences: the order of rules, and one query for any number of subscribers."""

from __future__ import annotations

from typing import Any

import pytest

from apps.preferences.selectors import Resolution, resolve_preferences, subscriber_preferences
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


# --- unsubscribe from everything, workflow defaults, frequencies -------------------------------


def test_unsubscribed_stops_every_channel_but_not_critical(tenant: Any) -> None:
    from apps.preferences.services import preferences_update

    subscriber = SubscriberFactory(environment=tenant.environment)
    comments = CategoryFactory(environment=tenant.environment, key="comments")
    security = CategoryFactory(environment=tenant.environment, key="security", critical=True)
    # Even an explicit "on" for the category loses to "unsubscribed from everything".
    preferences_update(subscriber=subscriber, categories={"comments": {"email": True}}, unsubscribed=True)
    result = resolve(subscriber, comments, ["email", "sms", "in_app", "webhook"])
    assert {c: (r.allowed, r.reason) for c, r in result.items()} == {
        "email": (False, "unsubscribed"),
        "sms": (False, "unsubscribed"),
        "in_app": (False, "unsubscribed"),
        "webhook": (True, "category_default"),  # goes to the customer's system, not to the person
    }
    assert resolve(subscriber, None, ["push"])["push"].reason == "unsubscribed"
    assert resolve(subscriber, security, ["email"])["email"] == Resolution(
        True, "critical", {"channel": "email", "category": "security"}
    )
    preferences_update(subscriber=subscriber, unsubscribed=False)
    assert resolve(subscriber, comments, ["email"])["email"].reason == "subscriber_category"


def test_workflow_default_sits_between_subscriber_choice_and_category_default(
    tenant: Any, django_assert_num_queries: Any
) -> None:
    from apps.preferences.selectors import workflow_channel_defaults
    from apps.preferences.services import workflow_preference_set
    from apps.workflows.models import Workflow

    subscriber = SubscriberFactory(environment=tenant.environment)
    other = SubscriberFactory(environment=tenant.environment)
    category = CategoryFactory(environment=tenant.environment, default_channels={"sms": False})
    workflow = Workflow.objects.create(environment=tenant.environment, key="otp", name="OTP", category=category)
    workflow_preference_set(workflow=workflow, default_channels={"sms": True, "email": False})
    PreferenceFactory(subscriber=subscriber, category=category, channel="email", enabled=True)
    with django_assert_num_queries(2):  # the workflow's defaults + preferences
        defaults = workflow_channel_defaults(environment=tenant.environment, workflow=workflow)
        result = resolve_preferences(
            environment=tenant.environment,
            subscriber_ids=[subscriber.pk, other.pk],
            category=category,
            channels=["email", "sms", "push"],
            workflow_defaults=defaults,
        )
    assert (result[subscriber.pk]["email"].allowed, result[subscriber.pk]["email"].reason) == (
        True,
        "subscriber_category",
    )
    assert (result[other.pk]["email"].allowed, result[other.pk]["email"].reason) == (False, "workflow_default")
    assert (result[other.pk]["sms"].allowed, result[other.pk]["sms"].reason) == (True, "workflow_default")
    assert (result[other.pk]["push"].allowed, result[other.pk]["push"].reason) == (True, "category_default")
    # Without the workflow (or for another one) the category default applies again.
    assert resolve(other, category, ["sms"])["sms"].allowed is False
    # A global opt-out still beats the workflow's default.
    PreferenceFactory(subscriber=other, channel="sms", enabled=False)
    again = resolve_preferences(
        environment=tenant.environment,
        subscriber_ids=[other.pk],
        category=category,
        channels=["sms"],
        workflow_defaults=workflow_channel_defaults(environment=tenant.environment, workflow=workflow.pk),
    )
    assert again[other.pk]["sms"].reason == "subscriber_channel"


def test_full_resolution_order(tenant: Any) -> None:
    """Each rule, removed in turn, reveals the next one."""
    from apps.preferences.models import Preference
    from apps.preferences.selectors import workflow_channel_defaults
    from apps.preferences.services import preferences_update, workflow_preference_set
    from apps.workflows.models import Workflow

    subscriber = SubscriberFactory(environment=tenant.environment)
    category = CategoryFactory(environment=tenant.environment, key="news", default_channels={"email": False})
    workflow = Workflow.objects.create(environment=tenant.environment, key="w", name="W", category=category)
    workflow_preference_set(workflow=workflow, default_channels={"email": True})
    preferences_update(
        subscriber=subscriber, channels={"email": False}, categories={"news": {"email": True}}, unsubscribed=True
    )

    def reason() -> str:
        return resolve_preferences(
            environment=tenant.environment,
            subscriber_ids=[subscriber.pk],
            category=category,
            channels=["email"],
            workflow_defaults=workflow_channel_defaults(environment=tenant.environment, workflow=workflow),
        )[subscriber.pk]["email"].reason

    assert reason() == "unsubscribed"
    preferences_update(subscriber=subscriber, unsubscribed=False)
    assert reason() == "subscriber_channel"
    Preference.objects.filter(subscriber=subscriber, category__isnull=True).delete()
    assert reason() == "subscriber_category"
    Preference.objects.filter(subscriber=subscriber).delete()
    assert reason() == "workflow_default"
    workflow_preference_set(workflow=workflow, default_channels={})
    assert reason() == "category_default"
    category.critical = True
    category.save()
    assert reason() == "critical"


def test_category_frequencies_one_query(tenant: Any, django_assert_num_queries: Any) -> None:
    from apps.preferences.selectors import category_frequencies
    from apps.preferences.services import preferences_update

    category = CategoryFactory(environment=tenant.environment, key="comments")
    other = CategoryFactory(environment=tenant.environment, key="billing")
    subscribers = SubscriberFactory.create_batch(30, environment=tenant.environment)
    for subscriber in subscribers[:10]:
        preferences_update(subscriber=subscriber, frequencies={"comments": "daily", "billing": "weekly"})
    preferences_update(subscriber=subscribers[10], frequencies={"comments": "weekly"})
    with django_assert_num_queries(1):
        result = category_frequencies(
            environment=tenant.environment, subscriber_ids=[s.pk for s in subscribers], category=category
        )
    assert sum(v == "daily" for v in result.values()) == 10
    assert result[subscribers[10].pk] == "weekly"
    assert sum(v == "instant" for v in result.values()) == 19
    assert category_frequencies(environment=tenant.environment, subscriber_ids=[subscribers[0].pk], category=other) == {
        subscribers[0].pk: "weekly"
    }
    with django_assert_num_queries(0):
        assert category_frequencies(
            environment=tenant.environment, subscriber_ids=[subscribers[0].pk], category=None
        ) == {subscribers[0].pk: "instant"}


def test_frequency_schedule(tenant: Any) -> None:
    from apps.core.schedule import parse_schedule
    from apps.preferences.selectors import frequency_schedule

    category = CategoryFactory(environment=tenant.environment, digest_schedule="weekdays 18:30")
    assert frequency_schedule("instant", category) is None
    assert frequency_schedule("daily", category) == "daily 18:30"
    assert frequency_schedule("weekly", category) == "weekly monday 18:30"
    assert frequency_schedule("daily", None) == "daily 09:00"
    assert frequency_schedule("weekly", None) == "weekly monday 09:00"
    for spec in ("daily 18:30", "weekly monday 09:00"):
        parse_schedule(spec)  # the engine's grammar accepts them
    category.digest_schedule = "nonsense"
    assert frequency_schedule("daily", category) == "daily 09:00"
