from __future__ import annotations

from typing import Any

import pytest

from apps.core.errors import ApiError, NotFound
from apps.subscribers import selectors, services
from apps.subscribers.models import Subscriber, TopicSubscription
from tests.factories import SubscriberFactory, TopicFactory, TopicSubscriptionFactory

pytestmark = pytest.mark.django_db


def test_upsert_creates_then_changes_only_given_fields(tenant: Any) -> None:
    env = tenant.environment
    subscriber, created = services.subscriber_upsert(
        environment=env, subscriber_id="u1", email="a@example.com", first_name="Ada", data={"plan": "pro"}
    )
    assert created is True
    assert (subscriber.email, subscriber.first_name, subscriber.data) == ("a@example.com", "Ada", {"plan": "pro"})

    subscriber, created = services.subscriber_upsert(environment=env, subscriber_id="u1", data={"seats": 3})
    assert created is False
    subscriber.refresh_from_db()
    assert subscriber.email == "a@example.com"
    assert subscriber.first_name == "Ada"
    assert subscriber.data == {"seats": 3}  # replaced, not merged
    assert Subscriber.objects.filter(environment=env, subscriber_id="u1").count() == 1


def test_upsert_none_clears_and_noop_writes_nothing(tenant: Any, django_assert_num_queries: Any) -> None:
    env = tenant.environment
    services.subscriber_upsert(environment=env, subscriber_id="u1", email="a@example.com", data={"x": 1})
    subscriber, _ = services.subscriber_upsert(environment=env, subscriber_id="u1", email=None, data=None)
    subscriber.refresh_from_db()
    assert subscriber.email == ""
    assert subscriber.data == {}
    with django_assert_num_queries(1):  # the read only: nothing changed, nothing written
        services.subscriber_upsert(environment=env, subscriber_id="u1", email="")


def test_upsert_rejects_unknown_fields(tenant: Any) -> None:
    with pytest.raises(ApiError) as info:
        services.subscriber_upsert(environment=tenant.environment, subscriber_id="u1", nickname="x")
    assert info.value.error_code == "validation_error"
    assert not Subscriber.objects.exists()


def test_bulk_upsert_writes_only_fields_present_per_item(tenant: Any, django_assert_num_queries: Any) -> None:
    env = tenant.environment
    SubscriberFactory(environment=env, subscriber_id="old", email="old@example.com", first_name="Old")
    items = [
        {"subscriber_id": "old", "first_name": "Renamed"},
        {"subscriber_id": "new1", "email": "n1@example.com"},
        {"subscriber_id": "new2", "email": "n2@example.com"},
        {"subscriber_id": "bare"},
    ]
    # savepoint + 3 INSERT … ON CONFLICT (one per field set) + 1 SELECT + release
    with django_assert_num_queries(6):
        result = services.subscriber_bulk_upsert(environment=env, items=items)
    assert [s.subscriber_id for s in result] == ["old", "new1", "new2", "bare"]
    old = Subscriber.objects.get(environment=env, subscriber_id="old")
    assert old.first_name == "Renamed"
    assert old.email == "old@example.com"  # not in the item: untouched
    assert Subscriber.objects.get(environment=env, subscriber_id="new2").email == "n2@example.com"
    assert all(s.pk for s in result)


def test_bulk_upsert_merges_duplicates_last_wins(tenant: Any) -> None:
    env = tenant.environment
    result = services.subscriber_bulk_upsert(
        environment=env,
        items=[
            {"subscriber_id": "u1", "email": "first@example.com", "first_name": "A"},
            {"subscriber_id": "u1", "email": "last@example.com"},
        ],
    )
    assert len(result) == 1
    assert (result[0].email, result[0].first_name) == ("last@example.com", "A")


def test_bulk_upsert_stays_in_its_environment(tenant: Any, other_tenant: Any) -> None:
    theirs = SubscriberFactory(environment=other_tenant.environment, subscriber_id="u1", email="theirs@example.com")
    services.subscriber_bulk_upsert(
        environment=tenant.environment, items=[{"subscriber_id": "u1", "email": "mine@example.com"}]
    )
    theirs.refresh_from_db()
    assert theirs.email == "theirs@example.com"
    assert Subscriber.objects.get(environment=tenant.environment, subscriber_id="u1").email == "mine@example.com"


def test_subscribers_ensure_creates_missing_only(tenant: Any, django_assert_num_queries: Any) -> None:
    env = tenant.environment
    SubscriberFactory(environment=env, subscriber_id="u1", email="keep@example.com")
    services.subscribers_ensure(environment=env, subscriber_ids=["u1", "u2", "u2", "u3"])
    assert set(Subscriber.objects.filter(environment=env).values_list("subscriber_id", flat=True)) == {"u1", "u2", "u3"}
    assert Subscriber.objects.get(environment=env, subscriber_id="u1").email == "keep@example.com"
    with django_assert_num_queries(1):  # all exist: one SELECT, no write
        services.subscribers_ensure(environment=env, subscriber_ids=["u1", "u2", "u3"])


