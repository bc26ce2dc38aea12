from __future__ import annotations

from typing import Any

import pytest

from apps.subscribers.api import SubscriberInputSerializer
from apps.subscribers.models import Subscriber, Topic, TopicSubscription
from tests.assertions import assert_error
from tests.factories import SubscriberFactory, TopicFactory, TopicSubscriptionFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/subscribers"


# --- subscribers ---------------------------------------------------------------------------


def test_put_creates_then_updates_only_given_fields(api: Any, tenant: Any) -> None:
    response = api.put(
        f"{URL}/ada@example.com",
        {"email": "ada@example.com", "first_name": "Ada", "locale": "en_GB", "timezone": "Europe/London"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["subscriber_id"] == "ada@example.com"
    assert body["locale"] == "en-GB"  # normalised
    assert body["timezone"] == "Europe/London"

    response = api.put(f"{URL}/ada@example.com", {"last_name": "Lovelace", "data": {"plan": "pro"}}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert (body["first_name"], body["last_name"], body["email"]) == ("Ada", "Lovelace", "ada@example.com")
    assert body["data"] == {"plan": "pro"}
    assert Subscriber.objects.filter(environment=tenant.environment).count() == 1


@pytest.mark.parametrize("subscriber_id", ["user:42", "a.b@c.example", "tenant:1:user.9", "ÄÖÜ-ß"])
def test_ids_with_punctuation_round_trip(api: Any, subscriber_id: str) -> None:
    assert api.put(f"{URL}/{subscriber_id}", {}, format="json").status_code == 201
    response = api.get(f"{URL}/{subscriber_id}")
    assert response.status_code == 200
    assert response.json()["subscriber_id"] == subscriber_id


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"locale": "english please"}, "locale"),
        ({"locale": "e"}, "locale"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"avatar": "javascript:alert(1)"}, "avatar"),
        ({"phone": "call me"}, "phone"),
        ({"data": ["not", "an", "object"]}, "data"),
        ({"first_name": "x" * 201}, "first_name"),
        ({"nickname": "Ada"}, "nickname"),
        ({"subscriber_id": "someone-else"}, "subscriber_id"),
    ],
)
def test_put_validation_errors_use_the_envelope(api: Any, body: dict[str, Any], field: str) -> None:
    error = assert_error(api.put(f"{URL}/u1", body, format="json"), 400, "validation_error")
    assert field in error["details"]
    assert not Subscriber.objects.exists()


def test_put_rejects_non_object_and_bad_json(api: Any) -> None:
    assert_error(api.put(f"{URL}/u1", [1, 2], format="json"), 400, "validation_error")
    assert_error(api.put(f"{URL}/u1", "{nope", content_type="application/json"), 400, "malformed_json")