def test_topic_subscribers_add_is_idempotent_and_creates_subscribers(tenant: Any, other_tenant: Any) -> None:
    env = tenant.environment
    topic, created = services.topic_upsert(environment=env, key="post-42", name="Post 42")
    assert created
    SubscriberFactory(environment=other_tenant.environment, subscriber_id="u1")
    assert services.topic_subscribers_add(topic=topic, subscriber_ids=["u1", "u2"]) == ["u1", "u2"]
    assert services.topic_subscribers_add(topic=topic, subscriber_ids=["u2", "u3", "u3"]) == ["u3"]
    members = TopicSubscription.objects.filter(topic=topic).select_related("subscriber")
    assert sorted(m.subscriber.subscriber_id for m in members) == ["u1", "u2", "u3"]
    assert all(m.subscriber.environment_id == env.pk for m in members)


def test_topic_subscribers_add_query_count_is_constant(tenant: Any, django_assert_num_queries: Any) -> None:
    topic = TopicFactory(environment=tenant.environment)
    # 80 ids: SQLite batches bulk INSERTs of subscribers by ~90 rows (999 parameters / 11 columns).
    ids = [f"user-{i}" for i in range(80)]
    # savepoint, existing SELECT, INSERT subscribers, pk SELECT, memberships SELECT, INSERT memberships, release
    with django_assert_num_queries(7):
        services.topic_subscribers_add(topic=topic, subscriber_ids=ids)
    assert TopicSubscription.objects.filter(topic=topic).count() == 80
    # Again with members already in: nothing is written.
    with django_assert_num_queries(5):
        assert services.topic_subscribers_add(topic=topic, subscriber_ids=ids) == []


def test_topic_subscribers_remove(tenant: Any) -> None:
    topic = TopicFactory(environment=tenant.environment)
    services.topic_subscribers_add(topic=topic, subscriber_ids=["u1", "u2", "u3"])
    assert services.topic_subscribers_remove(topic=topic, subscriber_ids=["u1", "u3", "nobody"]) == 2
    assert list(TopicSubscription.objects.filter(topic=topic).values_list("subscriber__subscriber_id", flat=True)) == [
        "u2"
    ]
    assert Subscriber.objects.filter(subscriber_id="u1").exists()  # membership gone, subscriber stays


def test_topic_upsert_renames_only_when_name_given(tenant: Any) -> None:
    topic, _ = services.topic_upsert(environment=tenant.environment, key="k", name="First")
    topic, created = services.topic_upsert(environment=tenant.environment, key="k")
    assert not created and topic.name == "First"
    topic, _ = services.topic_upsert(environment=tenant.environment, key="k", name="Second")
    topic.refresh_from_db()
    assert topic.name == "Second"


def test_topic_subscriber_ids_page_walks_keyset(tenant: Any, django_assert_num_queries: Any) -> None:
    topic = TopicFactory(environment=tenant.environment)
    other_topic = TopicFactory(environment=tenant.environment)
    members = [TopicSubscriptionFactory(topic=topic).subscriber_id for _ in range(25)]
    TopicSubscriptionFactory.create_batch(5, topic=other_topic)

    pages: list[list[int]] = []
    after = 0
    while True:
        with django_assert_num_queries(1):
            page = selectors.topic_subscriber_ids_page(topic=topic, after_pk=after, limit=10)
        if not page:
            break
        pages.append(page)
        after = page[-1]
    assert [len(p) for p in pages] == [10, 10, 5]
    flat = [pk for p in pages for pk in p]
    assert flat == sorted(members)
    assert len(set(flat)) == 25


def test_selectors_raise_not_found_with_clear_message(tenant: Any, other_tenant: Any) -> None:
    SubscriberFactory(environment=other_tenant.environment, subscriber_id="theirs")
    with pytest.raises(NotFound) as info:
        selectors.subscriber_get(environment=tenant.environment, subscriber_id="theirs")
    assert "theirs" in str(info.value.detail)
    TopicFactory(environment=other_tenant.environment, key="t")
    with pytest.raises(NotFound):
        selectors.topic_get(environment=tenant.environment, key="t")


def test_ids_too_long_for_the_column_are_refused_not_crashed(tenant: Any) -> None:
    with pytest.raises(ApiError) as info:
        services.subscribers_ensure(environment=tenant.environment, subscriber_ids=["ok", "x" * 201])
    assert info.value.error_code == "validation_error"
    with pytest.raises(ApiError):
        services.subscriber_bulk_upsert(environment=tenant.environment, items=[{"subscriber_id": "x" * 201}])
    assert not Subscriber.objects.exists()