def test_put_accepts_fields_returned_by_get(api: Any) -> None:
    api.put(f"{URL}/u1", {"email": "a@example.com"}, format="json")
    body = api.get(f"{URL}/u1").json()
    body["first_name"] = "Round"
    response = api.put(f"{URL}/u1", body, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["first_name"] == "Round"


def test_null_clears_a_field(api: Any) -> None:
    api.put(f"{URL}/u1", {"email": "a@example.com", "data": {"a": 1}}, format="json")
    body = api.put(f"{URL}/u1", {"email": None, "data": None}, format="json").json()
    assert body["email"] == ""
    assert body["data"] == {}


def test_get_and_delete(api: Any, tenant: Any) -> None:
    SubscriberFactory(environment=tenant.environment, subscriber_id="u1", email="u1@example.com")
    assert api.get(f"{URL}/u1").json()["email"] == "u1@example.com"
    assert api.delete(f"{URL}/u1").status_code == 204
    error = assert_error(api.get(f"{URL}/u1"), 404, "not_found")
    assert "u1" in error["message"]
    assert_error(api.delete(f"{URL}/u1"), 404, "not_found")


def test_requires_a_secret_key(anon_api: Any) -> None:
    assert_error(anon_api.get(URL), 401, "not_authenticated")
    assert_error(anon_api.put(f"{URL}/u1", {}, format="json"), 401, "not_authenticated")


def test_list_is_cursor_paginated_and_filters_by_email(api: Any, tenant: Any, other_tenant: Any) -> None:
    for i in range(5):
        SubscriberFactory(environment=tenant.environment, subscriber_id=f"u{i}")
    SubscriberFactory(environment=tenant.environment, subscriber_id="ada", email="Ada@Example.com")
    SubscriberFactory(environment=other_tenant.environment, subscriber_id="theirs", email="ada@example.com")

    first = api.get(URL, {"limit": 4}).json()
    assert set(first) == {"data", "next", "previous", "next_cursor"}
    assert [s["subscriber_id"] for s in first["data"]] == ["ada", "u4", "u3", "u2"]
    second = api.get(URL, {"limit": 4, "cursor": first["next_cursor"]}).json()
    assert [s["subscriber_id"] for s in second["data"]] == ["u1", "u0"]
    assert second["next_cursor"] is None

    filtered = api.get(URL, {"email": "ada@example.com"}).json()["data"]
    assert [s["subscriber_id"] for s in filtered] == ["ada"]


def test_list_query_count_does_not_grow(api: Any, tenant: Any, django_assert_num_queries: Any) -> None:
    SubscriberFactory.create_batch(3, environment=tenant.environment)
    with django_assert_num_queries(2):  # API key + page
        assert len(api.get(URL).json()["data"]) == 3
    SubscriberFactory.create_batch(40, environment=tenant.environment)
    with django_assert_num_queries(2):
        assert len(api.get(URL).json()["data"]) == 43


# --- bulk ----------------------------------------------------------------------------------


def test_bulk_upsert(api: Any, tenant: Any) -> None:
    SubscriberFactory(environment=tenant.environment, subscriber_id="old", email="old@example.com")
    response = api.post(
        f"{URL}/bulk",
        {
            "subscribers": [
                {"subscriber_id": "old", "first_name": "Renamed"},
                {"subscriber_id": "new", "email": "new@example.com", "locale": "fr"},
            ]
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    data = response.json()["data"]
    assert [s["subscriber_id"] for s in data] == ["old", "new"]
    assert data[0]["email"] == "old@example.com"
    assert data[0]["first_name"] == "Renamed"
    assert data[1]["locale"] == "fr"


def test_bulk_accepts_1000_and_refuses_1001(api: Any, tenant: Any) -> None:
    items = [{"subscriber_id": f"user-{i}"} for i in range(1001)]
    error = assert_error(api.post(f"{URL}/bulk", {"subscribers": items}, format="json"), 400, "validation_error")
    assert "1000" in str(error["details"]["subscribers"])
    assert not Subscriber.objects.exists()

    response = api.post(f"{URL}/bulk", {"subscribers": items[:1000]}, format="json")
    assert response.status_code == 200
    assert Subscriber.objects.filter(environment=tenant.environment).count() == 1000


def test_bulk_reports_invalid_items_by_index_and_writes_nothing(api: Any) -> None:
    items = [
        {"subscriber_id": "ok", "email": "ok@example.com"},
        {"subscriber_id": "bad", "email": "nope"},
        {"subscriber_id": "fine"},
        {"email": "missing-id@example.com"},
        {"subscriber_id": "has space"},
    ]
    error = assert_error(api.post(f"{URL}/bulk", {"subscribers": items}, format="json"), 400, "validation_error")
    by_index = error["details"]["subscribers"]
    assert set(by_index) == {"1", "3", "4"}
    assert "email" in by_index["1"]
    assert "subscriber_id" in by_index["3"]
    assert "subscriber_id" in by_index["4"]
    assert not Subscriber.objects.exists()


@pytest.mark.parametrize("body", [{}, {"subscribers": []}, {"subscribers": "u1"}])
def test_bulk_rejects_missing_or_empty(api: Any, body: dict[str, Any]) -> None:
    assert_error(api.post(f"{URL}/bulk", body, format="json"), 400, "validation_error")


def test_input_serializer_is_reusable_for_inline_subscribers() -> None:
    serializer = SubscriberInputSerializer(data={"subscriber_id": "u2", "email": "a@example.com"})
    assert serializer.is_valid(), serializer.errors
    assert serializer.validated_data == {"subscriber_id": "u2", "email": "a@example.com"}
    assert not SubscriberInputSerializer(data={"email": "a@example.com"}).is_valid()


# --- isolation -----------------------------------------------------------------------------


def test_other_environment_cannot_see_or_change_a_subscriber(tenant: Any, other_tenant: Any) -> None:
    mine = SubscriberFactory(environment=tenant.environment, subscriber_id="u1", email="mine@example.com")
    theirs = other_tenant.client

    assert_error(theirs.get(f"{URL}/u1"), 404, "not_found")
    assert_error(theirs.delete(f"{URL}/u1"), 404, "not_found")
    assert theirs.get(URL).json()["data"] == []
    # Their PUT creates their own u1; ours is untouched.
    assert theirs.put(f"{URL}/u1", {"email": "theirs@example.com"}, format="json").status_code == 201
    theirs.post(f"{URL}/bulk", {"subscribers": [{"subscriber_id": "u1", "first_name": "X"}]}, format="json")
    mine.refresh_from_db()
    assert (mine.email, mine.first_name) == ("mine@example.com", "Ada")
    assert Subscriber.objects.filter(subscriber_id="u1").count() == 2


# --- topics --------------------------------------------------------------------------------


def test_topic_crud(api: Any, tenant: Any) -> None:
    response = api.put("/api/v1/topics/post:42", {"name": "Post 42"}, format="json")
    assert response.status_code == 201
    assert response.json()["key"] == "post:42"
    response = api.put("/api/v1/topics/post:42", {"name": "Renamed"}, format="json")
    assert response.status_code == 200
    assert api.get("/api/v1/topics/post:42").json()["name"] == "Renamed"
    assert [t["key"] for t in api.get("/api/v1/topics").json()["data"]] == ["post:42"]
    assert api.delete("/api/v1/topics/post:42").status_code == 204
    assert_error(api.get("/api/v1/topics/post:42"), 404, "not_found")


def test_topic_put_validation(api: Any) -> None:
    assert_error(api.put("/api/v1/topics/bad key", {}, format="json"), 400, "validation_error")
    assert_error(api.put("/api/v1/topics/ok", {"name": "x" * 201}, format="json"), 400, "validation_error")


def test_topic_list_query_count(api: Any, tenant: Any, django_assert_num_queries: Any) -> None:
    TopicFactory.create_batch(30, environment=tenant.environment)
    with django_assert_num_queries(2):
        assert len(api.get("/api/v1/topics").json()["data"]) == 30


def test_topic_subscribers_add_is_idempotent(api: Any, tenant: Any) -> None:
    TopicFactory(environment=tenant.environment, key="t")
    SubscriberFactory(environment=tenant.environment, subscriber_id="known")
    url = "/api/v1/topics/t/subscribers"
    response = api.post(url, {"subscribers": ["known", "new@example.com"]}, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {"topic": "t", "added": ["known", "new@example.com"], "already_subscribed": []}
    response = api.post(url, {"subscribers": ["new@example.com", "third", "third"]}, format="json")
    assert response.json() == {"topic": "t", "added": ["third"], "already_subscribed": ["new@example.com"]}
    assert TopicSubscription.objects.filter(topic__key="t").count() == 3
    assert Subscriber.objects.filter(environment=tenant.environment).count() == 3


def test_topic_subscribers_validation(api: Any, tenant: Any) -> None:
    TopicFactory(environment=tenant.environment, key="t")
    url = "/api/v1/topics/t/subscribers"
    response = api.post(url, {"subscribers": ["ok", "has space", ""]}, format="json")
    error = assert_error(response, 400, "validation_error")
    assert set(error["details"]["subscribers"]) == {"1", "2"}
    ids = [f"u{i}" for i in range(1001)]
    assert_error(api.post(url, {"subscribers": ids}, format="json"), 400, "validation_error")
    assert_error(api.post(url, {"subscribers": []}, format="json"), 400, "validation_error")
    missing = api.post("/api/v1/topics/missing/subscribers", {"subscribers": ["a"]}, format="json")
    assert_error(missing, 404, "not_found")
    assert not Subscriber.objects.exists()


def test_topic_subscribers_remove(api: Any, tenant: Any) -> None:
    TopicFactory(environment=tenant.environment, key="t")
    api.post("/api/v1/topics/t/subscribers", {"subscribers": ["a", "b", "c"]}, format="json")
    response = api.post("/api/v1/topics/t/subscribers/remove", {"subscribers": ["a", "c", "zzz"]}, format="json")
    assert response.status_code == 200
    assert response.json() == {"topic": "t", "removed": 2}
    members = api.get("/api/v1/topics/t/subscribers").json()["data"]
    assert [m["subscriber_id"] for m in members] == ["b"]


def test_topic_subscribers_are_cursor_paged_in_subscriber_order(
    api: Any, tenant: Any, django_assert_num_queries: Any
) -> None:
    topic = TopicFactory(environment=tenant.environment, key="t")
    members = [TopicSubscriptionFactory(topic=topic).subscriber for _ in range(7)]
    TopicSubscriptionFactory(topic=TopicFactory(environment=tenant.environment))  # another topic's member
    expected = [s.subscriber_id for s in sorted(members, key=lambda s: s.pk)]

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        with django_assert_num_queries(3):  # API key, topic, page
            page = api.get("/api/v1/topics/t/subscribers", params).json()
        seen += [s["subscriber_id"] for s in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == expected


def test_other_environment_cannot_touch_a_topic(api: Any, tenant: Any, other_tenant: Any) -> None:
    topic = TopicFactory(environment=tenant.environment, key="t", name="Mine")
    TopicSubscriptionFactory(topic=topic, subscriber__subscriber_id="member")
    theirs = other_tenant.client

    assert_error(theirs.get("/api/v1/topics/t"), 404, "not_found")
    assert_error(theirs.delete("/api/v1/topics/t"), 404, "not_found")
    assert_error(theirs.get("/api/v1/topics/t/subscribers"), 404, "not_found")
    assert_error(theirs.post("/api/v1/topics/t/subscribers", {"subscribers": ["x"]}, format="json"), 404, "not_found")
    assert_error(
        theirs.post("/api/v1/topics/t/subscribers/remove", {"subscribers": ["member"]}, format="json"),
        404,
        "not_found",
    )
    assert theirs.get("/api/v1/topics").json()["data"] == []
    # Their PUT makes their own topic "t".
    assert theirs.put("/api/v1/topics/t", {"name": "Theirs"}, format="json").status_code == 201
    topic.refresh_from_db()
    assert topic.name == "Mine"
    assert Topic.objects.filter(key="t").count() == 2
    assert [m["subscriber_id"] for m in api.get("/api/v1/topics/t/subscribers").json()["data"]] == ["member"]
    assert not Subscriber.objects.filter(environment=other_tenant.environment, subscriber_id="x").exists()


@pytest.mark.parametrize("subscriber_id", ["x" * 201, "has space"])
def test_put_refuses_bad_ids_in_the_path(api: Any, subscriber_id: str) -> None:
    error = assert_error(api.put(f"{URL}/{subscriber_id}", {}, format="json"), 400, "validation_error")
    assert "subscriber_id" in error["details"]
